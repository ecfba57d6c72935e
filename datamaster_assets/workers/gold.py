"""Worker entry points: build silver.review_flat and refresh the gold marts on the lake's catalog.

How gold knows what to recompute (docs/gold.md):

- ``build_review_flat_table`` diffs the new review_flat against the current one and commits the
  months whose gold inputs changed in the snapshot summary of the review_flat write
  (``datamaster.gold-affected-months``), atomically with the data. Nothing changed: no write.
- every gold table records in its snapshot summary the review_flat snapshot it was built from
  (``datamaster.review-flat-snapshot``). ``refresh_gold`` walks review_flat's snapshot history back
  to that snapshot and unions the affected months on the way; those months are recomputed and
  overwritten in one transaction (delete those months' partitions, add the new files). Anything it
  cannot account for (a new mart, expired history, a foreign snapshot) means a full rebuild.

Running either twice in a row changes nothing the second time and commits no snapshot.

When both run in one process (``datamaster run``, the benchmark), the build leaves the rows it
committed in memory, keyed by review_flat's snapshot, and the refresh uses them instead of reading
the table back only if that snapshot is still the current one.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, In, Or
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.transforms import IdentityTransform

from datamaster_assets.lake.catalog import LAKE_TABLE_PROPERTIES, ensure_namespace, iceberg_schema, table_identifier
from datamaster_assets.lake.factory import Lake
from datamaster_assets.lake.iceberg_files import commit_replacement, write_data_files
from datamaster_assets.lake.maintenance import current_history
from datamaster_assets.transform.gold import (
    COMPUTE_ORDER,
    GOLD_INPUT_COLUMNS,
    MART_TABLE_PROPERTIES,
    PARTITION_COLUMNS,
    MartSpec,
    Month,
    arrange_mart,
    iter_marts,
    mart_specs,
    months_of,
    months_table,
    preview_markdown,
)
from datamaster_assets.transform.review_flat import (
    REQUIRED_INPUT_COLUMNS,
    REVIEW_FLAT_SCHEMA,
    build_review_flat,
    diff_review_flat,
)

REVIEW_FLAT = "review_flat"
PROP_AFFECTED_MONTHS = "datamaster.gold-affected-months"
PROP_BUILT_AT = "datamaster.built-at"
PROP_SOURCE_SNAPSHOT = "datamaster.review-flat-snapshot"
COMMIT_ATTEMPTS = 3


class GoldInputMissing(RuntimeError):
    """A table the build needs has not been created yet."""


# ---- month sets <-> snapshot summary values --------------------------------------------------


def encode_months(months: Iterable[Month]) -> str:
    return ",".join(f"{y:04d}{m:02d}" for y, m in sorted(set(months)))


def decode_months(value: str) -> set[Month]:
    return {(int(v[:4]), int(v[4:])) for v in value.split(",") if v}


def month_filter(months: Iterable[Month]) -> BooleanExpression:
    """review_year/review_month predicate for a set of months: one In() per year keeps it small."""
    by_year: dict[int, list[int]] = {}
    for y, m in sorted(set(months)):
        by_year.setdefault(y, []).append(m)
    if not by_year:
        raise ValueError("month_filter needs at least one month")
    parts = [And(EqualTo("review_year", y), In("review_month", ms)) for y, ms in by_year.items()]
    return parts[0] if len(parts) == 1 else Or(*parts)


def _label(months: Iterable[Month], limit: int = 12) -> str:
    ordered = sorted(set(months))
    text = ", ".join(f"{y}-{m:02d}" for y, m in ordered[:limit])
    return text + (f", … (+{len(ordered) - limit})" if len(ordered) > limit else "")


def _ms(start: float) -> int:
    return int((time.perf_counter() - start) * 1000)


def _load(lake: Lake, layer: str, name: str):
    try:
        return lake.catalog.load_table(table_identifier(lake.settings, layer, name))
    except NoSuchTableError:
        return None


# ---- review_flat ------------------------------------------------------------------------------


@dataclass
class FlatResult:
    row_count: int
    rows_added: int
    rows_removed: int
    rows_changed: int
    affected_months: list[Month]  # months gold must recompute because of this build
    written: bool  # False: review_flat already matched silver, no snapshot committed
    snapshot_id: int | None  # the table's current snapshot after the build
    durations_ms: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, object] = field(default_factory=dict)


def read_silver_inputs(lake: Lake) -> dict[str, pa.Table]:
    """The silver tables review_flat joins, only the columns it needs."""
    out = {}
    for name, columns in REQUIRED_INPUT_COLUMNS.items():
        table = _load(lake, "silver", name)
        if table is None:
            raise GoldInputMissing(
                f"{table_identifier(lake.settings, 'silver', name)} does not exist yet: build silver first"
            )
        out[name] = table.scan(selected_fields=columns).to_arrow()
    return out


# ---- review_flat handed from its build to the gold refresh in the same process ----------------
#
# `datamaster run` (and the benchmark) build review_flat and refresh gold in one process. The
# refresh would read back the table the build has just written; instead the build leaves the gold
# input columns here, keyed by the table's uuid and the snapshot that holds exactly those rows, and
# the refresh uses them only when review_flat's current snapshot is still that one. One entry: a
# new build replaces it.


@dataclass(frozen=True)
class _FlatInMemory:
    table_uuid: str
    snapshot_id: int
    rows: pa.Table  # GOLD_INPUT_COLUMNS of that snapshot


_flat_in_memory: _FlatInMemory | None = None
_flat_in_memory_lock = threading.Lock()


def remember_review_flat(table, rows: pa.Table) -> None:
    """Keep the gold inputs of ``rows``, which are exactly review_flat at ``table``'s current snapshot."""
    global _flat_in_memory
    entry = _FlatInMemory(str(table.metadata.table_uuid), table.current_snapshot().snapshot_id,
                          rows.select(list(GOLD_INPUT_COLUMNS)))
    with _flat_in_memory_lock:
        _flat_in_memory = entry


