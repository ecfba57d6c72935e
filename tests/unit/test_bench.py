"""`datamaster bench`: measuring, checksums, targets, and a tiny end-to-end run of the harness."""

from __future__ import annotations

import gzip
import json
import statistics
from pathlib import Path

import pyarrow as pa
import pytest

from datamaster_assets.bench import STAGES, bench_main
from datamaster_assets.bench.checksum import content_checksum
from datamaster_assets.bench.dataset import change_counts, ensure_dataset, repeated_checksum
from datamaster_assets.bench.measure import Sample, StageFailed, run_measured, summarise
from datamaster_assets.bench.report import format_report
from datamaster_assets.bench.targets import evaluate_targets

TINY = 2_000


# ---- measuring ------------------------------------------------------------------------------


def test_summarise_takes_median_and_range_of_samples():
    samples = [Sample(3.0, 100.0), Sample(1.0, 120.0), Sample(2.0, 90.0), Sample(10.0, 95.0)]
    s = summarise(samples)
    assert s.runs == 4
    assert s.median_s == 2.5  # even count: mean of the two middle values
    assert (s.min_s, s.max_s) == (1.0, 10.0)
    assert s.median_rss_mib == 97.5
    assert s.max_rss_mib == 120.0
    assert summarise(samples[:3]).median_s == 2.0


def test_summarise_refuses_no_samples():
    with pytest.raises(ValueError):
        summarise([])


def test_run_measured_reports_the_child_alone(tmp_path):
    # A child that allocates ~64 MiB must report at least that; a tiny one must not inherit
    # this test process's (much larger) peak.
    big = run_measured(["python3", "-c", "b = bytearray(64 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"],
                       log_path=tmp_path / "big.log")
    small = run_measured(["true"], log_path=tmp_path / "small.log")
    assert big.peak_rss_mib >= 64
    assert small.peak_rss_mib < 32
    assert small.wall_s >= 0


def test_run_measured_reports_the_childs_cpu_time(tmp_path):
    busy = run_measured(["python3", "-c", "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"],
                        log_path=tmp_path / "busy.log")
    assert busy.user_s + busy.sys_s >= 0.3
    assert busy.user_s <= busy.wall_s + 0.05  # one thread cannot use more CPU than wall time
    summary = summarise([busy, Sample(1.0, 10.0, user_s=0.0, sys_s=0.0)])
    assert summary.median_user_s == pytest.approx(busy.user_s / 2)


def test_run_measured_raises_with_the_log_tail(tmp_path):
    with pytest.raises(StageFailed, match="boom"):
        run_measured(["python3", "-c", "import sys; print('boom'); sys.exit(3)"], log_path=tmp_path / "x.log")


# ---- checksums and data set -------------------------------------------------------------------


def test_checksum_ignores_row_order_but_sees_content_and_duplicates():
    t = pa.table({"id": [1, 2, 3], "score": [4.5, None, 3.0], "name": ["a", "b", "c"]})
    cols = ["id", "score", "name"]
    base = content_checksum(t, cols)
    assert content_checksum(t.take([2, 0, 1]), cols) == base
    assert content_checksum(pa.table({"id": pa.array([1, 2, 3], pa.int32()), "score": [4.5, None, 3.0],
                                      "name": ["a", "b", "c"]}), cols) == base  # int32 == int64
    assert content_checksum(t.set_column(1, "score", pa.array([4.5, None, 3.5])), cols) != base
    doubled = content_checksum(pa.concat_tables([t, t.slice(0, 1)]), cols)
    assert doubled.rows == 4 and doubled.digest != base.digest


def test_change_counts_scale_with_the_table():
    assert change_counts(1_586_614) == (50_000, 50_000)
    assert change_counts(2_000) == (63, 63)
    assert change_counts(1) == (1, 1)


