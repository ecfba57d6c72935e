"""bronze/<table>: typed, masked Parquet per raw file; the control-table sensor that feeds it."""


from datetime import datetime, timedelta, timezone

import dagster as dg

from datamaster_assets.contracts import Contract, load_contracts
from datamaster_assets.defs.compute import BronzeCompute, ItemOutcome
from datamaster_assets.defs.raw import raw_key
from datamaster_assets.defs.resources import LakeResource
from datamaster_assets.ingest.masking import PII_NOTE
from datamaster_assets.lake.batching import plan_batches
from datamaster_assets.lake.landing import file_format_of
from datamaster_assets.lake.ledger import Layer, LedgerItem, Status

BRONZE_GROUP = "bronze"


def bronze_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["bronze", table])


def op_name(key: dg.AssetKey) -> str:
    return "__".join(key.path)


class BronzeRunConfig(dg.Config):
    """Ledger items to process; empty means every claimable raw file of the table."""

    control_ids: list[str] = []


def item_notes(metadata: dict) -> list[str]:
    """A processed item's notes (extra/missing columns, possible PII, ...), which the worker's
    metadata carries newline-joined."""
    return str(metadata.get("notes") or "").splitlines()


def bronze_metadata(outcomes: list[ItemOutcome]) -> dict:
    """One materialization's metadata for a batch of processed files."""
    done = [o.metadata for o in outcomes if o.status == "success"]
    failed = [o for o in outcomes if o.status != "success"]
    metadata = {
        "dagster/row_count": sum(m.get("accepted", 0) for m in done),
        "files_processed": len(done),
        "files_failed": len(failed),
        "records_read": sum(m.get("records_read", 0) for m in done),
        "records_rejected": sum(m.get("rejected", 0) for m in done),
        "control_records_skipped": sum(m.get("control_records", 0) for m in done),
        "output_keys": dg.MetadataValue.md("\n".join(f"- `{m['output_key']}`" for m in done if m.get("output_key")) or "none"),
        "duration_ms": sum(int(o.metadata.get("duration_ms") or 0) for o in outcomes),
        "compute_targets": ", ".join(sorted({o.compute_target for o in outcomes})) or "none",
    }
    noted = [(m.get("control_id"), note) for m in done for note in item_notes(m)]
    if noted:  # the PII detector reports here: it never masks or blocks, so it must be seen
        metadata["notes"] = dg.MetadataValue.md("\n".join(f"- `{cid}`: {note}" for cid, note in noted))
    if failed:
        metadata["failures"] = dg.MetadataValue.md(
            "\n".join(f"- `{o.control_id}` **{o.status}**: {o.error_message}" for o in failed)
        )
    return metadata


def reject_rates(outcomes: list[ItemOutcome]) -> dict[str, float]:
    """rejected / read per processed file (control id) that read any record."""
    return {o.control_id: o.metadata.get("rejected", 0) / o.metadata["records_read"]
            for o in outcomes if o.status == "success" and o.metadata.get("records_read")}


def bronze_check_results(outcomes: list[ItemOutcome], reject_rate_threshold: float) -> list[dg.AssetCheckResult]:
    done = [o.metadata for o in outcomes if o.status == "success"]
    unbalanced = [m["control_id"] for m in done if m.get("accepted", 0) + m.get("rejected", 0) != m.get("records_read", 0)]
    rates = reject_rates(outcomes)
    too_many = [cid for cid, rate in rates.items() if rate > reject_rate_threshold]
    return [
        dg.AssetCheckResult(
            check_name="counts_reconcile",
            passed=not unbalanced,
            metadata={"files_checked": len(done), "unbalanced": ", ".join(unbalanced) or "none"},
        ),
        dg.AssetCheckResult(
            check_name="reject_rate",
            passed=not too_many,
            metadata={
                "threshold": reject_rate_threshold,
                "worst_rate": max(rates.values(), default=0.0),
                "over_threshold": ", ".join(too_many) or "none",
            },
        ),
    ]