def forget_review_flat() -> None:
    global _flat_in_memory
    with _flat_in_memory_lock:
        _flat_in_memory = None


def gold_input_rows(flat_table, snapshot_id: int) -> tuple[pa.Table, bool]:
    """review_flat's gold input columns at ``snapshot_id``: from memory when this process built
    that snapshot, else read from the table. Second value: whether it came from memory."""
    rows = _in_memory_rows(flat_table, snapshot_id)
    if rows is not None:
        return rows, True
    return flat_table.scan(snapshot_id=snapshot_id, selected_fields=GOLD_INPUT_COLUMNS).to_arrow(), False


def _in_memory_rows(flat_table, snapshot_id: int) -> pa.Table | None:
    with _flat_in_memory_lock:
        entry = _flat_in_memory
    if entry is not None and entry.snapshot_id == snapshot_id and entry.table_uuid == str(flat_table.metadata.table_uuid):
        return entry.rows
    return None


def build_review_flat_table(lake: Lake, *, now: datetime | None = None) -> FlatResult:
    """Rebuild silver.review_flat from silver (copy-on-write overwrite of the whole table) and record
    the months whose gold inputs changed since the previous build."""
    now = now or datetime.now(timezone.utc)
    durations: dict[str, int] = {}
    start = time.perf_counter()
    silver = read_silver_inputs(lake)
    durations["read_silver"] = _ms(start)

    step = time.perf_counter()
    new = build_review_flat(silver["review"], silver["beer"], silver["brewery"], silver["profile"])
    durations["join"] = _ms(step)

    identifier = table_identifier(lake.settings, "silver", REVIEW_FLAT)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        step = time.perf_counter()
        table = _load(lake, "silver", REVIEW_FLAT)
        if table is None:
            ensure_namespace(lake.catalog, identifier.rsplit(".", 1)[0])
            table = lake.catalog.create_table_if_not_exists(
                identifier, schema=iceberg_schema(REVIEW_FLAT_SCHEMA, ("review_id",)), properties=dict(LAKE_TABLE_PROPERTIES)
            )
        old = None
        stored_months: set[Month] = set()
        if table.current_snapshot() is not None:
            old = table.scan().to_arrow()
            if not set(REVIEW_FLAT_SCHEMA.names) <= set(old.column_names):
                # Columns were added since the last build: rewrite all of it. The months the old
                # version held are affected too (a month may have lost all its rows). Columns the
                # schema no longer lists are left alone: they do not force a rewrite every build.
                if {"review_year", "review_month"} <= set(old.column_names):
                    stored_months = months_of(old)
                old = None
                with table.update_schema() as update:
                    update.union_by_name(iceberg_schema(REVIEW_FLAT_SCHEMA, ("review_id",)))
        durations["read_previous"] = _ms(step)

        step = time.perf_counter()
        diff = diff_review_flat(old, new, GOLD_INPUT_COLUMNS)
        affected = set(diff.gold_months) | stored_months
        durations["diff"] = _ms(step)
        written = old is None or diff.any_change
        if written:
            step = time.perf_counter()
            properties = {PROP_AFFECTED_MONTHS: encode_months(affected), PROP_BUILT_AT: now.isoformat()}
            try:
                files = write_data_files(table.metadata, table.io, new)
                commit_replacement(table, files, AlwaysTrue(), properties)
            except CommitFailedException:
                if attempt == COMMIT_ATTEMPTS:
                    raise
                continue  # someone else committed in between: diff against their version
            durations["write"] = _ms(step)
        break

    durations["total"] = _ms(start)
    snapshot = table.current_snapshot()
    if snapshot is not None:
        remember_review_flat(table, new)
    months = sorted(affected)
    result = FlatResult(
        row_count=new.num_rows,
        rows_added=diff.added,
        rows_removed=diff.removed,
        rows_changed=diff.changed,
        affected_months=months,
        written=written,
        snapshot_id=snapshot.snapshot_id if snapshot else None,
        durations_ms=durations,
    )
    result.metadata = {
        "dagster/row_count": new.num_rows,
        "rows_added": diff.added,
        "rows_removed": diff.removed,
        "rows_changed": diff.changed,
        "affected_months": len(months),
        "affected_months_list": _label(months),
        "written": written,
        "snapshot_id": str(result.snapshot_id) if result.snapshot_id is not None else "",
        "duration_ms": durations["total"],
    }
    return result


