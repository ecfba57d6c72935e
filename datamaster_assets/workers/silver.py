"""Silver worker: apply a table's pending bronze files to its Iceberg table (DESIGN section 6).

``apply_pending_silver`` claims the table's claimable silver ledger items, reads their bronze
Parquet, merges all changes in one pass (``transform.silver.merge_changes``), commits the new
table copy-on-write in ONE Iceberg transaction, and only then marks the items done. A crash
between the commit and the ledger update is harmless: the items are reclaimed after their lease
expires, and re-applying them changes nothing because every change is older than or equal to the
watermark now stored for its key.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.expressions import AlwaysTrue

from datamaster_assets.contracts import Contract, get_contract
from datamaster_assets.lake.catalog import (
    evolve_schema,
    load_or_create_table,
    read_table,
    scan_to_arrow,
    table_identifier,
)
from datamaster_assets.lake.factory import Lake
from datamaster_assets.lake.iceberg_files import commit_replacement, write_data_files
from datamaster_assets.lake.ledger import Layer, LedgerItem, LeaseLost
from datamaster_assets.lake.objectstore import ObjectStore
from datamaster_assets.transform.silver import (
    DICTIONARY_COLUMNS,
    OUTCOMES,
    MergeResult,
    change_schema,
    conform_changes,
    merge_changes,
    silver_schema,
    validate_changes,
)

__all__ = [
    "SilverApplyResult",
    "apply_pending_silver",
    "apply_pending_silver_remotely",
    "commit_merge",
    "pending_change_rows",
    "read_table",
]

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 5
PREVIEW_ROWS = 5
# When no limit is given, one run takes at most this many files (the ledger pages oldest first).
DEFAULT_MAX_FILES = 10_000


class BadBronzeFile(ValueError):
    """A bronze file that can never be merged as it is (corrupt, wrong schema, invalid rows)."""


@dataclass(frozen=True)
class CommitOutcome:
    merge: MergeResult | None  # None when there were no changes to merge
    snapshot_id: int | None
    committed: bool  # False when the merge changed nothing and no snapshot was written
    attempts: int


@dataclass
class SilverApplyResult:
    table: str
    identifier: str
    files_applied: int = 0
    files_failed: int = 0
    failures: list[str] = field(default_factory=list)  # one message per failed file, naming it
    lease_lost: list[str] = field(default_factory=list)  # control ids finished by someone else
    counts: dict[str, int] = field(default_factory=lambda: {name: 0 for name in OUTCOMES})
    change_rows: int = 0
    live_rows: int | None = None
    total_rows: int | None = None
    snapshot_id: int | None = None
    committed: bool = False
    commit_attempts: int = 0
    duration_s: float = 0.0
    preview_markdown: str = ""

    @property
    def metadata(self) -> dict[str, Any]:
        """Plain values for a Dagster MaterializeResult."""
        out: dict[str, Any] = {
            "dagster/row_count": self.live_rows if self.live_rows is not None else 0,
            "table": self.identifier,
            "total_rows_incl_deleted": self.total_rows if self.total_rows is not None else 0,
            "files_applied": self.files_applied,
            "files_failed": self.files_failed,
            "change_rows": self.change_rows,
            "snapshot_id": str(self.snapshot_id) if self.snapshot_id is not None else "",
            "committed": self.committed,
            "commit_attempts": self.commit_attempts,
            "duration_s": round(self.duration_s, 3),
        }
        out.update(self.counts)
        if self.preview_markdown:
            out["preview"] = self.preview_markdown
        return out


def read_bronze_file(store: ObjectStore, key: str, contract: Contract) -> pa.Table:
    """The merge's columns of a bronze Parquet file (``change_schema``). Raises BadBronzeFile for
    content that can never merge; OSError (e.g. a missing object) passes through as retryable."""
    path = store.local_path(key)
    try:
        source = path if path is not None else io.BytesIO(store.read_bytes(key))
        parquet = pq.ParquetFile(source)
        wanted = [n for n in change_schema(contract).names if n in parquet.schema_arrow.names]
        raw = parquet.read(columns=wanted)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise BadBronzeFile(f"bronze file {key} is not readable Parquet: {exc}") from exc
    try:
        problems = validate_changes(raw, contract)
        if problems:
            raise BadBronzeFile(f"bronze file {key}: " + "; ".join(problems))
        return conform_changes(raw, contract)
    except pa.ArrowException as exc:  # e.g. a lineage column of the wrong type
        raise BadBronzeFile(f"bronze file {key}: columns do not match the {contract.name} contract: {exc}") from exc


def prepare_silver_table(catalog: Catalog, identifier: str, contract: Contract):
    """The silver table, created from the contract on first use, with the columns a contract
    change added (stored rows read them as null) or widened. Raises SchemaConflict for a change
    that adding columns cannot express (docs/silver.md, "Schema changes")."""
    schema = silver_schema(contract)
    table = load_or_create_table(catalog, identifier, schema, contract.primary_key)
    changed = evolve_schema(table, identifier, schema, contract.primary_key)
    if changed:
        log.info("%s: schema follows the %s contract, columns added or widened: %s", identifier, contract.name,
                 ", ".join(changed))
    return table


def commit_merge(
    catalog: Catalog, identifier: str, contract: Contract, changes: pa.Table, *, attempts: int = COMMIT_ATTEMPTS
) -> tuple[CommitOutcome, pa.Table]:
    """Merge ``changes`` into the table and commit copy-on-write in one transaction.

    On a commit conflict (another writer committed since we loaded the table) reload, re-merge
    and recommit, at most ``attempts`` times. Returns the outcome and the table as now stored.
    The table's schema first follows the contract (``prepare_silver_table``).
    """
    for attempt in range(1, attempts + 1):
        try:
            table = prepare_silver_table(catalog, identifier, contract)
            current = (scan_to_arrow(table, dictionary_columns=DICTIONARY_COLUMNS)
                       if table.current_snapshot() is not None else None)
            merged = merge_changes(current, changes, contract)
            if not merged.changed:
                snapshot = table.current_snapshot()
                return CommitOutcome(merged, snapshot.snapshot_id if snapshot else None, False, attempt), merged.table
            # Copy-on-write: the new table replaces every data file, in one transaction.
            commit_replacement(table, write_data_files(table.metadata, table.io, merged.table), AlwaysTrue(), {})
        except CommitFailedException as exc:  # another writer committed (data or schema) since the load
            if attempt == attempts:
                raise
            log.warning("commit to %s conflicted (attempt %d/%d), retrying: %s", identifier, attempt, attempts, exc)
            continue
        return CommitOutcome(merged, table.current_snapshot().snapshot_id, True, attempt), merged.table
    raise AssertionError("unreachable")


def apply_pending_silver(
    lake: Lake, table: str, *, owner: str, max_files: int | None = None, now: datetime | None = None
) -> SilverApplyResult:
    """Claim, merge and commit the table's pending bronze files; then complete their ledger items."""
    started = time.perf_counter()
    contract = get_contract(table)
    identifier = table_identifier(lake.settings, "silver", table)
    result = SilverApplyResult(table=table, identifier=identifier)
    ledger = lake.ledger

    claimed = _claim_pending(lake, table, owner, max_files, now)

    loaded: list[tuple[LedgerItem, pa.Table]] = []
    for item in claimed:
        try:
            loaded.append((item, read_bronze_file(lake.store, item.object_key, contract)))
        except BadBronzeFile as exc:
            _fail(ledger, item, owner, str(exc), permanent=True, now=now, result=result)
        except OSError as exc:
            _fail(ledger, item, owner, f"bronze file {item.object_key} could not be read: {exc}", permanent=False,
                  now=now, result=result)
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not strand the batch's other items
            log.exception("reading bronze file %s failed", item.object_key)
            _fail(ledger, item, owner, f"bronze file {item.object_key} could not be read: {type(exc).__name__}: {exc}",
                  permanent=False, now=now, result=result)

    if loaded:
        changes = pa.concat_tables([t for _, t in loaded])
        try:
            outcome, stored = commit_merge(lake.catalog, identifier, contract, changes)
        except Exception as exc:
            # Nothing was committed: release the files for a retry, then let the caller see it.
            for item, _ in loaded:
                _fail(ledger, item, owner, f"merging bronze file {item.object_key} into {identifier} failed: {exc}",
                      permanent=False, now=now, result=result)
            raise
        result.snapshot_id, result.committed, result.commit_attempts = (
            outcome.snapshot_id, outcome.committed, outcome.attempts)
        result.change_rows = changes.num_rows
        result.counts = outcome.merge.counts()
        result.total_rows = stored.num_rows
        result.live_rows = stored["deleted_at"].null_count
        result.preview_markdown = _preview(outcome.merge, result)
        start = 0
        for item, rows in loaded:
            file_rows = slice(start, start + rows.num_rows)
            start += rows.num_rows
            stats = {**outcome.merge.counts(file_rows), "snapshot_id": outcome.snapshot_id,
                     "committed": outcome.committed}
            try:
                ledger.complete(item.control_id, owner, record_count=rows.num_rows, rejected_count=0,
                                output_key=identifier, duration_ms=int((time.perf_counter() - started) * 1000),
                                stats=stats, now=now)
                result.files_applied += 1
            except LeaseLost:
                # Someone reclaimed it after our lease ran out; their re-apply is a no-op.
                result.lease_lost.append(item.control_id)
    else:
        _describe_stored(lake, identifier, result)

    result.duration_s = time.perf_counter() - started
    return result


