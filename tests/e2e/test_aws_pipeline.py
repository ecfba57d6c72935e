"""The whole medallion pipeline in DATAMASTER_ENV=aws against a moto server on 127.0.0.1.

Real: S3 buckets, the DynamoDB ledger, Glue + Iceberg on S3, the Dagster job (`run_pipeline`),
the dagster-aws Pipes clients and their S3/CloudWatch message transport, the Lambda handler and
the container CLI. Shimmed (workers/pipes_shim.py): only Lambda Invoke (handler called in this
process) and ECS RunTask (container command run as a subprocess).
"""

from __future__ import annotations

from collections import Counter

import boto3
import pyarrow.compute as pc
import pytest

from datamaster_assets.aws_demo import (
    DEMO_LAMBDA_MAX_RECORDS,
    demo_environ,
    launched_control_ids,
    patched_environ,
)
from datamaster_assets.lake.bootstrap import bootstrap_aws
from datamaster_assets.lake.catalog import read_table, table_identifier
from datamaster_assets.lake.factory import open_lake
from datamaster_assets.lake.landing import RAW_PREFIX, estimate_records, file_format_of
from datamaster_assets.lake.ledger import Status
from datamaster_assets.seed import seed_raw
from datamaster_assets.settings import Settings
from datamaster_assets.transform.gold import MARTS
from datamaster_assets.workers.pipes_shim import provision_shim_compute

pytestmark = pytest.mark.aws

REVIEWS = 400  # the change scenario needs >= 100; the real dimensions are always landed in full


def _silver_state(lake, table: str):
    current = read_table(lake, "silver", table)
    deleted = int(pc.sum(pc.is_valid(current.column("deleted_at"))).as_py() or 0)
    snapshot = lake.catalog.load_table(table_identifier(lake.settings, "silver", table)).current_snapshot()
    return current.num_rows, deleted, snapshot.snapshot_id


def _gold_rows(lake) -> dict[str, int]:
    return {mart: read_table(lake, "gold", mart).num_rows for mart in MARTS}


def _split_threshold(lake) -> tuple[int, set[str]]:
    """A Lambda record threshold just below the largest landed file: that file goes to ECS, the rest
    to Lambda. Returns the threshold and the keys above it."""
    estimates = {o.key: estimate_records(file_format_of(o.key), o.size) for o in lake.raw.iter_all(RAW_PREFIX)}
    threshold = max(estimates.values()) - 1
    return threshold, {k for k, n in estimates.items() if n > threshold}


@pytest.fixture
def aws_pipeline(aws_env, tmp_path, monkeypatch):
    """Bootstrapped buckets/ledger/Glue, the shimmed compute provisioned, the change scenario
    landed, and the Dagster definitions built for the aws environment."""
    monkeypatch.setenv("DATAMASTER_ENV", "aws")
    monkeypatch.setenv("DATAMASTER_PII_KEY", "e2e-test-key")
    monkeypatch.setenv("DATAMASTER_HOME", str(tmp_path / "home"))  # the Dagster instance only, on aws
    monkeypatch.setenv("DATAMASTER_COMPUTE_SHIM", "1")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    settings = Settings.from_env()
    bootstrap_aws(settings)
    lake = open_lake(settings)
    summary = seed_raw(lake, reviews=REVIEWS, changes=True, seed=11)
    threshold, ecs_keys = _split_threshold(lake)
    monkeypatch.setenv("DATAMASTER_LAMBDA_MAX_RECORDS", str(threshold))
    compute = provision_shim_compute(Settings.from_env())
    for key, value in compute.environ.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    return settings, summary, ecs_keys