# ---- gold -------------------------------------------------------------------------------------


def months_since(table, since_snapshot_id: int | None) -> set[Month] | None:
    """Months recorded on review_flat snapshots committed after ``since_snapshot_id``; None when the
    history cannot say (no previous refresh, snapshot expired, a snapshot without the record)."""
    if since_snapshot_id is None:
        return None
    months: set[Month] = set()
    snapshot = table.current_snapshot()
    while snapshot is not None and snapshot.snapshot_id != since_snapshot_id:
        recorded = snapshot.summary[PROP_AFFECTED_MONTHS] if snapshot.summary else None
        if recorded is None:
            return None
        months |= decode_months(recorded)
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None
    return months if snapshot is not None else None


def review_flat_history_in_use(lake: Lake) -> set[int]:
    """The review_flat snapshots the marts' next refresh walks (``months_since``): the current one
    back to the oldest snapshot a mart was built from. Snapshot expiry keeps them; without one of
    them the next refresh would rebuild every month."""
    flat_table = _load(lake, "silver", REVIEW_FLAT)
    if flat_table is None or flat_table.current_snapshot() is None:
        return set()
    history = current_history(flat_table.metadata)
    sources = set()
    for spec in mart_specs():
        mart_table = _load(lake, "gold", spec.name)
        if mart_table is not None and (source := _source_snapshot_of(mart_table)) is not None:
            sources.add(source)
    depths = [history.index(s) for s in sources if s in history]
    return set(history[: max(depths) + 1]) if depths else set()


