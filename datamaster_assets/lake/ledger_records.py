"""Pieces both ledger backends share: timestamp encoding, validation, stats history, row decoding.

Timestamps are stored as fixed-width UTC ISO-8601 text (``2024-05-01T06:00:00.000000Z``), so a
plain string comparison orders them correctly: SQLite ``WHERE lease_expires_at <= ?`` and a
DynamoDB ``ConditionExpression`` / GSI sort key both rely on that, and the values stay readable
in the sqlite3 CLI and the DynamoDB console.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from datamaster_assets.lake.ledger import COMPUTE_TARGETS, Layer, LedgerItem, Registration, Status

_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
LAYERS = tuple(layer.value for layer in Layer)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def resolve_now(now: datetime | None) -> datetime:
    """The caller's ``now`` (tests inject one) or the wall clock; naive datetimes are refused
    because guessing their zone would silently shift every lease."""
    if now is None:
        return utc_now()
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware (got naive {now.isoformat()})")
    return now.astimezone(timezone.utc)


def encode_ts(value: datetime) -> str:
    return resolve_now(value).strftime(_TS_FORMAT)


def decode_ts(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.strptime(value, _TS_FORMAT).replace(tzinfo=timezone.utc)


def lease_until(now: datetime, lease_seconds: int) -> datetime:
    if lease_seconds <= 0:
        raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")
    return now + timedelta(seconds=lease_seconds)


def validate_registration(reg: Registration) -> None:
    """Refuse a registration that would create an item no worker can route; names the field."""
    problems = []
    if reg.layer not in LAYERS:
        problems.append(f"layer={reg.layer!r} (expected one of {', '.join(LAYERS)})")
    if not reg.table_name:
        problems.append("table_name is empty")
    if not reg.object_key:
        problems.append("object_key is empty")
    if not reg.checksum:
        problems.append("checksum is empty")
    if reg.compute_target not in COMPUTE_TARGETS:
        problems.append(f"compute_target={reg.compute_target!r} (expected one of {', '.join(COMPUTE_TARGETS)})")
    if reg.file_size < 0:
        problems.append(f"file_size={reg.file_size} is negative")
    if reg.record_count is not None and reg.record_count < 0:
        problems.append(f"record_count={reg.record_count} is negative")
    if problems:
        raise ValueError(f"invalid ledger registration for {reg.object_key!r}: " + "; ".join(problems))


def validate_owner(owner: str) -> None:
    if not owner:
        raise ValueError("lease owner must be a non-empty string (e.g. the Dagster run id)")


REQUEUES = "requeues"


def with_last_error(stats: Mapping[str, Any], error_message: str | None) -> dict[str, Any]:
    """Stats with the error being cleared kept as history in ``stats['last_error']``."""
    merged = dict(stats)
    if error_message:
        merged["last_error"] = error_message
    return merged


def requeued_stats(stats: Mapping[str, Any], error_message: str | None) -> dict[str, Any]:
    """Stats of an item a person requeues: the cleared error kept, and ``requeues`` counted up so
    the item's next run has a run key of its own (``Batch.run_key``)."""
    merged = with_last_error(stats, error_message)
    merged[REQUEUES] = int(merged.get(REQUEUES, 0)) + 1
    return merged


def encode_stats(stats: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(stats), sort_keys=True, default=str)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ledger stats must be JSON-serialisable: {exc}") from exc