def hold_files_over_reject_rate(lake, outcomes: list[ItemOutcome], threshold: float, *, owner: str, log) -> list[str]:
    """Quarantine the silver item of every file whose reject rate is over the threshold, so its
    accepted rows stay out of silver in later runs too (the blocking ``reject_rate`` check only
    stops the run it fails in). ``datamaster status`` lists the item with the rate and the rejects
    key; ``datamaster requeue <id>`` is the person's decision to merge the accepted rows anyway."""
    held = []
    rates = reject_rates(outcomes)
    for o in outcomes:
        m, rate = o.metadata, rates.get(o.control_id, 0.0)
        if rate <= threshold:
            continue
        item = lake.ledger.get(o.control_id)
        silver_id = (item.stats or {}).get("silver_control_id") if item is not None else None
        message = (f"{item.object_key}: {m.get('rejected', 0):,} of {m['records_read']:,} records rejected "
                   f"({rate:.1%} > DATAMASTER_REJECT_RATE_THRESHOLD {threshold:g}), rejects in "
                   f"{m.get('rejects_key') or '-'}; held out of silver: `datamaster requeue {silver_id}` merges "
                   f"its accepted rows")
        if silver_id and quarantine(lake, silver_id, owner, message):
            log(message)
            held.append(silver_id)
    return held


def quarantine(service, control_id: str, owner: str, reason: str) -> bool:
    """Quarantine an item nobody holds, with ``reason``; False when it cannot be claimed."""
    if service.ledger.claim(control_id, owner, service.settings.lease_seconds) is None:
        return False
    service.ledger.fail(control_id, owner, reason, permanent=True)
    return True


def make_bronze_asset(contract: Contract, reject_rate_threshold: float) -> dg.AssetsDefinition:
    table = contract.name
    key = bronze_key(table)

    @dg.asset(
        key=key,
        deps=[raw_key(table)],
        group_name=BRONZE_GROUP,
        kinds={"parquet"},
        pool="bronze",
        description=f"Typed, PII-masked zstd Parquet per raw {table} file, with lineage columns; "
        f"bad rows in rejects/{table}/.",
        check_specs=[
            dg.AssetCheckSpec("counts_reconcile", asset=key, blocking=True,
                              description="accepted + rejected = records read, for every file of the run"),
            dg.AssetCheckSpec("reject_rate", asset=key, blocking=True,
                              description=f"rejected / read at most {reject_rate_threshold:.0%} per file"),
        ],
    )
    def _bronze(
        context: dg.AssetExecutionContext, config: BronzeRunConfig, lake: LakeResource, bronze_compute: BronzeCompute
    ) -> dg.MaterializeResult:
        service = lake.open()
        items = (
            [service.ledger.get(cid) for cid in config.control_ids]
            if config.control_ids
            else service.ledger.claimable(Layer.BRONZE.value, table, limit=100_000)
        )
        outcomes = []
        for item in items:
            if item is None:
                context.log.error("a requested control id is not in the ledger")
                continue
            outcome = bronze_compute.run_item(context, item, asset_key=key.to_user_string(), lake=service)
            m = outcome.metadata
            if outcome.status == "skipped":
                context.log.info(f"{item.control_id}: claimed elsewhere, skipped")
                continue
            log = context.log.info if outcome.status == "success" else context.log.error
            log(f"{item.control_id} {outcome.status} on {outcome.compute_target}: read={m.get('records_read', 0)} "
                f"accepted={m.get('accepted', 0)} rejected={m.get('rejected', 0)} -> {m.get('output_key') or '-'}"
                + (f" ({outcome.error_message})" if outcome.error_message else ""))
            for note in item_notes(m) if outcome.status == "success" else []:
                (context.log.warning if note.startswith(PII_NOTE) else context.log.info)(f"{item.control_id}: {note}")
            outcomes.append(outcome)
        hold_files_over_reject_rate(service, outcomes, reject_rate_threshold,
                                    owner=f"dagster:{context.run_id}:{op_name(key)}:reject_rate", log=context.log.error)
        return dg.MaterializeResult(
            metadata=bronze_metadata(outcomes), check_results=bronze_check_results(outcomes, reject_rate_threshold)
        )

    return _bronze