def test_dataset_is_generated_once_and_expected_values_follow_the_changes(tmp_path):
    ds, generated = ensure_dataset(tmp_path, TINY, seed=7)
    again, generated_again = ensure_dataset(tmp_path, TINY, seed=7)
    assert generated and not generated_again
    assert again.manifest == ds.manifest
    assert ds.expected("base")["rows"] == TINY
    assert ds.expected("merged")["rows"] == TINY + ds.inserts
    assert ds.expected("merged")["digest"] != ds.expected("base")["digest"]
    assert ds.expected("x10")["rows"] == 10 * TINY
    assert all(ds.manifest["files"][p.name]["bytes"] == p.stat().st_size
               for p in (ds.csv, ds.jsonl, ds.changes, ds.x10_csv))
    # The 10x file is the header plus ten copies of the rows, readable as one gzip stream.
    with gzip.open(ds.x10_csv, "rb") as f:
        x10_lines = f.read().splitlines()
    with gzip.open(ds.csv, "rb") as f:
        lines = f.read().splitlines()
    assert x10_lines == lines + lines[1:] * 9


def test_repeated_checksum_equals_checksum_of_the_copies():
    t = pa.table({"id": [1, 2, 3], "x": [0.5, 1.0, 1.5]})
    once = content_checksum(t, ["id", "x"]).as_dict()
    assert repeated_checksum(once, 10) == content_checksum(pa.concat_tables([t] * 10), ["id", "x"]).as_dict()


# ---- targets and report ---------------------------------------------------------------------


def _measurement(name: str, walls: list[float], rss: float = 100.0) -> dict:
    samples = [Sample(w, rss) for w in walls]
    return {"name": name, "kind": "system", "rows": 10, "checks": {}, "notes": [], "skipped": None,
            "samples": [s.as_dict() for s in samples], "summary": summarise(samples).as_dict()}


def test_targets_pass_miss_and_not_applicable():
    measurements = [
        _measurement("bronze_csv", [1.0, 1.1, 5.0], rss=200),
        _measurement("bronze_csv.floor_gzip", [0.7]),
        _measurement("bronze_csv.ref_pyarrow", [1.6]),
        _measurement("silver_merge", [2.0]),
        _measurement("silver_merge.ref_iceberg_upsert", [8.0]),
    ]
    full = {t["key"]: t for t in evaluate_targets(measurements, full_size=True)}
    assert full["bronze_csv_wall"]["measured"] == 1.1 and full["bronze_csv_wall"]["status"] == "pass"
    assert full["bronze_csv_rss"]["status"] == "pass"
    assert full["bronze_csv_vs_floor"]["measured"] == pytest.approx(1.1 / 0.7, abs=1e-3)
    assert full["bronze_csv_vs_floor"]["status"] == "pass"
    assert full["bronze_csv_vs_pyarrow"]["status"] == "pass"
    assert full["silver_merge_vs_upsert"]["measured"] == 4.0 and full["silver_merge_vs_upsert"]["status"] == "MISS"
    assert full["gold_wall"]["status"] == "not measured"
    small = {t["key"]: t for t in evaluate_targets(measurements, full_size=False)}
    assert small["bronze_csv_wall"]["status"] == "n/a (not full size)"
    assert small["silver_merge_vs_upsert"]["status"] == "MISS"  # ratios hold at any size


# ---- the harness end to end at a tiny size ----------------------------------------------------


def _check_report(report: dict, out: Path, runs: int) -> dict[str, dict]:
    assert json.loads(out.read_text()) == report
    assert report["status"] == "complete"
    assert report["verified"] is True
    assert report["dataset"]["reviews"] == TINY
    by_name = {m["name"]: m for m in report["measurements"]}
    for m in report["measurements"]:
        if m["skipped"]:
            assert m["samples"] == [] and m["summary"] is None
            continue
        walls = [s["wall_s"] for s in m["samples"]]
        assert 1 <= len(walls) <= runs
        assert m["summary"]["median_s"] == statistics.median(walls)
        assert m["summary"]["min_s"] == min(walls) and m["summary"]["max_s"] == max(walls)
        assert m["summary"]["median_rss_mib"] == statistics.median(s["peak_rss_mib"] for s in m["samples"])
        assert all(s["peak_rss_mib"] > 0 and s["wall_s"] > 0 for s in m["samples"])
        assert all(c["ok"] for c in m["checks"].values())
    assert "outputs verified: yes" in format_report(report)
    return by_name


