"""The control ledger in a DynamoDB table (the aws environment), see docs/ledger.md.

Same semantics as ``SqliteLedger``. Every write is a single-item ``PutItem``/``UpdateItem`` with a
``ConditionExpression``; DynamoDB evaluates the condition and applies the write atomically, so a
``ConditionalCheckFailedException`` means "somebody else got there first" and becomes ``None``
(claim) or ``LeaseLost`` (renew/complete/fail). Where the new value depends on the current item
(stats history, quarantine vs error) the item is read first and the write is conditioned on the
attempt that was read, so a write never lands on a newer attempt.

Table layout: partition key ``control_id`` (S); GSI ``status-created_at-index`` on
(``status`` S, ``created_at`` S), projection ALL, used by ``claimable()``, ``items(status=...)``
and ``requeue()``. Create it with ``create_ledger_table`` (tests, demo bootstrap) or
``infra/`` CloudFormation.

The boto3 client honours ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_DYNAMODB`` by itself (boto3 >=
1.28), which is how the tests reach a moto server. Credentials come from the standard AWS chain.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import ClientError

from datamaster_assets.lake.ledger import LeaseLost, LedgerItem, Registration, Status
from datamaster_assets.lake.ledger_records import (
    completed_stats,
    encode_stats,
    encode_ts,
    exhausted_error_message,
    expired_lease_message,
    failed_status,
    is_claimable,
    item_from_record,
    lease_lost_message,
    lease_until,
    new_record,
    resolve_now,
    sort_key,
    validate_owner,
    requeued_stats,
    with_last_error,
)

STATUS_INDEX = "status-created_at-index"
# Parallel conditional PutItems in register_many (boto3 clients are thread-safe).
REGISTER_WORKERS = 8
# BatchGetItem takes at most 100 keys per call.
BATCH_GET_KEYS = 100

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def _is_conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def _to_attrs(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in values.items()}


def _from_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in attrs.items()}


def make_dynamodb_client(region: str | None = None):
    return boto3.client("dynamodb", region_name=region, config=Config(retries={"mode": "standard"}))


def create_ledger_table(client, table_name: str, *, wait: bool = True) -> dict[str, Any]:
    """Create the ledger table (on-demand billing, status/created_at GSI) unless it exists.

    Idempotent; returns the table description. Refuses an existing table without the GSI,
    since ``claimable()`` could not work on it.
    """
    try:
        client.create_table(
            TableName=table_name,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "control_id", "AttributeType": "S"},
                {"AttributeName": "status", "AttributeType": "S"},
                {"AttributeName": "created_at", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": "control_id", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": STATUS_INDEX,
                    "KeySchema": [
                        {"AttributeName": "status", "KeyType": "HASH"},
                        {"AttributeName": "created_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise
    if wait:
        client.get_waiter("table_exists").wait(TableName=table_name)
    table = client.describe_table(TableName=table_name)["Table"]
    indexes = {gsi["IndexName"] for gsi in table.get("GlobalSecondaryIndexes", [])}
    if STATUS_INDEX not in indexes:
        raise ValueError(
            f"DynamoDB table {table_name!r} exists but has no {STATUS_INDEX!r} index; "
            "it was not created by create_ledger_table / the datamaster CloudFormation stack"
        )
    return table


class DynamoLedger:
    """``Ledger`` backed by a DynamoDB table with conditional writes."""

    def __init__(self, table_name: str, region: str | None = None, max_attempts: int = 3, client=None) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.table_name = table_name
        self.region = region
        self.max_attempts = max_attempts
        self._owns_client = client is None
        self.client = client if client is not None else make_dynamodb_client(region)

    def __getstate__(self) -> dict[str, Any]:
        if not self._owns_client:
            raise TypeError("a DynamoLedger built around an injected client cannot be pickled")
        return {"table_name": self.table_name, "region": self.region, "max_attempts": self.max_attempts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["table_name"], state["region"], state["max_attempts"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"DynamoLedger({self.table_name!r}, region={self.region!r}, max_attempts={self.max_attempts})"

    # ---- low-level helpers ---------------------------------------------------------------
    def _update(
        self,
        control_id: str,
        update: str,
        condition: str,
        values: Mapping[str, Any],
    ) -> LedgerItem | None:
        """One conditional UpdateItem; the new item, or None when the condition failed."""
        try:
            response = self.client.update_item(
                TableName=self.table_name,
                Key=_to_attrs({"control_id": control_id}),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=_to_attrs(values),
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _is_conditional_failure(exc):
                return None
            raise
        return item_from_record(_from_attrs(response["Attributes"]))

    def _pages(self, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for page in self.client.get_paginator(operation).paginate(TableName=self.table_name, **kwargs):
            for attrs in page.get("Items", []):
                yield _from_attrs(attrs)

    def _query_status(
        self, status: Status, filters: list[str], values: dict[str, Any], limit: int | None = None
    ) -> list[LedgerItem]:
        """Items with ``status`` oldest first through the GSI, stopping once ``limit`` matched."""
        kwargs: dict[str, Any] = {
            "IndexName": STATUS_INDEX,
            "KeyConditionExpression": "#status = :qstatus",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": _to_attrs({**values, ":qstatus": status.value}),
            "ScanIndexForward": True,
        }
        if filters:
            kwargs["FilterExpression"] = " AND ".join(filters)
        found: list[LedgerItem] = []
        for record in self._pages("query", **kwargs):
            found.append(item_from_record(record))
            if limit is not None and len(found) >= limit:
                break
        return found

    # ---- reads ---------------------------------------------------------------------------
    def get(self, control_id: str) -> LedgerItem | None:
        response = self.client.get_item(
            TableName=self.table_name, Key=_to_attrs({"control_id": control_id}), ConsistentRead=True
        )
        attrs = response.get("Item")
        return None if attrs is None else item_from_record(_from_attrs(attrs))

    def items(
        self,
        *,
        layer: str | None = None,
        table_name: str | None = None,
        status: Status | None = None,
        limit: int | None = None,
    ) -> list[LedgerItem]:
        filters, values = _scope_filters(layer, table_name)
        if status is not None:
            found = self._query_status(Status(status), filters, values)
        else:
            kwargs: dict[str, Any] = {"ConsistentRead": True}
            if filters:
                kwargs["FilterExpression"] = " AND ".join(filters)
                kwargs["ExpressionAttributeValues"] = _to_attrs(values)
            found = [item_from_record(r) for r in self._pages("scan", **kwargs)]
        found.sort(key=sort_key)
        return found if limit is None else found[:limit]

    def items_for_keys(self, layer: str, object_keys: Iterable[str]) -> list[LedgerItem]:
        """A scan: the table has no object-key index. Landing asks only for objects listed without
        a checksum, which S3 listings always carry (their ETag), so the AWS path never calls it."""
        keys = set(object_keys)
        if not keys:
            return []
        filters, values = _scope_filters(layer, None)
        records = self._pages("scan", ConsistentRead=True, FilterExpression=" AND ".join(filters),
                              ExpressionAttributeValues=_to_attrs(values))
        return sorted((item_from_record(r) for r in records if r["object_key"] in keys), key=sort_key)

    def claimable(
        self,
        layer: str,
        table_name: str | None = None,
        *,
        limit: int = 1000,
        now: datetime | None = None,
    ) -> list[LedgerItem]:
        now = resolve_now(now)
        filters, values = _scope_filters(layer, table_name)
        per_status = {
            Status.PENDING: ([], {}),
            Status.ERROR: ([], {}),
            Status.RUNNING: (["lease_expires_at <= :now"], {":now": encode_ts(now)}),
        }
        found: list[LedgerItem] = []
        for status, (extra_filters, extra_values) in per_status.items():
            found += self._query_status(status, filters + extra_filters, {**values, **extra_values}, limit)
        # The GSI is eventually consistent: re-check, the claim itself is the real arbiter anyway.
        found = [item for item in found if is_claimable(item, now, self.max_attempts)]
        found.sort(key=sort_key)
        return found[:limit]

    def counts(self) -> dict[tuple[str, str, str], int]:
        """A full (projected) scan: fine for dashboards and tests, not for every sensor tick."""
        totals: dict[tuple[str, str, str], int] = {}
        for record in self._pages(
            "scan",
            ProjectionExpression="layer, table_name, #status",
            ExpressionAttributeNames={"#status": "status"},
        ):
            key = (record["layer"], record["table_name"], record["status"])
            totals[key] = totals.get(key, 0) + 1
        return totals

    # ---- registration --------------------------------------------------------------------
    def register(self, reg: Registration, *, now: datetime | None = None) -> tuple[LedgerItem, bool]:
        record = new_record(reg, resolve_now(now))
        try:
            self.client.put_item(
                TableName=self.table_name,
                Item=_to_attrs(record),
                ConditionExpression="attribute_not_exists(control_id)",
            )
        except ClientError as exc:
            if not _is_conditional_failure(exc):
                raise
            existing = self.get(reg.control_id)
            if existing is None:  # cannot happen: nothing deletes items
                raise RuntimeError(f"ledger item {reg.control_id} reported as existing but not found") from exc
            return existing, False
        return item_from_record(record), True

    def register_many(
        self, regs: Iterable[Registration], *, now: datetime | None = None
    ) -> list[tuple[LedgerItem, bool]]:
        """Conditional PutItem per item, several in flight at once.

        Not BatchWriteItem (it cannot carry a condition, so it would overwrite a running item) and
        not TransactWriteItems (one already-registered object cancels the whole chunk, and
        re-listing already-known objects is the common case; it also costs twice the capacity).
        Each item is registered or not on its own, so a partial failure is repaired by retrying.
        """
        regs = list(regs)
        created_at = resolve_now(now)
        for reg in regs:
            new_record(reg, created_at)  # validate all before writing any
        unique: dict[str, Registration] = {}
        for reg in regs:
            unique.setdefault(reg.control_id, reg)
        # Re-listing known objects is the common case (every reconcile lists all of raw/): find them
        # with BatchGetItem (100 keys a call, no write capacity) and PutItem only the rest.
        outcomes: dict[str, tuple[LedgerItem, bool]] = {
            cid: (item, False) for cid, item in self._existing(list(unique)).items()
        }
        todo = [reg for cid, reg in unique.items() if cid not in outcomes]
        if todo:
            with ThreadPoolExecutor(max_workers=min(REGISTER_WORKERS, len(todo))) as pool:
                outcomes.update(zip((r.control_id for r in todo), pool.map(lambda r: self.register(r, now=created_at), todo)))
        results, seen = [], set()
        for reg in regs:
            item, created = outcomes[reg.control_id]
            results.append((item, created and reg.control_id not in seen))
            seen.add(reg.control_id)
        return results

    def _existing(self, control_ids: list[str]) -> dict[str, LedgerItem]:
        """The items among ``control_ids`` already in the table (strongly consistent BatchGetItem)."""
        found: dict[str, LedgerItem] = {}
        for start in range(0, len(control_ids), BATCH_GET_KEYS):
            keys = [_to_attrs({"control_id": cid}) for cid in control_ids[start:start + BATCH_GET_KEYS]]
            request: dict[str, Any] = {self.table_name: {"Keys": keys, "ConsistentRead": True}}
            for attempt in range(10):
                response = self.client.batch_get_item(RequestItems=request)
                for attrs in response.get("Responses", {}).get(self.table_name, []):
                    item = item_from_record(_from_attrs(attrs))
                    found[item.control_id] = item
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(min(2.0, 0.05 * 2**attempt))  # throttled: back off, ask again for the rest
            # keys still unprocessed are simply treated as unknown: register() decides for them
        return found

    # ---- transitions ---------------------------------------------------------------------
    def claim(self, control_id: str, owner: str, lease_seconds: int, now: datetime | None = None) -> LedgerItem | None:
        """pending | error (attempts left) | running with an expired lease (attempts left) -> running.

        A running item whose lease expired with its attempts used up is quarantined instead, and so
        is an error item past this ledger's max_attempts (failed by a worker that allowed more);
        None is returned.
        """
        validate_owner(owner)
        now = resolve_now(now)
        now_ts = encode_ts(now)
        claimed = self._update(
            control_id,
            "SET #status = :running, lease_owner = :owner, lease_expires_at = :expires, started_at = :now"
            " ADD attempt_count :one REMOVE finished_at, duration_ms",
            "#status = :pending OR (#status = :error AND attempt_count < :max)"
            " OR (#status = :running AND lease_expires_at <= :now AND attempt_count < :max)",
            {
                ":running": Status.RUNNING.value,
                ":pending": Status.PENDING.value,
                ":error": Status.ERROR.value,
                ":owner": owner,
                ":expires": encode_ts(lease_until(now, lease_seconds)),
                ":now": now_ts,
                ":one": 1,
                ":max": self.max_attempts,
            },
        )
        if claimed is not None:
            return claimed
        current = self.get(control_id)
        if (
            current is not None
            and current.status is Status.RUNNING
            and current.lease_owner == owner
            and current.started_at == now
            and current.lease_expires_at == lease_until(now, lease_seconds)
        ):
            # This very call won: its UpdateItem was applied but the response was lost, and
            # botocore's retry then failed the condition (SQLite cannot see this).
            return current
        if (
            current is not None
            and current.status is Status.RUNNING
            and current.lease_expires_at is not None
            and current.lease_expires_at <= now
        ):
            self._update(
                control_id,
                "SET #status = :quarantined, error_message = :message, finished_at = :now, stats = :stats"
                " REMOVE lease_expires_at",
                "#status = :running AND lease_expires_at <= :now AND attempt_count >= :max"
                " AND attempt_count = :seen_attempt",
                {
                    ":quarantined": Status.QUARANTINED.value,
                    ":running": Status.RUNNING.value,
                    ":message": expired_lease_message(current, self.max_attempts),
                    ":now": now_ts,
                    ":stats": encode_stats(with_last_error(current.stats, current.error_message)),
                    ":max": self.max_attempts,
                    ":seen_attempt": current.attempt_count,
                },
            )
        elif current is not None and current.status is Status.ERROR and current.attempt_count >= self.max_attempts:
            self._update(
                control_id,
                "SET #status = :quarantined, error_message = :message, finished_at = :now",
                "#status = :error AND attempt_count = :seen_attempt",
                {
                    ":quarantined": Status.QUARANTINED.value,
                    ":error": Status.ERROR.value,
                    ":message": exhausted_error_message(current, self.max_attempts),
                    ":now": now_ts,
                    ":seen_attempt": current.attempt_count,
                },
            )
        return None

    def _held_update(
        self,
        control_id: str,
        owner: str,
        now: datetime,
        change: Callable[[LedgerItem], tuple[str, dict[str, Any]]],
        landed: Callable[[LedgerItem], bool] | None = None,
    ) -> LedgerItem:
        """Apply ``change(current)`` only while ``owner`` holds an unexpired lease on the attempt
        that was read; else LeaseLost. ``landed(item)``: whether ``item`` is what this very write
        leaves behind (its response was lost and botocore's resend then failed the condition)."""
        current = self.get(control_id)
        if current is None:
            raise LeaseLost(lease_lost_message(control_id, owner, current, now))
        update, values = change(current)
        updated = self._update(
            control_id,
            update,
            "#status = :held_running AND lease_owner = :held_owner AND lease_expires_at > :held_now"
            " AND attempt_count = :held_attempt",
            {
                **values,
                ":held_running": Status.RUNNING.value,
                ":held_owner": owner,
                ":held_now": encode_ts(now),
                ":held_attempt": current.attempt_count,
            },
        )
        if updated is None:
            after = self.get(control_id)
            if (
                landed is not None
                and after is not None
                and after.lease_owner == owner
                and after.attempt_count == current.attempt_count
                and landed(after)
            ):
                return after
            raise LeaseLost(lease_lost_message(control_id, owner, after, now))
        return updated

    def renew(self, control_id: str, owner: str, lease_seconds: int, now: datetime | None = None) -> LedgerItem:
        validate_owner(owner)
        now = resolve_now(now)
        expires = encode_ts(lease_until(now, lease_seconds))
        return self._held_update(control_id, owner, now, lambda _: ("SET lease_expires_at = :expires", {":expires": expires}))

    def complete(
        self,
        control_id: str,
        owner: str,
        *,
        record_count: int,
        rejected_count: int,
        output_key: str | None,
        duration_ms: int,
        stats: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> LedgerItem:
        validate_owner(owner)
        now = resolve_now(now)

        def success(current: LedgerItem) -> tuple[str, dict[str, Any]]:
            values = {
                ":success": Status.SUCCESS.value,
                ":records": record_count,
                ":rejected": rejected_count,
                ":duration": duration_ms,
                ":finished": encode_ts(now),
                ":stats": encode_stats(completed_stats(current, stats)),
            }
            update = (
                "SET #status = :success, record_count = :records, rejected_count = :rejected,"
                " duration_ms = :duration, finished_at = :finished, stats = :stats"
            )
            removed = ["lease_expires_at", "error_message"]
            if output_key is None:
                removed.append("output_key")
            else:
                update += ", output_key = :output"
                values[":output"] = output_key
            return f"{update} REMOVE {', '.join(removed)}", values

        return self._held_update(
            control_id, owner, now, success,
            landed=lambda after: after.status is Status.SUCCESS and after.finished_at == now,
        )

    def fail(
        self,
        control_id: str,
        owner: str,
        error_message: str,
        *,
        permanent: bool = False,
        now: datetime | None = None,
    ) -> LedgerItem:
        """-> quarantined if ``permanent`` or this was attempt ``max_attempts``; else -> error."""
        validate_owner(owner)
        now = resolve_now(now)
        return self._held_update(
            control_id,
            owner,
            now,
            lambda current: (
                "SET #status = :failed, error_message = :message, finished_at = :finished REMOVE lease_expires_at",
                {
                    ":failed": failed_status(current, permanent, self.max_attempts).value,
                    ":message": error_message,
                    ":finished": encode_ts(now),
                },
            ),
            landed=lambda after: (
                after.status in (Status.ERROR, Status.QUARANTINED)
                and after.finished_at == now
                and after.error_message == error_message
            ),
        )

    def requeue(
        self,
        control_ids: Iterable[str] | None = None,
        *,
        table_name: str | None = None,
        layer: str | None = None,
        statuses: Iterable[Status] = (Status.QUARANTINED, Status.ERROR),
        now: datetime | None = None,
    ) -> list[LedgerItem]:
        """Matching items -> pending with attempts reset; the cleared error is kept in
        ``stats['last_error']``. Item by item (each write conditional on the state that was read):
        an interrupted requeue leaves some items requeued and the rest untouched; run it again."""
        wanted = [Status(s) for s in statuses]
        resolve_now(now)
        filters, values = _scope_filters(layer, table_name)
        if control_ids is not None:
            candidates = [item for cid in dict.fromkeys(control_ids) if (item := self.get(cid)) is not None]
            candidates = [
                item
                for item in candidates
                if item.status in wanted
                and (layer is None or item.layer == layer)
                and (table_name is None or item.table_name == table_name)
            ]
        else:
            candidates = [item for status in wanted for item in self._query_status(status, filters, values)]
        candidates.sort(key=sort_key)
        requeued: list[LedgerItem] = []
        for item in candidates:
            updated = self._update(
                item.control_id,
                "SET #status = :pending, attempt_count = :zero, stats = :stats"
                " REMOVE error_message, lease_owner, lease_expires_at",
                "#status = :seen_status AND attempt_count = :seen_attempt",
                {
                    ":pending": Status.PENDING.value,
                    ":zero": 0,
                    ":stats": encode_stats(requeued_stats(item.stats, item.error_message)),
                    ":seen_status": item.status.value,
                    ":seen_attempt": item.attempt_count,
                },
            )
            if updated is not None:
                requeued.append(updated)
        return requeued


def _scope_filters(layer: str | None, table_name: str | None) -> tuple[list[str], dict[str, Any]]:
    filters: list[str] = []
    values: dict[str, Any] = {}
    if layer is not None:
        filters.append("layer = :layer")
        values[":layer"] = layer
    if table_name is not None:
        filters.append("table_name = :table_name")
        values[":table_name"] = table_name
    return filters, values
