"""Lake maintenance: expire old Iceberg snapshots and delete orphan files weekly (docs/maintenance.md).

Each table's outcome is recorded as an observation of its asset (silver/<table>, gold/<mart>), so
the asset's page shows when snapshots were expired and how many files went.
"""

import dagster as dg

from datamaster_assets.defs.resources import LakeResource, dagster_metadata
from datamaster_assets.workers.maintenance import maintain_lake


@dg.op(description="Expire old snapshots of every silver and gold Iceberg table, delete the files only they used "
                   "and the files no metadata refers to.")
def expire_snapshots(context: dg.OpExecutionContext, lake: LakeResource) -> None:
    report = maintain_lake(lake.open())
    for (layer, name), result in report.tables.items():
        orphans = report.orphans.get((layer, name))
        metadata = {**result.metadata, **(orphans.metadata if orphans is not None else {})}
        context.log_event(dg.AssetObservation(asset_key=dg.AssetKey([layer, name]), metadata=dagster_metadata(metadata)))
        if result.expired:
            context.log.info(f"{result.table}: {len(result.expired)} snapshot(s) expired, "
                             f"{result.files_deleted} file(s) deleted ({result.bytes_deleted:,} bytes)")
        if orphans is not None and orphans.files_deleted:
            context.log.info(f"{result.table}: {orphans.files_deleted} orphan file(s) deleted "
                             f"({orphans.bytes_deleted:,} bytes)")
    if not report.ok:
        raise dg.Failure(description="lake maintenance left work undone:\n" + "\n".join(report.problems),
                         metadata=dagster_metadata(report.metadata))


@dg.job(description="Expire Iceberg snapshots older than DATAMASTER_SNAPSHOT_MAX_AGE_DAYS (default 7), "
                    "keeping the newest DATAMASTER_SNAPSHOT_RETAIN_LAST (default 5) of each table; delete "
                    "unreferenced files older than DATAMASTER_ORPHAN_MIN_AGE_DAYS (default 3).",
        tags={"datamaster/layer": "maintenance"})
def lake_maintenance_job():
    expire_snapshots()


lake_maintenance_schedule = dg.ScheduleDefinition(
    name="lake_maintenance_weekly",
    job=lake_maintenance_job,
    cron_schedule="0 3 * * 0",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Expire old Iceberg snapshots and delete orphan files every Sunday at 03:00 UTC.",
)
