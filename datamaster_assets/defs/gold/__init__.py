"""gold/<mart>: monthly marts over review_flat, refreshed for affected months after silver."""


import dagster as dg

from datamaster_assets.defs.compute import SparkCompute
from datamaster_assets.defs.resources import LakeResource, dagster_metadata
from datamaster_assets.defs.silver import REVIEW_FLAT, silver_job
from datamaster_assets.lake.catalog import read_table
from datamaster_assets.transform.gold import MARTS, gold_checks
from datamaster_assets.workers.gold import pending_gold_work, refresh_gold

GOLD_GROUP = "gold"


def gold_key(mart: str) -> dg.AssetKey:
    return dg.AssetKey(["gold", mart])


@dg.multi_asset(
    specs=[
        dg.AssetSpec(gold_key(name), deps=[REVIEW_FLAT], group_name=GOLD_GROUP, kinds={"iceberg"},
                     description=spec.description)
        for name, spec in MARTS.items()
    ],
    can_subset=True,
    pool="gold",
)
def gold_marts(context: dg.AssetExecutionContext, lake: LakeResource, spark_compute: SparkCompute):
    marts = sorted(key.path[-1] for key in context.selected_asset_keys)
    service = lake.open()
    months, rows = pending_gold_work(service, marts)
    if spark_compute.use_emr(rows):
        # Heavy refresh: the Spark job (same semantics, same snapshot bookkeeping) on EMR Serverless.
        context.log.info(f"{rows:,} review_flat rows to recompute: refreshing gold with Spark on EMR Serverless")
        namespaces = service.settings.namespaces
        args = ["--mode", "iceberg", "--silver-namespace", namespaces["silver"], "--gold-namespace", namespaces["gold"]]
        args += ["--all-months"] if months is None else ["--months", ",".join(f"{y}-{m:02d}" for y, m in sorted(months))]
        for mart in marts:
            args += ["--mart", mart]
        yield from spark_compute.launch(context, "gold_marts", args).get_results()
        return
    result = refresh_gold(service, marts)
    for name in marts:
        yield dg.MaterializeResult(asset_key=gold_key(name), metadata=dagster_metadata(result.marts[name].metadata))


CHECK_NAMES = ("totals_reconcile", "averages_within_0_5")


@dg.multi_asset_check(
    specs=[dg.AssetCheckSpec(check, asset=gold_key(name)) for name in MARTS for check in CHECK_NAMES],
    name="gold_mart_checks",
    can_subset=True,
)
def gold_mart_checks(context: dg.AssetCheckExecutionContext, lake: LakeResource):
    service = lake.open()
    flat = read_table(service, "silver", "review_flat")
    outcomes: dict[str, dict] = {}
    for check_key in sorted(context.selected_asset_check_keys, key=lambda k: (k.asset_key.path, k.name)):
        mart = check_key.asset_key.path[-1]
        if mart not in outcomes:
            outcomes[mart] = gold_checks(mart, read_table(service, "gold", mart), flat)
        outcome = outcomes[mart][check_key.name]
        yield dg.AssetCheckResult(
            asset_key=check_key.asset_key, check_name=check_key.name, passed=outcome.passed,
            description=outcome.description, metadata=outcome.metadata,
        )


gold_job = dg.define_asset_job(
    "gold_job", selection=dg.AssetSelection.groups(GOLD_GROUP), tags={"datamaster/layer": "gold"}
)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[silver_job],
    request_job=gold_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    name="gold_after_silver",
    description="Refreshes the gold marts whenever a silver run succeeds.",
)
def gold_after_silver(context: dg.RunStatusSensorContext):
    return dg.RunRequest(run_key=f"gold-after-{context.dagster_run.run_id}")
