"""Dagster entry point (workspace.yaml): the asset graph, sensors, schedules and checks, with the
resources of the environment selected by DATAMASTER_ENV."""

from __future__ import annotations

import dagster as dg

from datamaster_assets.defs import bronze, gold, raw, silver
from datamaster_assets.defs.compute import compute_resources
from datamaster_assets.defs.ops.maintenance import lake_maintenance_job, lake_maintenance_schedule
from datamaster_assets.defs.ops.runner import PIPELINE_JOB
from datamaster_assets.defs.resources import LakeResource
from datamaster_assets.runtime import tune_process
from datamaster_assets.settings import Settings


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    medallion_job = dg.define_asset_job(
        PIPELINE_JOB,
        selection=dg.AssetSelection.groups(bronze.BRONZE_GROUP, silver.SILVER_GROUP, gold.GOLD_GROUP),
        description="Everything pending now: bronze, silver, review_flat, gold (what `datamaster run` launches).",
        tags={"datamaster/layer": "all"},
    )
    lake = (
        LakeResource(home=str(settings.home), pii_key=dg.EnvVar("DATAMASTER_PII_KEY"))
        if settings.env == "aws"
        else LakeResource(home=str(settings.home))
    )
    return dg.Definitions(
        assets=[*raw.raw_specs, *bronze.bronze_assets(settings.reject_rate_threshold), *silver.silver_assets,
                gold.gold_marts],
        asset_checks=[*silver.silver_asset_checks, gold.gold_mart_checks],
        jobs=[medallion_job, bronze.bronze_job, silver.silver_job, gold.gold_job, lake_maintenance_job],
        sensors=[raw.raw_landing_sensor, bronze.bronze_control_sensor, gold.gold_after_silver],
        schedules=[silver.silver_daily_schedule, lake_maintenance_schedule],
        resources={"lake": lake, **compute_resources(settings)},
    )


tune_process()  # the code server and every run/step process Dagster starts import this module
defs = build_definitions()