def _mart_partition_spec(schema) -> PartitionSpec:
    return PartitionSpec(
        *[
            PartitionField(source_id=schema.find_field(name).field_id, field_id=1000 + i,
                           transform=IdentityTransform(), name=name)
            for i, name in enumerate(PARTITION_COLUMNS)
        ]
    )


def _load_or_create_mart(lake: Lake, spec: MartSpec):
    table = _load(lake, "gold", spec.name)
    if table is not None:
        return table
    identifier = table_identifier(lake.settings, "gold", spec.name)
    ensure_namespace(lake.catalog, identifier.rsplit(".", 1)[0])
    schema = iceberg_schema(spec.schema)
    return lake.catalog.create_table_if_not_exists(
        identifier, schema=schema, partition_spec=_mart_partition_spec(schema),
        properties={**LAKE_TABLE_PROPERTIES, **MART_TABLE_PROPERTIES},
    )


def overwrite_months(table, rows: pa.Table, months: set[Month] | None, properties: dict[str, str]) -> None:
    """Replace the given months (all when None) with ``rows`` in one Iceberg transaction."""
    files = write_data_files(table.metadata, table.io, rows)
    commit_replacement(table, files, AlwaysTrue() if months is None else month_filter(months), properties)


@dataclass
class MartResult:
    name: str
    status: str  # "refreshed" | "rebuilt" | "up-to-date"
    affected_months: list[Month]
    rows_written: int
    row_count: int  # rows in the mart after the refresh
    snapshot_id: int | None
    source_snapshot_id: int | None  # the review_flat snapshot the mart now reflects
    duration_ms: int
    metadata: dict[str, object] = field(default_factory=dict)


@dataclass
class GoldResult:
    marts: dict[str, MartResult]
    review_flat_snapshot_id: int | None
    durations_ms: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, object] = field(default_factory=dict)


def _source_snapshot_of(mart_table) -> int | None:
    snapshot = mart_table.current_snapshot()
    value = snapshot.summary[PROP_SOURCE_SNAPSHOT] if snapshot is not None and snapshot.summary else None
    return int(value) if value else None


def _total_records(table) -> int:
    snapshot = table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return 0
    value = snapshot.summary["total-records"]
    return int(value) if value is not None else 0


def pending_gold_work(lake: Lake, marts: Iterable[str] | None = None) -> tuple[set[Month] | None, int]:
    """What ``refresh_gold`` would recompute, without computing it: the months the marts still need
    from review_flat (None: a full rebuild) and how many review_flat rows those months hold (the
    load measure that sends gold to Spark on EMR Serverless)."""
    flat_table = _load(lake, "silver", REVIEW_FLAT)
    if flat_table is None or flat_table.current_snapshot() is None:
        return None, 0
    current = flat_table.current_snapshot().snapshot_id
    needed: set[Month] | None = set()
    for spec in mart_specs(marts):
        mart_table = _load(lake, "gold", spec.name)
        since = _source_snapshot_of(mart_table) if mart_table is not None else None
        if since == current:
            continue
        months = months_since(flat_table, since)
        if months is None:
            needed = None
            break
        needed |= months
    if needed is None:
        return None, _total_records(flat_table)
    if not needed:
        return set(), 0
    in_memory = _in_memory_rows(flat_table, current)
    ym = (in_memory.select(list(PARTITION_COLUMNS)) if in_memory is not None
          else flat_table.scan(selected_fields=PARTITION_COLUMNS).to_arrow())
    wanted = months_table(needed)
    rows = ym.join(wanted, keys=["review_year", "review_month"], join_type="inner").num_rows
    return needed, rows


@dataclass
class _MartPlan:
    spec: MartSpec
    table: object  # the mart's pyiceberg Table
    months: set[Month] | None  # None: rebuild every month
    started: float