def bronze_assets(reject_rate_threshold: float) -> list[dg.AssetsDefinition]:
    return [make_bronze_asset(c, reject_rate_threshold) for c in load_contracts().values()]


def _unprocessable_reason(item: LedgerItem) -> str | None:
    if item.table_name not in load_contracts():
        return (f"{item.object_key}: no contract for table {item.table_name!r} "
                f"(known: {', '.join(load_contracts())}); add a contract or move the file")
    if file_format_of(item.object_key) not in load_contracts()[item.table_name].formats:
        return (f"{item.object_key}: format {file_format_of(item.object_key)!r} is not accepted for "
                f"table {item.table_name!r} (expected {', '.join(load_contracts()[item.table_name].formats)})")
    return None


def quarantine_unprocessable(service, items: list[LedgerItem], warn) -> list[LedgerItem]:
    """Quarantine items no bronze asset can process (no contract, format not accepted) with a
    message naming the file; return the others."""
    runnable = []
    for item in items:
        reason = _unprocessable_reason(item)
        if reason is None:
            runnable.append(item)
            continue
        if quarantine(service, item.control_id, f"bronze_control:{item.control_id}:{item.attempt_count}", reason):
            warn(f"quarantined {item.control_id}: {reason}")
    return runnable


_ENDED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
_IN_FLIGHT = [s for s in dg.DagsterRunStatus if s not in _ENDED]


def held_by_live_runs(runs: list[tuple[datetime, set[str]]], live_leases: set[str], now: datetime,
                      lease_seconds: int) -> set[str]:
    """Control ids that bronze runs not yet ended will process: ``runs`` holds each such run's
    latest start (or queueing) time and its control ids. A run claims its files one by one, so
    the ones it has not reached still look claimable; batching them again would request a second,
    overlapping run every tick. A run counts as alive while one of its files is leased
    (``live_leases``) or it began less than a lease ago: a run whose worker died is in flight for
    Dagster for good (no run monitoring locally), so its files go back to batching a lease after."""
    fresh = now - timedelta(seconds=lease_seconds)
    return {cid for began, ids in runs if began > fresh or ids & live_leases for cid in ids}


def _utc(moment: datetime) -> datetime:
    """Dagster's run-storage timestamps are naive UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _in_flight_bronze_runs(instance: dg.DagsterInstance) -> list[tuple[datetime, set[str]]]:
    runs = []
    for record in instance.get_run_records(filters=dg.RunsFilter(job_name="bronze_job", statuses=_IN_FLIGHT)):
        ids = {cid for op in (record.dagster_run.run_config or {}).get("ops", {}).values()
               for cid in (op.get("config") or {}).get("control_ids") or []}
        began = _utc(record.create_timestamp)
        if record.start_time:
            began = max(began, datetime.fromtimestamp(record.start_time, timezone.utc))
        runs.append((began, ids))
    return runs


def _live_leases(service, now: datetime) -> set[str]:
    return {i.control_id for i in service.ledger.items(layer=Layer.BRONZE.value, status=Status.RUNNING)
            if i.lease_expires_at is not None and i.lease_expires_at > now}


def _instance_or_none(context: dg.SensorEvaluationContext) -> dg.DagsterInstance | None:
    try:
        return context.instance
    except dg.DagsterInvariantViolationError:  # a context built without one (unit tests)
        return None


# A batch whose runs keep ending before they claim anything (a resource that cannot start, a
# launcher that fails) is requested again at once the first time, then after a delay that doubles
# per generation up to an hour: a persistent failure costs a run an hour, not one every tick.
REQUEST_AGAIN_FIRST_DELAY = timedelta(minutes=1)
REQUEST_AGAIN_MAX_DELAY = timedelta(hours=1)


def request_again_delay(generation: int) -> timedelta:
    """How long after the previous generation's run ended generation ``generation`` (1, 2, ...) of
    a batch's run key may be requested."""
    if generation <= 1:
        return timedelta(0)
    return min(REQUEST_AGAIN_FIRST_DELAY * 2 ** (generation - 2), REQUEST_AGAIN_MAX_DELAY)