@pytest.mark.slow
def test_medallion_pipeline_on_aws_routes_bronze_to_lambda_and_ecs_and_is_idempotent(aws_pipeline) -> None:
    from datamaster_assets.defs.compute import compute_shim
    from datamaster_assets.defs.ops.runner import run_pipeline

    settings, summary, ecs_keys = aws_pipeline
    scenario = summary.changes
    shim = compute_shim()
    launched_before = len(shim.invocations)

    report = run_pipeline(settings)
    assert report.ok, report.failures
    assert report.newly_registered == len(summary.files)

    # ---- bronze: every raw file processed, on the target the ledger routed it to ----------------
    lake = open_lake(settings)
    bronze = lake.ledger.items(layer="bronze")
    assert sorted(i.object_key for i in bronze) == sorted(f.key for f in summary.files)
    assert {i.status for i in bronze} == {Status.SUCCESS}
    assert {i.object_key for i in bronze if i.compute_target == "ecs"} == ecs_keys
    assert {i.object_key for i in bronze if i.compute_target == "lambda"} == {f.key for f in summary.files} - ecs_keys
    ran = launched_control_ids(shim.invocations[launched_before:])
    assert ran["ecs"] == {i.control_id for i in bronze if i.compute_target == "ecs"}
    assert ran["lambda"] == {i.control_id for i in bronze if i.compute_target == "lambda"}
    targets_in_metadata = {
        t.strip() for asset, m in report.materializations.items() if asset.startswith("bronze/")
        for t in str(m["compute_targets"]).split(",")
    }
    assert targets_in_metadata == {"lambda", "ecs"}
    records_by_table = Counter()
    for item in bronze:
        records_by_table[item.table_name] += item.record_count
    assert dict(records_by_table) == {t: s.records for t, s in summary.tables.items()}

    # ---- silver: ledger items done, Glue/Iceberg tables hold what the scenario promises -------
    silver_items = lake.ledger.items(layer="silver")
    assert silver_items and {i.status for i in silver_items} == {Status.SUCCESS}
    assert {s for (_, _, s) in lake.ledger.counts()} == {"success"}
    states = {}
    for table, expected in scenario.tables.items():
        rows, deleted, snapshot = _silver_state(lake, table)
        assert (rows, rows - deleted, deleted) == (expected.rows, expected.live_rows, expected.deleted_rows), table
        states[table] = (rows, deleted, snapshot)
    glue = boto3.client("glue")
    silver_db, gold_db = settings.namespaces["silver"], settings.namespaces["gold"]
    silver_tables = {t["Name"]: t for t in glue.get_tables(DatabaseName=silver_db)["TableList"]}
    assert set(scenario.tables) | {"review_flat"} <= set(silver_tables)
    assert all(t["Parameters"]["table_type"].upper() == "ICEBERG" for t in silver_tables.values())
    assert silver_tables["review"]["Parameters"]["metadata_location"].startswith(f"s3://{settings.lake_bucket}/")

    # ---- gold: every mart is a Glue table with rows that reconcile with the live reviews -------
    live_reviews = scenario.tables["review"].live_rows
    assert read_table(lake, "silver", "review_flat").num_rows == live_reviews
    assert {t["Name"] for t in glue.get_tables(DatabaseName=gold_db)["TableList"]} == set(MARTS)
    gold = _gold_rows(lake)
    assert all(gold[m] > 0 for m in MARTS if m != "top_beers_by_rating"), gold  # >= 25 reviews/beer/month: none here
    volume = read_table(lake, "gold", "state_by_review_volume")
    assert pc.sum(volume.column("total_reviews")).as_py() == live_reviews

    # ---- a second run changes nothing ----------------------------------------------------------
    counts = lake.ledger.counts()
    launched_before = len(shim.invocations)
    again = run_pipeline(settings)
    assert again.ok, again.failures
    assert again.newly_registered == 0
    assert len(shim.invocations) == launched_before  # no bronze compute launched
    assert lake.ledger.counts() == counts
    assert {t: _silver_state(lake, t) for t in scenario.tables} == states  # same rows, no new snapshot
    assert _gold_rows(lake) == gold


# ---- the demo's own helpers (fast) ---------------------------------------------------------------


def test_demo_environ_points_at_loopback_only_and_keeps_a_user_threshold(tmp_path) -> None:
    env = demo_environ("http://127.0.0.1:5123", tmp_path, {"AWS_REGION": "eu-west-1"})
    assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:5123"
    assert (env["DATAMASTER_ENV"], env["DATAMASTER_COMPUTE_SHIM"], env["AWS_REGION"]) == ("aws", "1", "eu-west-1")
    assert env["DATAMASTER_HOME"] == str(tmp_path / "aws-demo")
    assert env["DATAMASTER_LAMBDA_MAX_RECORDS"] == str(DEMO_LAMBDA_MAX_RECORDS)
    assert demo_environ("http://127.0.0.1:1", tmp_path, {"DATAMASTER_LAMBDA_MAX_RECORDS": "7"})[
        "DATAMASTER_LAMBDA_MAX_RECORDS"] == "7"
    for endpoint in ("https://s3.amazonaws.com", "http://10.0.0.5:5000", "http://localhost.evil:1"):
        with pytest.raises(ValueError, match="127.0.0.1"):
            demo_environ(endpoint, tmp_path, {})


def test_patched_environ_drops_real_aws_identity_and_restores_everything(monkeypatch) -> None:
    import os

    monkeypatch.setenv("AWS_PROFILE", "prod-admin")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.com")
    monkeypatch.setenv("DATAMASTER_ENV", "local")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with patched_environ({"DATAMASTER_ENV": "aws", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, remove=("AWS_PROFILE",)):
        assert os.environ["DATAMASTER_ENV"] == "aws"
        assert "AWS_PROFILE" not in os.environ and "AWS_ENDPOINT_URL_S3" not in os.environ
    assert (os.environ["AWS_PROFILE"], os.environ["AWS_ENDPOINT_URL_S3"]) == ("prod-admin", "https://s3.example.com")
    assert os.environ["DATAMASTER_ENV"] == "local"
    assert "AWS_ENDPOINT_URL" not in os.environ


def test_launched_control_ids_reads_the_shim_records() -> None:
    records = [
        {"service": "lambda", "event": {"control_id": "b-1", "owner": "x"}},
        {"service": "ecs", "argv": ["python", "-m", "m", "bronze", "--control-id", "b-2", "--owner", "o"]},
        {"service": "emr-serverless", "job_run_id": "j"},
        {"service": "lambda", "event": {}},
    ]
    assert launched_control_ids(records) == {"lambda": {"b-1"}, "ecs": {"b-2"}}