def _load_review_flat(lake: Lake):
    flat_table = _load(lake, "silver", REVIEW_FLAT)
    if flat_table is None or flat_table.current_snapshot() is None:
        raise GoldInputMissing(
            f"{table_identifier(lake.settings, 'silver', REVIEW_FLAT)} does not exist yet: build review_flat first"
        )
    return flat_table


def _plan_mart(lake: Lake, spec: MartSpec, flat_table, current: int) -> _MartPlan | MartResult:
    """What one mart needs: a result when it is already up to date, else the months to rewrite."""
    started = time.perf_counter()
    mart_table = _load_or_create_mart(lake, spec)
    since = _source_snapshot_of(mart_table)
    if since == current:
        return _mart_result(spec, mart_table, "up-to-date", [], 0, current, started)
    months = months_since(flat_table, since)
    if months == set():
        # review_flat moved on without touching gold inputs: nothing to rewrite, no snapshot.
        return _mart_result(spec, mart_table, "up-to-date", [], 0, since, started)
    return _MartPlan(spec, mart_table, months, started)


def _write_mart_files(plan: _MartPlan, result: pa.Table) -> tuple[list, list[Month], str]:
    """The data files of a mart's query result, arranged (not committed), the months written and
    the preview."""
    rows = arrange_mart(plan.spec, result)
    files = write_data_files(plan.table.metadata, plan.table.io, rows)
    months = sorted(plan.months) if plan.months is not None else sorted(months_of(rows))
    return files, months, preview_markdown(plan.spec, rows)


def _refresh_planned(
    plans: list[_MartPlan], flat_rows: pa.Table, current: int, now: datetime, durations: dict[str, int]
) -> tuple[dict[str, MartResult], list[_MartPlan]]:
    """Compute the planned marts (one DuckDB pass per distinct month set) and replace their months.

    Three things overlap: DuckDB computes the marts one after another on a worker thread, each
    mart's rows are sorted and its Parquet files written on another worker thread as soon as the
    query returns (both release the GIL for the heavy part), and this thread commits each mart as
    soon as its files are written, in the order the writes finish (all catalog calls stay on the
    calling thread). Returns the results and the plans whose commit lost a race with another
    writer (to be planned again)."""
    by_months: dict[frozenset[Month] | None, list[_MartPlan]] = {}
    for plan in plans:
        by_months.setdefault(None if plan.months is None else frozenset(plan.months), []).append(plan)
    # (plan, query result, finished write) as each write ends, then the number of marts computed
    written: queue.Queue = queue.Queue()
    results: dict[str, MartResult] = {}
    conflicts: list[_MartPlan] = []
    with ThreadPoolExecutor(max_workers=len(plans) + 1, thread_name_prefix="gold") as pool:

        def compute() -> int:
            started = time.perf_counter()
            submitted = 0
            try:
                for group in by_months.values():
                    named = {plan.spec.name: plan for plan in group}
                    for name, rows in iter_marts(flat_rows, group[0].months, sorted(named, key=COMPUTE_ORDER.index)):
                        writing = pool.submit(_write_mart_files, named[name], rows)
                        writing.add_done_callback(lambda done, p=named[name], r=rows: written.put((p, r, done)))
                        submitted += 1
            finally:
                written.put(submitted)
            return _ms(started)

        computing = pool.submit(compute)
        computed, handled = None, 0
        while computed is None or handled < computed:
            step = time.perf_counter()
            item = written.get()
            durations["wait_for_files"] = durations.get("wait_for_files", 0) + _ms(step)
            if isinstance(item, int):
                computed = item
                continue
            handled += 1
            plan, rows, writing = item
            files, months, preview = writing.result()
            step = time.perf_counter()
            properties = {
                PROP_SOURCE_SNAPSHOT: str(current),
                PROP_AFFECTED_MONTHS: "all" if plan.months is None else encode_months(plan.months),
                PROP_BUILT_AT: now.isoformat(),
            }
            delete_filter = AlwaysTrue() if plan.months is None else month_filter(plan.months)
            try:
                commit_replacement(plan.table, files, delete_filter, properties)
            except CommitFailedException:
                conflicts.append(plan)
                continue
            finally:
                durations["commit"] = durations.get("commit", 0) + _ms(step)
            status = "rebuilt" if plan.months is None else "refreshed"
            result = _mart_result(plan.spec, plan.table, status, months, rows.num_rows, current, plan.started)
            result.metadata["preview"] = preview
            results[plan.spec.name] = result
        durations["compute"] = durations.get("compute", 0) + computing.result()  # re-raises its error
    return results, conflicts