def pending_change_rows(lake: Lake, table: str, *, now: datetime | None = None) -> int:
    """Change rows waiting for the table (the bronze files' accepted counts): the load measure
    that sends a silver merge to Spark on EMR Serverless above ``emr_min_change_rows``."""
    items = lake.ledger.claimable(Layer.SILVER.value, table_name=table, limit=DEFAULT_MAX_FILES, now=now)
    return sum(i.record_count or 0 for i in items)


def _claim_pending(lake: Lake, table: str, owner: str, max_files: int | None, now: datetime | None) -> list[LedgerItem]:
    """Claim the table's pending files, after the table's schema has followed the contract
    (``prepare_silver_table``): a schema conflict is the contract's problem, not the files', so
    met before any claim it spends no attempt, and the files merge once the contract is put right."""
    candidates = lake.ledger.claimable(
        Layer.SILVER.value, table_name=table, limit=max_files or DEFAULT_MAX_FILES, now=now
    )
    if candidates:
        prepare_silver_table(lake.catalog, table_identifier(lake.settings, "silver", table), get_contract(table))
    claimed = []
    for item in candidates:
        got = lake.ledger.claim(item.control_id, owner, lake.settings.lease_seconds, now=now)
        if got is not None:
            claimed.append(got)
    return claimed