@pytest.mark.slow
def test_bench_bronze_and_silver_tiny(tmp_path):
    out = tmp_path / "report.json"
    report = bench_main(quick=True, runs=2, out=out, stages=["bronze", "silver"], cache_dir=tmp_path / "cache",
                        reviews=TINY, spark=False)
    by_name = _check_report(report, out, runs=2)
    assert report["stages"] == ["bronze", "silver"]
    updates, inserts = change_counts(TINY)
    csv = by_name["bronze_csv"]
    assert csv["checks"]["records_read"]["actual"] == TINY
    assert csv["checks"]["rejected"]["actual"] == 0
    assert csv["checks"]["bronze_checksum"]["actual"] == report["dataset"]["expected"]["base"]
    assert by_name["bronze_jsonl"]["checks"]["bronze_checksum"]["ok"]
    x10 = by_name["bronze_csv_x10"]
    assert x10["checks"]["records_read"]["actual"] == 10 * TINY
    assert x10["checks"]["bronze_checksum"]["ok"] and len(x10["samples"]) == 2  # every run: memory is a median too
    for ref_name in ("bronze_csv.ref_pyarrow", "bronze_csv.ref_duckdb", "bronze_jsonl.ref_pyarrow"):
        assert by_name[ref_name]["checks"]["rows"]["actual"] == TINY
    assert by_name["bronze_csv.ref_spark"]["skipped"].startswith("skipped")
    assert by_name["silver_initial"]["checks"]["silver_rows"]["actual"] == TINY
    merge = by_name["silver_merge"]["checks"]
    assert merge["outcome_updated"]["actual"] == updates
    assert merge["outcome_inserted"]["actual"] == inserts
    assert merge["silver_rows"]["actual"] == TINY + inserts
    assert merge["silver_checksum"]["actual"] == report["dataset"]["expected"]["merged"]
    upsert = by_name["silver_merge.ref_iceberg_upsert"]["checks"]
    assert (upsert["rows_updated"]["actual"], upsert["rows_inserted"]["actual"]) == (updates, inserts)
    targets = {t["key"]: t for t in report["targets"]}
    assert targets["bronze_csv_wall"]["status"] == "n/a (not full size)"
    assert targets["gold_wall"]["status"] == "not measured"


@pytest.mark.slow
def test_bench_gold_and_end_to_end_tiny(tmp_path):
    out = tmp_path / "report.json"
    report = bench_main(quick=True, runs=1, out=out, stages=["e2e", "gold"], cache_dir=tmp_path / "cache",
                        reviews=TINY, spark=False)
    by_name = _check_report(report, out, runs=1)
    assert report["stages"] == ["e2e", "gold"]
    assert [m["stage"] for m in report["measurements"]] == ["gold", "gold", "gold", "e2e"]  # pipeline order
    marts = ("top_beers_by_rating", "top_breweries_by_rating", "top_styles_by_popularity", "state_by_review_volume",
             "top_drinkers")
    for name in ("gold", "gold.ref_duckdb", "e2e"):
        checks = by_name[name]["checks"]
        assert all(checks[f"{mart}_checksum"]["ok"] for mart in marts)
    assert by_name["gold"]["checks"]["review_flat_rows"]["actual"] == TINY
    assert by_name["e2e"]["checks"]["silver_review_checksum"]["actual"] == report["dataset"]["expected"]["base"]
    assert by_name["e2e"]["checks"]["ledger_items_not_success"]["actual"] == []


