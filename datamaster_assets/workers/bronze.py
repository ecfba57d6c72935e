"""The bronze worker: one ledger item (a raw file) -> one bronze Parquet file + rejects.

Called in-process by the Dagster bronze asset, by the Lambda handler, or by the container CLI;
no Dagster import here. A bad file never raises past this function: the outcome is written to the
ledger (quarantined at once for bad input, retried for anything else) and returned, so the other
files of a batch still go through.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from datamaster_assets.contracts import get_contract
from datamaster_assets.ingest.convert import BronzeOutcome, convert_to_bronze
from datamaster_assets.ingest.errors import BadInputError
from datamaster_assets.ingest.keys import bronze_key_for, rejects_key_for
from datamaster_assets.lake.factory import Lake
from datamaster_assets.lake.landing import landed_at_of, unchanged_since_registration
from datamaster_assets.lake.ledger import Layer, LeaseLost, LedgerItem, Registration, Status
from datamaster_assets.lake.scratch import scratch_dir

log = logging.getLogger(__name__)
_clock = time.monotonic  # lease-renewal clock (a seam for tests)
SCRATCH_PREFIX = "datamaster-bronze-"


class RawObjectReplaced(RuntimeError):
    """The raw file was replaced during its conversion (retried: what was read is not known)."""


@dataclass
class BronzeItemResult:
    control_id: str
    table: str | None
    status: str  # success | error | quarantined | skipped
    records_read: int = 0
    accepted: int = 0
    rejected: int = 0
    control_records: int = 0
    output_key: str | None = None
    rejects_key: str | None = None
    silver_control_id: str | None = None
    duration_ms: int = 0
    error_message: str | None = None
    notes: list[str] = field(default_factory=list)
    # Plain values for a Dagster MaterializeResult (the defs layer wraps them).
    metadata: dict[str, Any] = field(default_factory=dict)


def _result_metadata(result: BronzeItemResult, outcome: BronzeOutcome | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "control_id": result.control_id,
        "status": result.status,
        "dagster/row_count": result.accepted,
        "records_read": result.records_read,
        "rejected": result.rejected,
        "control_records": result.control_records,
        "reject_rate": round(result.rejected / result.records_read, 6) if result.records_read else 0.0,
        "duration_ms": result.duration_ms,
    }
    if result.output_key:
        meta["output_key"] = result.output_key
    if result.rejects_key:
        meta["rejects_key"] = result.rejects_key
    if outcome is not None:
        meta["parquet_bytes"] = outcome.parquet_bytes
        meta["slow_batches"] = outcome.slow_batches
    if result.notes:
        meta["notes"] = "\n".join(result.notes)
    if result.error_message:
        meta["error"] = result.error_message
    return meta


def _lease_renewer(lake: Lake, item: LedgerItem, owner: str):
    """Renew the lease once a third of it has passed, so a long file keeps its claim;
    raises LeaseLost (aborting the conversion) if another worker took the item meanwhile."""
    every = lake.settings.lease_seconds / 3
    last = _clock()

    def renew(_records: int) -> None:
        nonlocal last
        if _clock() - last >= every:
            lake.ledger.renew(item.control_id, owner, lake.settings.lease_seconds)
            last = _clock()

    return renew


def _convert_item(
    lake: Lake, item: LedgerItem, owner: str, workdir: Path, now: datetime
) -> tuple[BronzeOutcome, str, str | None, str]:
    """Convert and publish; (outcome, bronze key, rejects key or None, silver control id)."""
    try:
        contract = get_contract(item.table_name)
    except KeyError as exc:
        raise BadInputError(item.object_key, f"unknown table {item.table_name!r}") from exc
    bronze_key = bronze_key_for(item.table_name, item.object_key, item.created_at, item.checksum)
    rejects_key = rejects_key_for(item.table_name, item.object_key, item.created_at, item.checksum)
    parquet_out = workdir / "bronze.parquet"
    rejects_out = workdir / "rejects.jsonl.gz"
    options = dict(
        contract=contract,
        file_format=item.file_format,
        source_key=item.object_key,
        control_id=item.control_id,
        ingested_at=now,
        batch_change_ts=landed_at_of(item.object_key, item.created_at),
        pii_key=lake.settings.pii_key,
        parquet_out=parquet_out,
        rejects_out=rejects_out,
        batch_rows=lake.settings.bronze_batch_rows,
        on_batch=_lease_renewer(lake, item, owner),
    )
    local = lake.raw.local_path(item.object_key)
    if local is not None:
        if not local.is_file():
            raise FileNotFoundError(f"{item.object_key}: raw object not found")
        before = local.stat()
        modified = datetime.fromtimestamp(before.st_mtime, timezone.utc)
        with ThreadPoolExecutor(max_workers=1) as pool:  # hashing releases the GIL: it overlaps the conversion
            hashing = (None if unchanged_since_registration(item, before.st_size, modified)
                       else pool.submit(lake.raw.sha256, item.object_key))
            outcome = convert_to_bronze(local, **options)
            current = item.checksum if hashing is None else hashing.result()
        after = local.stat()
        if (after.st_ino, after.st_size, after.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns):
            raise RawObjectReplaced(f"{item.object_key}: replaced while it was being converted; converting it again")
    else:
        with lake.raw.open_read(item.object_key) as stream:
            outcome = convert_to_bronze(stream, **options)
        head = lake.raw.head(item.object_key)
        current = head.etag if head is not None else "(deleted)"
    if current != item.checksum:
        # the key was overwritten after registration: the new content is a ledger item of its own
        raise BadInputError(item.object_key, f"content changed after it was registered (registered checksum "
                                             f"{item.checksum[:16]}, now {current[:16]}); the new content is "
                                             "a ledger item of its own, the content registered here is gone")
    info = lake.store.put_file(bronze_key, parquet_out)
    published_rejects = None
    if outcome.rejects_written:
        lake.store.put_file(rejects_key, rejects_out)
        published_rejects = rejects_key
    silver, _ = lake.ledger.register(
        Registration(
            layer=Layer.SILVER.value,
            table_name=item.table_name,
            object_key=bronze_key,
            checksum=item.checksum,  # the raw content's checksum: a re-run maps to the same silver item
            file_format="parquet",
            file_size=info.size,
            record_count=outcome.accepted,
        )
    )
    return outcome, bronze_key, published_rejects, silver.control_id


def process_bronze_item(lake: Lake, control_id: str, *, owner: str, now: datetime | None = None) -> BronzeItemResult:
    """Claim, convert, publish and record one bronze ledger item. Never raises for a bad file."""
    started = time.perf_counter()
    fixed_clock = now
    now = now or datetime.now(timezone.utc)
    item = lake.ledger.claim(control_id, owner, lake.settings.lease_seconds, now=now)
    if item is None:
        current = lake.ledger.get(control_id)
        result = BronzeItemResult(
            control_id, current.table_name if current else None, "skipped",
            error_message="not claimable (held by another worker, finished, or unknown)",
        )
        result.metadata = _result_metadata(result, None)
        return result

    result = BronzeItemResult(control_id, item.table_name, Status.RUNNING.value)
    outcome: BronzeOutcome | None = None
    try:
        with scratch_dir(SCRATCH_PREFIX) as tmp:
            outcome, bronze_key, rejects_key, silver_id = _convert_item(lake, item, owner, tmp, now)
        result.duration_ms = int((time.perf_counter() - started) * 1000)
        result.records_read = outcome.records_read
        result.accepted = outcome.accepted
        result.rejected = outcome.rejected
        result.control_records = outcome.control_records
        result.output_key = bronze_key
        result.rejects_key = rejects_key
        result.silver_control_id = silver_id
        result.notes = list(outcome.notes)
        lake.ledger.complete(
            control_id,
            owner,
            record_count=outcome.records_read,
            rejected_count=outcome.rejected,
            output_key=bronze_key,
            duration_ms=result.duration_ms,
            stats={
                "accepted": outcome.accepted,
                "control_records": outcome.control_records,
                "notes": outcome.notes,
                "rejects_key": rejects_key,
                "parquet_bytes": outcome.parquet_bytes,
                "slow_batches": outcome.slow_batches,
                "silver_control_id": silver_id,
            },
            now=fixed_clock or datetime.now(timezone.utc),
        )
        result.status = Status.SUCCESS.value
    except LeaseLost as exc:
        result.status = "skipped"
        result.error_message = f"lease lost before completion: {exc}"
    except Exception as exc:  # noqa: BLE001 - every failure is recorded in the ledger, never raised
        permanent = isinstance(exc, BadInputError)
        message = str(exc) if permanent else f"{item.object_key}: {type(exc).__name__}: {exc}"
        log.warning("bronze item %s failed (%s): %s", control_id, "bad input" if permanent else "retryable", message)
        result.error_message = message
        result.duration_ms = int((time.perf_counter() - started) * 1000)
        try:
            failed = lake.ledger.fail(
                control_id, owner, message, permanent=permanent, now=fixed_clock or datetime.now(timezone.utc)
            )
            result.status = failed.status.value if isinstance(failed.status, Status) else str(failed.status)
        except LeaseLost as lost:
            result.status = "skipped"
            result.error_message = f"{message} (and the lease was lost: {lost})"
    result.metadata = _result_metadata(result, outcome)
    return result