def apply_pending_silver_remotely(
    lake: Lake,
    table: str,
    *,
    owner: str,
    run_merge: Callable[[str], dict[str, Any]],
    max_files: int | None = None,
    now: datetime | None = None,
) -> SilverApplyResult:
    """The same ledger protocol as ``apply_pending_silver`` with the merge done elsewhere (the Spark
    job ``spark/silver_merge.py`` on EMR Serverless, whose ``MERGE INTO`` has the same semantics).

    Claims the pending files, writes their URIs to a manifest object, calls ``run_merge(manifest
    URI)`` (which returns the job's reported metadata, or raises), then completes the items. A failed
    job releases the files for a retry; a crash after the job's commit is as harmless as in-process,
    because the merge ignores changes not newer than the stored watermark.
    """
    started = time.perf_counter()
    identifier = table_identifier(lake.settings, "silver", table)
    result = SilverApplyResult(table=table, identifier=identifier)
    claimed = _claim_pending(lake, table, owner, max_files, now)
    if not claimed:
        _describe_stored(lake, identifier, result)
        result.duration_s = time.perf_counter() - started
        return result
    manifest_key = f"_manifests/silver-{table}-{claimed[0].control_id}-{len(claimed)}.txt"
    lake.store.put_bytes(manifest_key, "".join(lake.store.uri(i.object_key) + "\n" for i in claimed).encode())
    try:
        with _leases_kept(lake, claimed, owner):  # a Spark job can outlast a lease
            reported = run_merge(lake.store.uri(manifest_key))
    except Exception as exc:
        for item in claimed:
            _fail(lake.ledger, item, owner, f"Spark merge of bronze file {item.object_key} into {identifier} failed: {exc}",
                  permanent=False, now=now, result=result)
        raise
    result.committed = True
    result.change_rows = int(reported.get("changes_read", 0))
    result.counts = {name: int(reported.get(name, 0)) for name in OUTCOMES}
    stats = {"engine": "spark", "snapshot_id": reported.get("snapshot_id"), "manifest": manifest_key}
    for item in claimed:
        try:
            lake.ledger.complete(item.control_id, owner, record_count=item.record_count or 0, rejected_count=0,
                                 output_key=identifier, duration_ms=int((time.perf_counter() - started) * 1000),
                                 stats=stats, now=now)
            result.files_applied += 1
        except LeaseLost:
            result.lease_lost.append(item.control_id)
    _describe_stored(lake, identifier, result)
    result.duration_s = time.perf_counter() - started
    return result


