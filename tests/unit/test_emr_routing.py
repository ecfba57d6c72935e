"""Silver merges and gold refreshes above the change-volume threshold go to Spark on EMR Serverless
(same ledger protocol and snapshot bookkeeping); below it, or locally, they run in-process."""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg
import pytest

from datamaster_assets.defs.compute import SparkCompute
from datamaster_assets.defs.resources import LakeResource
from datamaster_assets.defs.silver import make_silver_asset
from datamaster_assets.contracts import get_contract
from datamaster_assets.lake.factory import open_lake
from datamaster_assets.lake.ledger import Registration, Status
from datamaster_assets.settings import Settings
from datamaster_assets.workers.silver import apply_pending_silver_remotely, pending_change_rows

NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _register(lake, n_files: int, rows: int) -> list[str]:
    ids = []
    for i in range(n_files):
        item, _ = lake.ledger.register(Registration(
            layer="silver", table_name="review", object_key=f"bronze/review/year=2026/month=11/day=01/f{i}.parquet",
            checksum=f"c{i}", file_format="parquet", file_size=100, record_count=rows))
        ids.append(item.control_id)
    return ids


@pytest.fixture
def lake(tmp_path):
    return open_lake(Settings(home=tmp_path / "home"))


def test_remote_merge_gets_a_manifest_and_completes_the_items(lake):
    ids = _register(lake, 3, rows=1000)
    assert pending_change_rows(lake, "review") == 3000
    seen = {}

    def run_merge(manifest_uri: str) -> dict:
        seen["manifest"] = manifest_uri
        return {"changes_read": 3000, "inserted": 2500, "updated": 400, "stale_ignored": 100, "snapshot_id": 42}

    result = apply_pending_silver_remotely(lake, "review", owner="w1", run_merge=run_merge)
    key = seen["manifest"].split("/objects/", 1)[1]
    listed = lake.store.read_bytes(key).decode().splitlines()
    assert sorted(u.rsplit("/", 1)[1] for u in listed) == ["f0.parquet", "f1.parquet", "f2.parquet"]
    assert result.files_applied == 3 and result.change_rows == 3000
    assert result.counts["inserted"] == 2500 and result.counts["stale_ignored"] == 100
    for cid in ids:
        item = lake.ledger.get(cid)
        assert item.status == Status.SUCCESS and item.stats["engine"] == "spark" and item.stats["snapshot_id"] == 42
    assert pending_change_rows(lake, "review") == 0


def test_a_failed_spark_job_releases_the_files_for_a_retry(lake):
    ids = _register(lake, 2, rows=10)

    def run_merge(manifest_uri: str) -> dict:
        raise RuntimeError("EMR job run FAILED")

    with pytest.raises(RuntimeError, match="FAILED"):
        apply_pending_silver_remotely(lake, "review", owner="w1", run_merge=run_merge)
    items = [lake.ledger.get(cid) for cid in ids]
    assert all(i.status == Status.ERROR and "EMR job run FAILED" in i.error_message for i in items)
    assert pending_change_rows(lake, "review") == 20  # claimable again


def test_a_spark_job_longer_than_the_lease_keeps_its_files(tmp_path):
    lake = open_lake(Settings(home=tmp_path / "home", lease_seconds=1))
    ids = _register(lake, 2, rows=10)
    taken_over = []

    def run_merge(manifest_uri: str) -> dict:
        import time

        time.sleep(2.5)  # 2.5 leases
        taken_over.extend(i for i in ids if lake.ledger.claim(i, "another-worker", 1) is not None)
        return {"changes_read": 20, "inserted": 20}

    result = apply_pending_silver_remotely(lake, "review", owner="w1", run_merge=run_merge)
    assert taken_over == [] and result.lease_lost == [] and result.files_applied == 2
    assert all(lake.ledger.get(cid).status == Status.SUCCESS for cid in ids)


class RecordingSpark(SparkCompute):
    """SparkCompute whose EMR launch is recorded instead of sent (the Pipes round trip itself is
    covered by tests/integration/test_pipes_emr.py)."""

    def run_job(self, context, job, args=(), *, extras=None):
        RecordingSpark.launched.append((job, list(args)))
        return {"changes_read": 50, "updated": 50}


@pytest.mark.parametrize("env, threshold, expect_spark", [("aws", 100, True), ("aws", 101, False), ("local", 1, False)])
def test_the_silver_asset_routes_by_change_volume(tmp_path, env, threshold, expect_spark):
    home = tmp_path / "home"
    lake = open_lake(Settings(home=home))
    _register(lake, 2, rows=50)
    RecordingSpark.launched = []
    spark = RecordingSpark(env=env, emr_min_change_rows=threshold)
    result = dg.materialize(
        [make_silver_asset(get_contract("review"))],
        resources={"lake": LakeResource(home=str(home)), "spark_compute": spark},
        raise_on_error=False,
    )
    assert result.success
    if expect_spark:
        assert [job for job, _ in RecordingSpark.launched] == ["silver_merge"]
        args = RecordingSpark.launched[0][1]
        assert args[:2] == ["--table", "review"] and "--manifest" in args and args[-2:] == ["--namespace", "silver"]
        assert {i.status for i in lake.ledger.items(layer="silver")} == {Status.SUCCESS}
    else:
        assert RecordingSpark.launched == []
        # in-process: the (absent) bronze files fail one by one, each named
        failed = lake.ledger.items(layer="silver")
        assert all("f0.parquet" in i.error_message or "f1.parquet" in i.error_message for i in failed)


class FakeInvocation:
    def __init__(self, results):
        self._results = results

    def get_results(self):
        return self._results


class RecordingSparkGold(SparkCompute):
    def launch(self, context, job, args=(), *, extras=None):
        RecordingSparkGold.launched.append((job, list(args)))
        return FakeInvocation([dg.MaterializeResult(asset_key=k, metadata={"engine": "spark"})
                               for k in sorted(context.selected_asset_keys)])


def test_gold_routes_to_spark_by_the_review_flat_rows_it_must_recompute(tmp_path):
    from datamaster_assets.defs.gold import gold_marts
    from datamaster_assets.workers.gold import build_review_flat_table, pending_gold_work
    from tests.unit.gold_data import silver_set, write_silver

    home = tmp_path / "home"
    lake = open_lake(Settings(home=home))
    write_silver(lake, silver_set())
    build_review_flat_table(lake)
    months, rows = pending_gold_work(lake)
    assert months is None and rows > 0  # never refreshed: everything, all rows

    RecordingSparkGold.launched = []
    heavy = RecordingSparkGold(env="aws", emr_min_change_rows=rows)
    result = dg.materialize([gold_marts], resources={"lake": LakeResource(home=str(home)), "spark_compute": heavy})
    assert result.success
    (job, args), = RecordingSparkGold.launched
    assert job == "gold_marts" and "--all-months" in args and args.count("--mart") == 5
    assert {e.asset_key.path[-1] for e in result.get_asset_materialization_events()} == {
        "state_by_review_volume", "top_beers_by_rating", "top_breweries_by_rating", "top_drinkers",
        "top_styles_by_popularity"}

    light = RecordingSparkGold(env="aws", emr_min_change_rows=rows + 1)
    assert dg.materialize([gold_marts], resources={"lake": LakeResource(home=str(home)), "spark_compute": light}).success
    assert len(RecordingSparkGold.launched) == 1  # in-process this time
    assert pending_gold_work(lake) == (set(), 0)  # and now up to date