def refresh_gold(lake: Lake, marts: Iterable[str] | None = None, *, now: datetime | None = None) -> GoldResult:
    """Bring each gold mart up to date with silver.review_flat, recomputing only affected months.

    All marts are planned against one review_flat snapshot; a mart whose commit loses a race with
    another writer is planned again against the then-current state (up to COMMIT_ATTEMPTS times)."""
    now = now or datetime.now(timezone.utc)
    specs = mart_specs(marts)
    start = time.perf_counter()
    durations: dict[str, int] = {}
    results: dict[str, MartResult] = {}
    todo = specs
    flat_snapshot_id: int | None = None
    from_memory = False
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        step = time.perf_counter()
        flat_table = _load_review_flat(lake)
        flat_snapshot_id = flat_table.current_snapshot().snapshot_id
        plans = []
        for spec in todo:
            planned = _plan_mart(lake, spec, flat_table, flat_snapshot_id)
            if isinstance(planned, MartResult):
                results[spec.name] = planned
            else:
                plans.append(planned)
        durations["plan"] = durations.get("plan", 0) + _ms(step)
        if not plans:
            break
        step = time.perf_counter()
        flat_rows, from_memory = gold_input_rows(flat_table, flat_snapshot_id)
        durations["read_review_flat"] = durations.get("read_review_flat", 0) + _ms(step)
        done, conflicts = _refresh_planned(plans, flat_rows, flat_snapshot_id, now, durations)
        results.update(done)
        if not conflicts:
            break
        if attempt == COMMIT_ATTEMPTS:
            names = ", ".join(plan.spec.name for plan in conflicts)
            raise CommitFailedException(f"gold mart(s) {names}: other writers committed first {attempt} times")
        todo = [plan.spec for plan in conflicts]

    durations["total"] = _ms(start)
    ordered = {spec.name: results[spec.name] for spec in specs}
    result = GoldResult(marts=ordered, review_flat_snapshot_id=flat_snapshot_id, durations_ms=durations)
    result.metadata = {
        "review_flat_snapshot_id": str(flat_snapshot_id),
        "marts_refreshed": sum(r.status != "up-to-date" for r in ordered.values()),
        "rows_written": sum(r.rows_written for r in ordered.values()),
        "review_flat_from_memory": from_memory,  # built by this process: not read back
        "duration_ms": durations["total"],
    }
    return result


def _mart_result(spec, table, status, months, rows_written, source_id, started) -> MartResult:
    snapshot = table.current_snapshot()
    result = MartResult(
        name=spec.name,
        status=status,
        affected_months=months,
        rows_written=rows_written,
        row_count=_total_records(table),
        snapshot_id=snapshot.snapshot_id if snapshot else None,
        source_snapshot_id=source_id,
        duration_ms=_ms(started),
    )
    result.metadata = {
        "dagster/row_count": result.row_count,
        "status": status,
        "rows_written": rows_written,
        "affected_months": len(months),
        "affected_months_list": _label(months),
        "snapshot_id": str(result.snapshot_id) if result.snapshot_id is not None else "",
        "review_flat_snapshot_id": str(source_id),
        "duration_ms": result.duration_ms,
    }
    return result