def test_failed_verification_stops_the_run_and_leaves_a_report(tmp_path, monkeypatch):
    from datamaster_assets.bench import BenchError, harness

    def broken_stage(bench):
        m = harness.Measurement("bronze_csv", "bronze", "system", "a stage whose output is wrong")
        bench.measure(m, ["true"], verify=lambda _: bench.expect({}, "rows", 1, 2) or {})

    monkeypatch.setitem(harness.STAGE_FUNCTIONS, "bronze", broken_stage)
    out = tmp_path / "r.json"
    with pytest.raises(BenchError, match="rows is 1, expected 2"):
        bench_main(quick=True, runs=1, out=out, stages=["bronze"], cache_dir=tmp_path / "cache", reviews=100)
    report = json.loads(out.read_text())
    assert report["status"].startswith("failed: BenchError")
    assert len(report["measurements"][0]["samples"]) == 1


def test_bench_main_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown stage"):
        bench_main(quick=True, runs=1, out=tmp_path / "r.json", stages=["platinum"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="runs"):
        bench_main(quick=True, runs=0, out=tmp_path / "r.json", stages=None, cache_dir=tmp_path)
    assert STAGES == ("bronze", "silver", "gold", "e2e")


def test_measurements_side_by_side_alternate_and_a_slow_reference_runs_once(tmp_path, monkeypatch):
    import sys

    from datamaster_assets.bench import harness

    bench = harness.Bench(dataset=None, workdir=tmp_path, runs=3, spark=False, spark_note="")
    order: list[str] = []

    def job(name: str, kind: str, seconds: float = 0.0, heavy: bool = False, repeat: bool = False) -> harness.Run:
        m = harness.Measurement(name, "gold", kind, name)
        argv = [sys.executable, "-S", "-c", f"import time; time.sleep({seconds})"]
        return harness.Run(m, argv, before=lambda: order.append(name), heavy=heavy, repeat_when_slow=repeat)

    monkeypatch.setattr(harness, "SLOW_REFERENCE_S", 0.3)
    jobs = [job("ours", "system", 0.4), job("floor", "floor"), job("slow_ref", "reference", 0.4),
            job("heavy_ref", "reference", heavy=True), job("target_ref", "reference", 0.4, heavy=True, repeat=True)]
    bench.measure_side_by_side(jobs)

    # A B C, then C B A, then A B C; the slow reference is measured once; the heavy ones after the
    # rounds, and the slow one a target depends on every time.
    assert order == ["ours", "floor", "slow_ref", "floor", "ours", "ours", "floor",
                     "heavy_ref", "heavy_ref", "heavy_ref", "target_ref", "target_ref", "target_ref"]
    assert [len(j.m.samples) for j in jobs] == [3, 3, 1, 3, 3]
    assert len(jobs[2].m.notes) == 1 and jobs[2].m.notes[0].startswith("measured once: one run takes")
    assert not jobs[0].m.notes and not jobs[4].m.notes  # never cut short, however slow
    assert [m.name for m in bench.measurements] == ["ours", "floor", "slow_ref", "heavy_ref", "target_ref"]


def test_restoring_a_lake_sets_the_previous_one_aside_instead_of_deleting_it(tmp_path):
    from datamaster_assets.bench.harness import Bench

    bench = Bench(None, tmp_path / "work", runs=1, spark=False, spark_note="")
    bench.lake_dir.mkdir()
    (bench.lake_dir / "table.parquet").write_text("snapshot")
    bench.snapshot("input")
    (bench.lake_dir / "written-by-the-run.parquet").write_text("run 1")
    bench.restore("input")
    assert sorted(p.name for p in bench.lake_dir.iterdir()) == ["table.parquet"]
    bench.restore("input")
    bench.fresh_lake()
    assert not (bench.lake_dir / "table.parquet").exists()  # a new, empty lake
    aside = sorted(bench.set_aside.iterdir(), key=lambda p: int(p.name))
    assert [sorted(p.name for p in d.iterdir()) for d in aside] == [
        ["table.parquet", "written-by-the-run.parquet"], ["table.parquet"], ["table.parquet"]]
    assert aside[0].parent.parent == bench.workdir  # removed with the work directory
