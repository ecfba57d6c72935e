"""End to end on a temporary DATAMASTER_HOME: land -> sensors -> bronze -> silver -> gold."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
import pytest

from datamaster_assets.defs.ops.instance import ensure_dagster_home
from datamaster_assets.defs.ops.runner import run_pipeline
from datamaster_assets.lake.catalog import read_table
from datamaster_assets.lake.factory import open_lake
from datamaster_assets.lake.landing import LandingCursor, land_file, register_new_objects
from datamaster_assets.lake.ledger import Status
from datamaster_assets.seed import seed_raw
from datamaster_assets.settings import Settings

pytestmark = pytest.mark.slow
SEED_TIME = datetime(2026, 11, 1, 6, 0, tzinfo=timezone.utc)


@pytest.fixture
def settings(dm_home: Path) -> Settings:
    s = Settings.from_env()
    ensure_dagster_home(s)
    return s


@pytest.fixture
def defs(settings):
    from datamaster_assets.definitions import build_definitions

    return build_definitions(settings)


REVIEW_HEADER = (b"review_id,brewery_id,beer_id,profile_id,review_overall,review_aroma,review_appearance,"
                 b"review_palate,review_taste,review_time\n")


def land_review_csv(lake, path: Path, rows: list[str], landed_at: datetime) -> str:
    """Write ``rows`` (CSV lines without the header) as a gzip review extract and land it."""
    path.write_bytes(gzip.compress(REVIEW_HEADER + "".join(f"{row}\n" for row in rows).encode()))
    return land_file(lake.raw, "review", path, landed_at).key


def _statuses(lake, layer: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for (item_layer, _table, status), n in lake.ledger.counts().items():
        if item_layer == layer:
            out[status] = out.get(status, 0) + n
    return out


def test_sensors_register_batch_and_run_bronze(settings, defs):
    lake = open_lake(settings)
    summary = seed_raw(lake, reviews=3000, changes=False, now=SEED_TIME)
    landed = sum(len(t.keys) for t in summary.tables.values())
    instance = dg.DagsterInstance.get()
    resources = {"lake": defs.resources["lake"]}

    landing = defs.get_sensor_def("raw_landing_sensor")
    first = landing(dg.build_sensor_context(instance=instance, resources=resources))
    assert _statuses(lake, "bronze") == {"pending": landed}
    assert {tuple(e.asset_key.path) for e in first.asset_events} == {
        ("raw", "brewery"), ("raw", "beer"), ("raw", "profile"), ("raw", "review")}
    # the next tick starts past the cursor: nothing new, nothing re-registered
    second = landing(dg.build_sensor_context(instance=instance, cursor=first.cursor, resources=resources))
    assert second.asset_events == [] and _statuses(lake, "bronze") == {"pending": landed}

    control = defs.get_sensor_def("bronze_control_sensor")
    requests = control(dg.build_sensor_context(instance=instance, resources=resources)).run_requests
    repeated = control(dg.build_sensor_context(instance=instance, resources=resources)).run_requests
    assert [r.run_key for r in requests] == [r.run_key for r in repeated]  # a repeated tick asks for nothing new
    assert sorted(r.tags["datamaster/table"] for r in requests) == ["beer", "brewery", "profile", "review"]
    assert sum(len(r.run_config["ops"][f"bronze__{r.tags['datamaster/table']}"]["config"]["control_ids"])
               for r in requests) == landed

    job = defs.resolve_job_def("bronze_job")
    for request in requests:
        result = job.execute_in_process(
            run_config=request.run_config, asset_selection=request.asset_selection, instance=instance
        )
        assert result.success
    assert _statuses(lake, "bronze") == {"success": landed}
    assert _statuses(lake, "silver") == {"pending": landed}  # one silver item per bronze file
    after = control(dg.build_sensor_context(instance=instance, resources=resources))
    assert not after.run_requests
    review_files = list((settings.objects_dir / "bronze" / "review").rglob("*.parquet"))
    assert len(review_files) == len(summary.tables["review"].keys)


def test_a_tick_while_a_batch_is_mid_run_does_not_request_its_remaining_files_again(settings, defs, tmp_path):
    # the run claims its files one by one, so those it has not reached still look claimable; each
    # tick used to request another, overlapping run for them under a new key
    from datamaster_assets.workers.bronze import process_bronze_item

    lake = open_lake(settings)
    for n in range(3):
        land_review_csv(lake, tmp_path / f"r{n}.csv.gz", [f"{100 + n},1,1,1,4,4,4,4,4,1200000000"],
                        datetime(2026, 11, 2, n, tzinfo=timezone.utc))
    instance = dg.DagsterInstance.get()
    resources = {"lake": defs.resources["lake"]}
    defs.get_sensor_def("raw_landing_sensor")(dg.build_sensor_context(instance=instance, resources=resources))
    control = defs.get_sensor_def("bronze_control_sensor")
    (request,) = control(dg.build_sensor_context(instance=instance, resources=resources)).run_requests
    instance.add_run(dg.DagsterRun(job_name="bronze_job", status=dg.DagsterRunStatus.STARTED,
                                   run_config=request.run_config, tags={**request.tags, "dagster/run_key": request.run_key}))
    first = request.run_config["ops"]["bronze__review"]["config"]["control_ids"][0]
    assert process_bronze_item(lake, first, owner="the-run").status == "success"

    again = control(dg.build_sensor_context(instance=instance, resources=resources))
    assert again.run_requests == []


def test_a_batch_whose_run_ended_before_claiming_is_requested_again(settings, defs, monkeypatch):
    from datamaster_assets.defs import bronze as bronze_defs

    """Dagster never starts a second run for a run key: a bronze run canceled while queued (or
    failed before its asset body ran) would otherwise leave its files pending for good."""
    lake = open_lake(settings)
    seed_raw(lake, reviews=200, changes=False, now=SEED_TIME)
    instance = dg.DagsterInstance.get()
    resources = {"lake": defs.resources["lake"]}
    landing, control = defs.get_sensor_def("raw_landing_sensor"), defs.get_sensor_def("bronze_control_sensor")
    landing(dg.build_sensor_context(instance=instance, resources=resources))

    def tick() -> list[str]:
        return sorted(r.run_key for r in control(dg.build_sensor_context(instance=instance, resources=resources)).run_requests)

    def record_run(run_key: str, status: dg.DagsterRunStatus) -> None:
        instance.add_run(dg.DagsterRun(job_name="bronze_job", status=status, tags={"dagster/run_key": run_key}))

    first = tick()
    for key in first:
        record_run(key, dg.DagsterRunStatus.CANCELED)
    second = tick()
    assert second == sorted(f"{key}.g1" for key in first)
    for key in second:
        record_run(key, dg.DagsterRunStatus.STARTED)  # not ended: the same key, deduplicated by Dagster
    assert tick() == second

    # runs that keep failing before they claim (a resource that cannot start): the next generation
    # waits a minute after the last one ended, not one every tick
    for key in second:
        instance.delete_run(instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": key}))[0].run_id)
        record_run(key, dg.DagsterRunStatus.FAILURE)
    waiting = control(dg.build_sensor_context(instance=instance, resources=resources))
    assert waiting.run_requests == []
    assert f"{len(first)} batch(es) waiting" in waiting.skip_reason.skip_message

    class MinuteLater(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + timedelta(minutes=1, seconds=5)

    monkeypatch.setattr(bronze_defs, "datetime", MinuteLater)
    assert tick() == sorted(f"{key}.g2" for key in first)


def test_a_file_failing_again_is_reported_by_every_run(settings):
    lake = open_lake(settings)
    seed_raw(lake, reviews=500, changes=False, now=SEED_TIME)
    assert run_pipeline(settings).ok
    key = land_review_csv(lake, settings.home / "extra.csv.gz", ["999001,1,1,1,4.0,4.0,4.0,4.0,4.0,1200000000"],
                          datetime(2026, 11, 2, tzinfo=timezone.utc))
    register_new_objects(settings, lake.raw, lake.ledger, LandingCursor())
    lake.raw.local_path(key).rename(settings.home / "aside.csv.gz")  # unreadable now: a retryable error

    outcomes = []
    for _ in range(4):
        report = run_pipeline(settings)
        outcomes.append((report.ok, [f.split(":", 1)[0] for f in report.failed_items]))
    assert outcomes[:3] == [(False, [f"bronze review {key} error"])] * 2 + [(False, [f"bronze review {key} quarantined"])]
    assert outcomes[3] == (True, [])  # nothing new failed: the quarantined file is not reported again


def test_a_file_another_worker_holds_is_reported_as_waiting(settings):
    lake = open_lake(settings)
    seed_raw(lake, reviews=200, changes=False, now=SEED_TIME)
    register_new_objects(settings, lake.raw, lake.ledger, LandingCursor())
    held = lake.ledger.items(status=Status.PENDING, table_name="review")[0]
    lake.ledger.claim(held.control_id, "worker-killed-mid-file", settings.lease_seconds)  # then dies
    report = run_pipeline(settings)
    assert report.ok  # nothing failed ...
    assert len(report.held_elsewhere) == 1  # ... but the file is not in silver yet, and the report says so
    assert held.object_key in report.held_elsewhere[0] and "worker-killed-mid-file" in report.held_elsewhere[0]


def test_a_failed_step_says_why(settings, monkeypatch):
    import datamaster_assets.defs.silver as silver_defs

    def disk_full(lake):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(silver_defs, "build_review_flat_table", disk_full)
    seed_raw(open_lake(settings), reviews=200, changes=False, now=SEED_TIME)
    report = run_pipeline(settings)
    assert not report.ok
    # the underlying error, not Dagster's wrapper around it
    assert any("silver__review_flat" in f and "OSError" in f and "No space left on device" in f
               for f in report.failed_steps), report.failed_steps


def test_run_applies_the_change_scenario_exactly_and_is_idempotent(settings):
    lake = open_lake(settings)
    summary = seed_raw(lake, reviews=4000, changes=True, now=SEED_TIME)
    report = run_pipeline(settings)
    assert report.ok, report.failures

    for table, scenario in summary.changes.tables.items():
        silver = read_table(lake, "silver", table)
        assert silver.num_rows == scenario.rows, table
        keys = silver.column(scenario.key_column).to_pylist()
        assert len(keys) == len(set(keys)), f"duplicate keys in silver.{table}"
        by_key = {row[scenario.key_column]: row for row in silver.to_pylist()}
        for key, expected in scenario.expected.items():
            row = by_key[key]
            assert (row["deleted_at"] is not None) == expected.deleted, (table, key)
            if not expected.deleted:
                assert row["updated_at"] == expected.change_ts, (table, key)
                for column, value in expected.values.items():
                    got = row[column]
                    if column == "review_time" and value is not None:
                        got = int(got.timestamp())
                    if column == "email" and value is not None:
                        assert got.split("@")[1] == value.split("@")[1] and got != value  # masked, domain kept
                        continue
                    assert got == value, (table, key, column)

    flat = read_table(lake, "silver", "review_flat")
    review = read_table(lake, "silver", "review")
    live_reviews = review.filter(pc.is_null(review["deleted_at"])).num_rows
    assert flat.num_rows == live_reviews
    assert report.materializations["silver/review"]["dagster/row_count"] == live_reviews
    styles = read_table(lake, "gold", "top_styles_by_popularity")
    assert pc.sum(styles["total_reviews"]).as_py() == live_reviews  # deleted reviews never count

    snapshots = {t: lake.catalog.load_table(f"silver.{t}").current_snapshot().snapshot_id
                 for t in ("review", "beer", "brewery", "profile")}
    again = run_pipeline(settings)
    assert again.ok and again.newly_registered == 0
    assert {t: lake.catalog.load_table(f"silver.{t}").current_snapshot().snapshot_id for t in snapshots} == snapshots

    # the same file landed again under another name: applied, but nothing changes
    original = summary.tables["review"].keys[-1]
    copy = settings.home / "copy.json.gz" if original.endswith(".json.gz") else settings.home / "copy.csv.gz"
    copy.write_bytes(lake.raw.read_bytes(original))
    land_file(lake.raw, "review", copy, datetime(2026, 11, 2, tzinfo=timezone.utc))
    third = run_pipeline(settings)
    assert third.ok and third.newly_registered == 1
    review_after = read_table(lake, "silver", "review")
    assert review_after.num_rows == review.num_rows
    assert review_after.filter(pc.is_null(review_after["deleted_at"])).num_rows == live_reviews


def test_a_bad_file_is_quarantined_while_the_others_succeed_and_can_be_requeued(settings, tmp_path):
    lake = open_lake(settings)
    seed_raw(lake, reviews=2000, changes=False, now=SEED_TIME)
    bad = tmp_path / "broken.csv.gz"
    bad.write_bytes(b"this is not gzip at all\n")
    land_file(lake.raw, "review", bad, datetime(2026, 11, 2, tzinfo=timezone.utc))
    truncated = tmp_path / "truncated.csv.gz"
    full = gzip.compress(REVIEW_HEADER + b"1,2,3,4,4.0,4,4,4,4,1200000000\n" * 500)
    truncated.write_bytes(full[: len(full) // 2])
    land_file(lake.raw, "review", truncated, datetime(2026, 11, 2, 0, 1, tzinfo=timezone.utc))
    lake.raw.put_bytes("raw/wine/20261102T000200000000Z-wine.csv.gz", gzip.compress(b"id\n1\n"))  # no contract

    report = run_pipeline(settings)
    assert not report.ok
    assert len(report.failed_items) == 3
    assert any("no contract for table 'wine'" in f for f in report.failed_items)
    assert any("broken.csv.gz" in f and "quarantined" in f for f in report.failed_items)
    assert any("truncated.csv.gz" in f for f in report.failed_items)
    quarantined = lake.ledger.items(status=Status.QUARANTINED, table_name="review")
    assert {i.object_key.rsplit("-", 1)[-1] for i in quarantined} == {"broken.csv.gz", "truncated.csv.gz"}
    assert all(i.error_message for i in quarantined)
    # the good files went all the way to gold
    assert read_table(lake, "silver", "review").num_rows == 2000
    assert report.materializations["gold/top_drinkers"]["dagster/row_count"] > 0

    requeued = lake.ledger.requeue(table_name="review")
    assert len(requeued) == 2 and all(i.status == Status.PENDING and i.attempt_count == 0 for i in requeued)


def test_a_failing_blocking_check_stops_gold(settings, tmp_path):
    lake = open_lake(settings)
    seed_raw(lake, reviews=2000, changes=False, now=SEED_TIME)
    land_review_csv(lake, tmp_path / "orphan.csv.gz", ["999999001,2,999999999,1,4.0,4.0,4.0,4.0,4.0,1200000000"],
                    datetime(2026, 11, 2, tzinfo=timezone.utc))

    report = run_pipeline(settings)
    assert not report.ok
    assert any("silver/review:references_resolve" in f for f in report.failed_checks)
    assert "silver/review" in report.materializations
    assert "silver/review_flat" not in report.materializations
    assert not any(asset.startswith("gold/") for asset in report.materializations)


def test_a_file_over_the_reject_rate_stays_out_of_silver_until_requeued(settings, tmp_path):
    lake = open_lake(settings)
    seed_raw(lake, reviews=2000, changes=False, now=SEED_TIME)
    assert run_pipeline(settings).ok
    land_review_csv(lake, tmp_path / "noisy.csv.gz", ["1,2,3,4,4.0,4.0,4.0,4.0,4.0,1200000000",
                                                       "2,2,3,4,9.0,4.0,4.0,4.0,4.0,1200000000"],
                    datetime(2026, 11, 2, tzinfo=timezone.utc))

    report = run_pipeline(settings)
    assert not report.ok
    assert any("bronze/review:reject_rate failed" in f and "worst_rate=0.5" in f for f in report.failed_checks)
    held = lake.ledger.items(layer="silver", status=Status.QUARANTINED)
    assert len(held) == 1 and "noisy.csv.gz: 1 of 2 records rejected" in held[0].error_message
    before = read_table(lake, "silver", "review")["updated_at"].to_pylist()

    assert run_pipeline(settings).ok  # a later run does not merge the held file
    assert read_table(lake, "silver", "review")["updated_at"].to_pylist() == before

    lake.ledger.requeue([held[0].control_id])  # a person's decision
    assert run_pipeline(settings).ok
    assert lake.ledger.get(held[0].control_id).status == Status.SUCCESS


def test_a_deleted_dimension_row_still_referenced_does_not_freeze_gold(settings, tmp_path):
    lake = open_lake(settings)
    seed_raw(lake, reviews=2000, changes=False, now=SEED_TIME)
    assert run_pipeline(settings).ok
    review = read_table(lake, "silver", "review")
    profile_id = review.column("profile_id")[0].as_py()
    referencing = pc.sum(pc.equal(review["profile_id"], profile_id)).as_py()
    delete = tmp_path / "profile-delete.json.gz"
    delete.write_bytes(gzip.compress(json.dumps({
        "data": {"profile_id": profile_id},
        "metadata": {"operation": "delete", "record-type": "data", "timestamp": "2026-11-03T00:00:00.000000Z"},
    }).encode() + b"\n"))
    land_file(lake.raw, "profile", delete, datetime(2026, 11, 3, tzinfo=timezone.utc))

    report = run_pipeline(settings)
    assert report.ok, (report.failures, report.failed_checks)
    flat = read_table(lake, "silver", "review_flat")
    kept = flat.filter(pc.equal(flat["profile_id"], profile_id))
    assert kept.num_rows == referencing and kept.column("profile_name").null_count == referencing
    drinkers = read_table(lake, "gold", "top_drinkers")
    theirs = drinkers.filter(pc.equal(drinkers["profile_id"], profile_id))
    assert pc.sum(theirs["total_reviews"]).as_py() == referencing  # still counted, now without a name
    assert theirs.column("profile_name").null_count == theirs.num_rows


def test_schedule_and_gold_after_silver_sensor(settings, defs):
    schedule = defs.get_schedule_def("silver_daily")
    assert schedule.cron_schedule == "0 6 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.job_name == "silver_job"

    lake = open_lake(settings)
    seed_raw(lake, reviews=1000, changes=False, now=SEED_TIME)
    instance = dg.DagsterInstance.get()
    assert run_pipeline(settings).ok
    silver_run = defs.resolve_job_def("silver_job").execute_in_process(instance=instance)
    assert silver_run.success
    sensor = defs.get_sensor_def("gold_after_silver")
    context = dg.build_run_status_sensor_context(
        sensor_name="gold_after_silver",
        dagster_instance=instance,
        dagster_run=silver_run.dagster_run,
        dagster_event=silver_run.get_run_success_event(),
    )
    request = sensor(context)
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == f"gold-after-{silver_run.run_id}"
    assert sensor.job_name == "gold_job"


def test_lake_maintenance_job_expires_snapshots_and_keeps_every_table_readable(settings, defs, monkeypatch):
    schedule = defs.get_schedule_def("lake_maintenance_weekly")
    assert schedule.cron_schedule == "0 3 * * 0" and schedule.job_name == "lake_maintenance_job"

    lake = open_lake(settings)
    seed_raw(lake, reviews=1000, changes=False, now=SEED_TIME)
    assert run_pipeline(settings).ok
    seed_raw(lake, reviews=1000, changes=True, now=SEED_TIME)  # the same extracts again, plus change files
    assert run_pipeline(settings).ok
    before = {name: read_table(lake, "silver", name).sort_by("review_id") for name in ("review", "review_flat")}
    snapshots = len(lake.catalog.load_table("silver.review").metadata.snapshots)
    assert snapshots > 1  # the load and the changes were separate commits

    monkeypatch.setenv("DATAMASTER_SNAPSHOT_MAX_AGE_DAYS", "0")
    monkeypatch.setenv("DATAMASTER_SNAPSHOT_RETAIN_LAST", "1")
    instance = dg.DagsterInstance.get()
    result = defs.resolve_job_def("lake_maintenance_job").execute_in_process(instance=instance)
    assert result.success
    observed = {
        tuple(e.asset_observation_data.asset_observation.asset_key.path):
            e.asset_observation_data.asset_observation.metadata
        for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"
    }
    assert observed[("silver", "review")]["snapshots_expired"].value == snapshots - 1
    assert observed[("silver", "review")]["files_deleted"].value > 0
    # The pipeline leaves no file its tables do not refer to: no orphan at any age.
    assert {key: (meta["orphan_files_deleted"].value, meta["orphan_files_too_recent"].value)
            for key, meta in observed.items()} == {key: (0, 0) for key in observed}
    assert len(lake.catalog.load_table("silver.review").metadata.snapshots) == 1
    for name, table in before.items():
        assert read_table(lake, "silver", name).sort_by("review_id").equals(table), name
    # Gold's incremental bookkeeping survived: nothing to recompute, nothing rebuilt.
    gold_run = defs.resolve_job_def("gold_job").execute_in_process(instance=instance)
    statuses = {m.asset_key.path[-1]: m.metadata["status"].value
                for m in (e.event_specific_data.materialization for e in gold_run.get_asset_materialization_events())}
    assert set(statuses.values()) == {"up-to-date"}, statuses


def test_a_run_on_an_empty_lake_succeeds_and_builds_nothing_downstream(settings):
    report = run_pipeline(settings)
    assert report.ok, report.failures
    assert "silver/review_flat" not in report.materializations
    assert not any(asset.startswith("gold/") for asset in report.materializations)