def _live_run_key(instance: dg.DagsterInstance | None, key: str, now: datetime, warn) -> str | None:
    """``key``, or a later generation of it when a run under it already ended: the batch's items are
    still claimable at the same attempts, so that run never claimed them (canceled while queued,
    failed before the asset body ran), and Dagster never starts a second run for a used key.
    None while the next generation waits out its ``request_again_delay``."""
    if instance is None:
        return key
    generation = 0
    ended = None
    while True:
        candidate = key if generation == 0 else f"{key}.g{generation}"
        records = instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/run_key": candidate}), limit=1)
        if records and records[0].dagster_run.status not in _ENDED:
            return candidate  # in flight: requesting it again is a no-op
        if not records:
            break
        ended = records[0]
        generation += 1
    if ended is None:
        return candidate
    ended_at = (datetime.fromtimestamp(ended.end_time, timezone.utc) if ended.end_time
                else _utc(ended.update_timestamp))
    due = ended_at + request_again_delay(generation)
    run = ended.dagster_run
    if generation > 1 or due > now:
        warn(f"{generation} run(s) of batch {key} ended without claiming its files (last: {run.run_id}, "
             f"{run.status.value}); " + ("requesting it again" if due <= now else f"next request after {due:%H:%M:%S} UTC"))
    return candidate if due <= now else None


bronze_job = dg.define_asset_job(
    "bronze_job", selection=dg.AssetSelection.groups(BRONZE_GROUP), tags={"datamaster/layer": "bronze"}
)


@dg.sensor(
    name="bronze_control_sensor",
    job=bronze_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reads claimable bronze items from the control ledger and requests one bronze run per "
    "bounded batch per table (run_key from the batch's items and attempts).",
)
def bronze_control_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    service = lake.open()
    settings = service.settings
    claimable = service.ledger.claimable(Layer.BRONZE.value, limit=10 * settings.batch_max_files)
    runnable = quarantine_unprocessable(service, claimable, context.log.warning)
    instance = _instance_or_none(context)
    in_flight = _in_flight_bronze_runs(instance) if instance is not None and runnable else []
    now = datetime.now(timezone.utc)
    if in_flight:
        held = held_by_live_runs(in_flight, _live_leases(service, now), now, settings.lease_seconds)
        runnable = [item for item in runnable if item.control_id not in held]
    batches = plan_batches(runnable, max_files=settings.batch_max_files, max_bytes=settings.batch_max_bytes)
    keyed = [(batch, _live_run_key(instance, batch.run_key, now, context.log.warning)) for batch in batches]
    requests = [
        dg.RunRequest(
            run_key=run_key,
            asset_selection=[bronze_key(batch.table_name)],
            run_config={"ops": {op_name(bronze_key(batch.table_name)): {"config": {"control_ids": batch.control_ids}}}},
            tags={"datamaster/layer": "bronze", "datamaster/table": batch.table_name,
                  "datamaster/files": str(len(batch.items))},
        )
        for batch, run_key in keyed
        if run_key is not None
    ]
    if not requests:
        waiting = len(keyed) - len(requests)
        return dg.SensorResult(skip_reason=dg.SkipReason(
            f"{waiting} batch(es) waiting to be requested again" if waiting else "no claimable bronze items"))
    return dg.SensorResult(run_requests=requests)
