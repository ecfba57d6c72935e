"""silver/<table> (CDC merged Iceberg tables), silver/review_flat, their checks and the daily schedule."""


import dagster as dg

from datamaster_assets.contracts import Contract, load_contracts
from datamaster_assets.defs.bronze import bronze_key
from datamaster_assets.defs.compute import SparkCompute
from datamaster_assets.defs.resources import LakeResource, dagster_metadata
from datamaster_assets.lake.catalog import read_table
from datamaster_assets.transform import checks as silver_checks
from datamaster_assets.workers.gold import GoldInputMissing, build_review_flat_table
from datamaster_assets.workers.silver import apply_pending_silver, apply_pending_silver_remotely, pending_change_rows

SILVER_GROUP = "silver"
REVIEW_FLAT = dg.AssetKey(["silver", "review_flat"])


def silver_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["silver", table])


def _check_result(outcome: silver_checks.CheckOutcome, name: str, key: dg.AssetKey) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=key, check_name=name, passed=outcome.passed, description=outcome.description,
        metadata=outcome.metadata,
    )


def make_silver_asset(contract: Contract) -> dg.AssetsDefinition:
    table = contract.name

    @dg.asset(
        key=silver_key(table),
        deps=[bronze_key(table)],
        group_name=SILVER_GROUP,
        kinds={"iceberg"},
        pool="silver",
        description=f"Current state of {table}: pending bronze changes merged in order (upsert, soft delete), "
        "copy-on-write in one Iceberg commit.",
    )
    def _silver(
        context: dg.AssetExecutionContext, lake: LakeResource, spark_compute: SparkCompute
    ) -> dg.MaterializeResult:
        service = lake.open()
        owner = f"dagster:{context.run_id}:silver/{table}"
        change_rows = pending_change_rows(service, table)
        if spark_compute.use_emr(change_rows):
            context.log.info(f"{change_rows:,} pending change rows: merging with Spark on EMR Serverless")
            namespace = service.settings.namespaces["silver"]

            def run_merge(manifest_uri: str) -> dict:
                return spark_compute.run_job(context, "silver_merge", [
                    "--table", table, "--manifest", manifest_uri, "--mode", "iceberg", "--namespace", namespace])

            result = apply_pending_silver_remotely(service, table, owner=owner, run_merge=run_merge)
        else:
            result = apply_pending_silver(service, table, owner=owner)
        for failure in result.failures:
            context.log.error(failure)
        return dg.MaterializeResult(metadata=dagster_metadata(result.metadata))

    return _silver


def make_silver_checks(contract: Contract) -> dg.AssetChecksDefinition:
    table = contract.name
    key = silver_key(table)
    names = ["unique_live_keys", "required_not_null", "values_within_rules"]
    if contract.references:
        names.append("references_resolve")

    @dg.multi_asset_check(
        # references_resolve reads the referenced silver tables: it must run after their merges in
        # the same run (the multiprocess executor otherwise starts it as soon as this table is done)
        specs=[dg.AssetCheckSpec(n, asset=key, blocking=True,
                                 additional_deps=[silver_key(t) for t, _ in contract.references.values()]
                                 if n == "references_resolve" else None)
               for n in names],
        name=f"silver_{table}_checks",
    )
    def _checks(lake: LakeResource):
        service = lake.open()
        current = read_table(service, "silver", table)
        outcomes = silver_checks.silver_table_checks(
            current, contract,
            referenced={t: read_table(service, "silver", t) for t, _ in contract.references.values()},
        )
        for name in names:
            yield _check_result(outcomes[name], name, key)

    return _checks


@dg.asset(
    key=REVIEW_FLAT,
    deps=[silver_key(t) for t in ("review", "beer", "brewery", "profile")],
    group_name=SILVER_GROUP,
    kinds={"iceberg"},
    pool="silver",
    description="Live reviews left-joined to beer, brewery and profile (deleted reviews excluded).",
    output_required=False,  # nothing to build before the silver tables exist; gold is then skipped
)
def review_flat(context: dg.AssetExecutionContext, lake: LakeResource):
    try:
        result = build_review_flat_table(lake.open())
    except GoldInputMissing as exc:  # an empty lake, or one where not every joined table has landed yet
        context.log.info(f"review_flat: nothing to build yet ({exc})")
        return
    context.log.info(f"review_flat: {len(result.affected_months)} month(s) affected since the last build")
    yield dg.MaterializeResult(metadata=dagster_metadata(result.metadata))


silver_assets = [make_silver_asset(c) for c in load_contracts().values()] + [review_flat]
silver_asset_checks = [make_silver_checks(c) for c in load_contracts().values()]

silver_job = dg.define_asset_job(
    "silver_job", selection=dg.AssetSelection.groups(SILVER_GROUP), tags={"datamaster/layer": "silver"}
)
silver_daily_schedule = dg.ScheduleDefinition(
    name="silver_daily",
    job=silver_job,
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Merge the day's bronze changes into silver and rebuild review_flat (06:00 UTC, as the source system).",
)
