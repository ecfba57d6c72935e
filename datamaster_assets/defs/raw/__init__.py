"""raw/<table>: files landed by producers (external assets), and the sensor that registers them."""


from collections import Counter

import dagster as dg

from datamaster_assets.contracts import load_contracts
from datamaster_assets.defs.resources import LakeResource
from datamaster_assets.lake.landing import LandingCursor, register_new_objects

RAW_GROUP = "raw"


def raw_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["raw", table])


raw_specs = [
    dg.AssetSpec(
        raw_key(c.name),
        group_name=RAW_GROUP,
        description=f"Raw {c.name} files as landed ({', '.join(c.formats)}, gzip) under raw/{c.name}/. "
        + c.description,
        kinds={"s3"},
        metadata={"formats": ", ".join(c.formats), "primary_key": ", ".join(c.primary_key)},
    )
    for c in load_contracts().values()
]


@dg.sensor(
    name="raw_landing_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Lists new objects under raw/<table>/ past its cursor and registers them in the ledger "
    "(a full listing only every DATAMASTER_LANDING_RECONCILE_EVERY ticks).",
)
def raw_landing_sensor(context: dg.SensorEvaluationContext, lake: LakeResource) -> dg.SensorResult:
    service = lake.open()
    result = register_new_objects(service.settings, service.raw, service.ledger, LandingCursor.parse(context.cursor))
    per_table = Counter(item.table_name for item in result.registered)
    events = [
        dg.AssetMaterialization(
            asset_key=raw_key(table),
            description=f"{count} new raw file(s) registered",
            metadata={
                "files": count,
                "keys": dg.MetadataValue.md(
                    "\n".join(f"- `{i.object_key}`" for i in result.registered if i.table_name == table)[:4000]
                ),
            },
        )
        for table, count in sorted(per_table.items())
        if table in load_contracts()
    ]
    context.log.info(
        f"registered {len(result.registered)} new object(s), {result.already_known} already known"
        + (" (full reconcile listing)" if result.reconciled else "")
    )
    return dg.SensorResult(asset_events=events, cursor=result.cursor.serialize())

