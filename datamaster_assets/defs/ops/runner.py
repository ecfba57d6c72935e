"""`datamaster run`: process everything pending now, through the Dagster instance in DATAMASTER_HOME."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from datamaster_assets.defs.bronze import quarantine_unprocessable
from datamaster_assets.defs.ops.instance import ensure_dagster_home
from datamaster_assets.lake.factory import open_lake
from datamaster_assets.lake.landing import LandingCursor, register_new_objects
from datamaster_assets.lake.ledger import Layer, Status
from datamaster_assets.settings import Settings

PIPELINE_JOB = "medallion_job"
log = logging.getLogger(__name__)


@dataclass
class PipelineReport:
    run_id: str
    success: bool
    newly_registered: int
    materializations: dict[str, dict[str, Any]] = field(default_factory=dict)  # asset path -> metadata
    failed_checks: list[str] = field(default_factory=list)
    failed_steps: list[str] = field(default_factory=list)
    failed_items: list[str] = field(default_factory=list)  # ledger items this run left in error/quarantined
    # Items another worker still holds (a live lease): not processed by this run, not failed either.
    # A crashed worker's files wait here until its lease expires; the next run then takes them.
    held_elsewhere: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return self.failed_steps + self.failed_checks + self.failed_items

    @property
    def ok(self) -> bool:
        return self.success and not self.failures


def _failed_item_ids(lake) -> dict[str, tuple[str, int]]:
    """Failed items with their (status, attempts): an item already failed before the run that this
    run tried again (attempts went up) and that failed again is a failure of this run too."""
    return {
        i.control_id: (i.status.value, i.attempt_count)
        for status in (Status.ERROR, Status.QUARANTINED)
        for i in lake.ledger.items(status=status)
    }


def _root_cause(error) -> str:
    """The innermost cause's message: Dagster wraps the asset's exception in
    DagsterExecutionStepExecutionError, whose own message names only the op."""
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message.strip() if error is not None else ""


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)


def run_pipeline(settings: Settings | None = None, *, log_level: str = "INFO") -> PipelineReport:
    settings = settings or Settings.from_env()
    ensure_dagster_home(settings)
    from datamaster_assets.definitions import build_definitions  # after DAGSTER_HOME is set

    defs = build_definitions(settings)
    lake = open_lake(settings)
    failed_before = _failed_item_ids(lake)
    # A fresh cursor means a full listing: registration is idempotent, so this only adds what's new.
    landing = register_new_objects(settings, lake.raw, lake.ledger, LandingCursor())
    quarantine_unprocessable(lake, lake.ledger.claimable(Layer.BRONZE.value, limit=100_000), log.warning)
    instance = dg.DagsterInstance.get()
    job = defs.resolve_job_def(PIPELINE_JOB)
    result = job.execute_in_process(
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        instance=instance,
        raise_on_error=False,
        tags={"datamaster/trigger": "cli"},
    )

    report = PipelineReport(run_id=result.run_id, success=result.success, newly_registered=len(landing.registered))
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        report.materializations["/".join(mat.asset_key.path)] = {k: _plain(v) for k, v in mat.metadata.items()}
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            if not evaluation.passed:
                details = ", ".join(f"{k}={_plain(v)}" for k, v in (evaluation.metadata or {}).items())
                report.failed_checks.append(
                    f"check {'/'.join(evaluation.asset_key.path)}:{evaluation.check_name} failed"
                    + (f" ({details})" if details else "")
                )
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = event.event_specific_data.error
            report.failed_steps.append(f"step {event.step_key} failed: {_root_cause(error)}")
    for item in lake.ledger.items(status=Status.RUNNING):
        until = f"{item.lease_expires_at:%Y-%m-%d %H:%M:%S} UTC" if item.lease_expires_at else "its lease expires"
        report.held_elsewhere.append(f"{item.layer} {item.table_name} {item.object_key}: held by {item.lease_owner} "
                                     f"until {until} (attempt {item.attempt_count})")
    failed_after = _failed_item_ids(lake)
    for control_id in sorted(c for c, state in failed_after.items() if failed_before.get(c) != state):
        item = lake.ledger.get(control_id)
        report.failed_items.append(f"{item.layer} {item.table_name} {item.object_key} {item.status.value}: {item.error_message}")
    return report