def decode_stats(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def item_from_record(record: Mapping[str, Any]) -> LedgerItem:
    """A LedgerItem from a stored record (SQLite row mapping or deserialised DynamoDB item)."""
    return LedgerItem(
        control_id=record["control_id"],
        layer=record["layer"],
        table_name=record["table_name"],
        object_key=record["object_key"],
        checksum=record["checksum"],
        file_format=record["file_format"],
        file_size=int(record["file_size"]),
        status=Status(record["status"]),
        attempt_count=int(record["attempt_count"]),
        compute_target=record["compute_target"],
        created_at=decode_ts(record["created_at"]),  # type: ignore[arg-type]
        record_count=_opt_int(record.get("record_count")),
        rejected_count=_opt_int(record.get("rejected_count")),
        lease_owner=record.get("lease_owner"),
        lease_expires_at=decode_ts(record.get("lease_expires_at")),
        started_at=decode_ts(record.get("started_at")),
        finished_at=decode_ts(record.get("finished_at")),
        duration_ms=_opt_int(record.get("duration_ms")),
        error_message=record.get("error_message"),
        output_key=record.get("output_key"),
        stats=decode_stats(record.get("stats")),
    )


def new_record(reg: Registration, created_at: datetime) -> dict[str, Any]:
    """The stored fields of a freshly registered (pending) item; None values are absent."""
    validate_registration(reg)
    record: dict[str, Any] = {
        "control_id": reg.control_id,
        "layer": reg.layer,
        "table_name": reg.table_name,
        "object_key": reg.object_key,
        "checksum": reg.checksum,
        "file_format": reg.file_format,
        "file_size": reg.file_size,
        "status": Status.PENDING.value,
        "attempt_count": 0,
        "compute_target": reg.compute_target,
        "created_at": encode_ts(created_at),
        "stats": encode_stats({}),
    }
    if reg.record_count is not None:
        record["record_count"] = reg.record_count
    return record


def is_claimable(item: LedgerItem, now: datetime, max_attempts: int) -> bool:
    """What ``claimable()`` lists. Error items and expired running items are listed whatever their
    attempts: the claim is what either reruns them or, attempts used up, quarantines them. (An error
    item can be past this process's ``max_attempts`` when the worker that failed it allowed more; left
    out, it would stay in ``error`` with nobody to retry or quarantine it.)"""
    if item.status in (Status.PENDING, Status.ERROR):
        return True
    if item.status is Status.RUNNING:
        return item.lease_expires_at is not None and item.lease_expires_at <= now
    return False


def sort_key(item: LedgerItem) -> tuple[datetime, str]:
    """Oldest first; control_id breaks ties so both backends return the same order."""
    return (item.created_at, item.control_id)


def lease_lost_message(control_id: str, owner: str, current: LedgerItem | None, now: datetime) -> str:
    if current is None:
        return f"ledger item {control_id} does not exist"
    if current.status is not Status.RUNNING:
        return f"ledger item {control_id} is {current.status.value}, not running (owner {owner!r})"
    if current.lease_owner != owner:
        return f"ledger item {control_id} is held by {current.lease_owner!r}, not {owner!r}"
    return (
        f"lease of {owner!r} on ledger item {control_id} expired at "
        f"{current.lease_expires_at.isoformat() if current.lease_expires_at else '?'} (now {now.isoformat()})"
    )


def expired_lease_message(item: LedgerItem, max_attempts: int) -> str:
    return (
        f"lease of {item.lease_owner!r} expired on attempt {item.attempt_count} of {max_attempts} "
        f"(worker lost); quarantined"
    )


def exhausted_error_message(item: LedgerItem, max_attempts: int) -> str:
    return (
        f"{item.error_message or 'failed'} (attempt {item.attempt_count} failed and this process allows "
        f"{max_attempts}, DATAMASTER_MAX_ATTEMPTS; quarantined)"
    )


def completed_stats(current: LedgerItem, new_stats: Mapping[str, Any] | None) -> dict[str, Any]:
    """Stats on success: earlier history (last_error) kept, the worker's counters on top."""
    merged = with_last_error(current.stats, current.error_message)
    merged.update(new_stats or {})
    return merged


def failed_status(current: LedgerItem, permanent: bool, max_attempts: int) -> Status:
    if permanent or current.attempt_count >= max_attempts:
        return Status.QUARANTINED
    return Status.ERROR
