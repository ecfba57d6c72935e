"""The datamaster command on a temporary DATAMASTER_HOME (without running Dagster)."""

from __future__ import annotations

import gzip
import json
import re

from click.testing import CliRunner

from datamaster_assets.cli import main
from datamaster_assets.lake.factory import open_lake
from datamaster_assets.lake.landing import LandingCursor, register_new_objects
from datamaster_assets.lake.ledger import Status
from datamaster_assets.settings import Settings

HEADER = b"review_id,brewery_id,beer_id,profile_id,review_overall,review_aroma,review_appearance,review_palate,review_taste,review_time\n"


def test_land_status_and_requeue(dm_home, tmp_path):
    runner = CliRunner()
    good = tmp_path / "good.csv.gz"
    good.write_bytes(gzip.compress(HEADER + b"1,2,3,4,4.0,4.0,4.0,4.0,4.0,1200000000\n"))
    out = runner.invoke(main, ["land", str(good), "--table", "review"])
    assert out.exit_code == 0, out.output
    assert "-> raw/review/" in out.output and out.output.strip().endswith("bytes)")

    refused = runner.invoke(main, ["land", str(good), "--table", "wine"])
    assert refused.exit_code != 0 and "unknown table 'wine'" in refused.output

    settings = Settings.from_env()
    lake = open_lake(settings)
    (item,) = register_new_objects(settings, lake.raw, lake.ledger, LandingCursor()).registered
    lake.ledger.claim(item.control_id, "w", 60)
    lake.ledger.fail(item.control_id, "w", f"{item.object_key}: line 7, field review_time: boom", permanent=True)

    table = runner.invoke(main, ["status"])
    assert table.exit_code == 0
    assert "bronze  review" in table.output and "Needs attention" in table.output and "boom" in table.output
    report = json.loads(runner.invoke(main, ["status", "--format", "json"]).output)
    assert report["counts"] == {"bronze": {"review": {"quarantined": 1}}}
    assert report["problems"][0]["control_id"] == item.control_id
    assert "line 7, field review_time" in report["problems"][0]["error_message"]

    assert runner.invoke(main, ["requeue"]).exit_code != 0  # says what to name
    requeued = runner.invoke(main, ["requeue", item.control_id])
    assert requeued.exit_code == 0 and "1 item(s) back to pending" in requeued.output
    assert lake.ledger.get(item.control_id).status == Status.PENDING
    # a mistyped id, or one that is not failed, is said so instead of "0 item(s)" and success
    typo = runner.invoke(main, ["requeue", "b-nosuchitem"])
    assert typo.exit_code != 0 and "no ledger item with control id b-nosuchitem" in typo.output
    again = runner.invoke(main, ["requeue", item.control_id])
    assert again.exit_code == 0 and f"not requeued {item.control_id}: it is pending" in again.output
    table_typo = runner.invoke(main, ["requeue", "--table", "reviews"])
    assert table_typo.exit_code != 0 and "no ledger item has table 'reviews'" in table_typo.output


def test_query_csv_ends_with_one_newline(dm_home):
    open_lake(Settings.from_env())
    out = CliRunner().invoke(main, ["query", "SELECT 1 AS a, 'x' AS b", "--format", "csv"])
    assert out.exit_code == 0 and out.output == "a,b\n1,x\n"


def test_commands_that_read_a_lake_refuse_a_home_without_one(tmp_path, monkeypatch):
    typo = tmp_path / "datamastr"
    monkeypatch.setenv("DATAMASTER_HOME", str(typo))
    for args in (["status"], ["query", "SELECT 1"], ["requeue", "--all"], ["maintain", "--dry-run"]):
        out = CliRunner().invoke(main, args)
        assert out.exit_code == 1 and f"no lake at {typo} (DATAMASTER_HOME)" in out.output, (args, out.output)
    assert not typo.exists()  # nothing created at the mistyped path


def test_aws_without_credentials_or_endpoint_says_what_to_set(dm_home, monkeypatch):
    monkeypatch.setenv("DATAMASTER_ENV", "aws")
    monkeypatch.setenv("DATAMASTER_PII_KEY", "k")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    out = CliRunner().invoke(main, ["status"])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert "DATAMASTER_ENV=aws: Could not connect to the endpoint URL" in out.output
    assert "set AWS_ENDPOINT_URL" in out.output


def test_a_run_that_dagster_calls_successful_but_with_failed_files_does_not_say_succeeded(capsys):
    from types import SimpleNamespace

    from datamaster_assets.cli import _print_report

    _print_report(SimpleNamespace(ok=False, success=True, run_id="r1", newly_registered=0,
                                  failures=["bronze b-1 quarantined: x.csv.gz: not a gzip file"], held_elsewhere=[]))
    out, err = capsys.readouterr()
    assert "succeeded" not in out and "completed with 1 failure(s) (below)" in out
    assert "FAILED: bronze b-1 quarantined" in err


def test_query_reports_unknown_tables_clearly(dm_home):
    open_lake(Settings.from_env())
    out = CliRunner().invoke(main, ["query", "SELECT * FROM gold.nope"])
    assert out.exit_code != 0 and "gold.nope" in out.output


def test_a_bad_environment_is_a_clear_error(dm_home, monkeypatch):
    monkeypatch.setenv("DATAMASTER_ENV", "azure")
    out = CliRunner().invoke(main, ["status"])
    assert out.exit_code != 0 and "DATAMASTER_ENV must be 'local' or 'aws'" in out.output


def test_maintain_dry_run_then_expire(dm_home):
    from tests.unit.gold_data import silver_set, write_silver

    lake = open_lake(Settings.from_env())
    for _ in range(3):
        write_silver(lake, silver_set())  # three overwrites of each silver table
    runner = CliRunner()
    dry = runner.invoke(main, ["maintain", "--dry-run", "--max-age-days", "0", "--retain-last", "1"])
    assert dry.exit_code == 0, dry.output
    assert "newest 1 kept" in dry.output and "silver.review " in dry.output and "would expire" in dry.output
    before = len(lake.catalog.load_table("silver.review").metadata.snapshots)
    assert before > 1

    done = runner.invoke(main, ["maintain", "--max-age-days", "0", "--retain-last", "1", "--orphan-min-age-days", "1"])
    assert done.exit_code == 0, done.output
    assert re.search(rf"silver\.review +{before} snapshot\(s\), expired +{before - 1},", done.output), done.output
    assert "orphan files older than 1 day(s) deleted" in done.output and "orphans deleted 0 (0.0 MB)" in done.output
    assert len(lake.catalog.load_table("silver.review").metadata.snapshots) == 1
    assert runner.invoke(main, ["maintain", "--retain-last", "0"]).exit_code != 0