@contextmanager
def _leases_kept(lake: Lake, items: list[LedgerItem], owner: str) -> Iterator[None]:
    """Renew the items' leases every third of a lease while the block runs, so no other worker
    takes them over (and merges them again) while a long job still holds them. An item whose
    lease was lost anyway is left to its new owner; completing it then reports the loss."""
    stop = threading.Event()
    held = list(items)

    def keep() -> None:
        while not stop.wait(lake.settings.lease_seconds / 3):
            for item in list(held):
                try:
                    lake.ledger.renew(item.control_id, owner, lake.settings.lease_seconds)
                except LeaseLost:
                    held.remove(item)
                except Exception:  # noqa: BLE001 - a ledger hiccup: try again on the next beat
                    log.warning("renewing the lease of %s failed", item.control_id, exc_info=True)

    renewer = threading.Thread(target=keep, name="silver-leases", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()


def _describe_stored(lake: Lake, identifier: str, result: SilverApplyResult) -> None:
    """Row counts and snapshot of the table as stored, reading only its deleted_at column."""
    try:
        iceberg = lake.catalog.load_table(identifier)
    except NoSuchTableError:
        return
    snapshot = iceberg.current_snapshot()
    if snapshot is None:
        return
    deleted_at = iceberg.scan(selected_fields=("deleted_at",)).to_arrow()["deleted_at"]
    result.snapshot_id = snapshot.snapshot_id
    result.total_rows = len(deleted_at)
    result.live_rows = deleted_at.null_count


def _fail(ledger, item: LedgerItem, owner: str, message: str, *, permanent: bool, now, result: SilverApplyResult):
    log.error("%s", message)
    result.files_failed += 1
    result.failures.append(message)
    try:
        ledger.fail(item.control_id, owner, message, permanent=permanent, now=now)
    except LeaseLost:
        result.lease_lost.append(item.control_id)


def _preview(merge: MergeResult, result: SilverApplyResult) -> str:
    """Outcome counts and a few of the rows this merge wrote, as Markdown."""
    lines = ["| outcome | change rows |", "|---|---|"]
    lines += [f"| {name} | {n:,} |" for name, n in result.counts.items() if n]
    written = merge.written if merge.changed else None
    if written is not None and written.num_rows:
        sample = written.slice(0, PREVIEW_ROWS)
        names = [c for c in sample.column_names if not c.startswith("_")]
        lines += ["", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        for row in sample.select(names).to_pylist():
            lines.append("| " + " | ".join(_cell(row[n]) for n in names) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value).replace("|", "\\|")[:40]
