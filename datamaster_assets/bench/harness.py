"""`datamaster bench`: time each stage as a whole process, side by side with reference tools.

Every measured run starts from a restored snapshot of the lake it needs (so a merge always merges
into the same table, an end-to-end run always starts from freshly landed files), runs one process,
and is then verified: row counts, reject counts, merge outcome counts and content checksums of the
outputs against values computed independently of the code under test (docs/benchmarks.md).
All lakes live at one fixed path, because Iceberg metadata holds absolute file locations.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from datamaster_assets.bench import references as ref
from datamaster_assets.bench.checksum import content_checksum
from datamaster_assets.bench.dataset import BenchDataset, ensure_dataset, review_columns
from datamaster_assets.bench.measure import Sample, StageFailed, run_measured, summarise
from datamaster_assets.bench.report import format_report
from datamaster_assets.bench.targets import evaluate_targets
from datamaster_assets.runtime import transparent_huge_pages_enabled, tune_process
from datamaster_assets.seed.reviews import FULL_SIZE_REVIEWS

STAGES = ("bronze", "silver", "gold", "e2e")
QUICK_REVIEWS = 50_000
DEFAULT_SEED = 42
# A reference slower than this per run is measured once: repeating pyspark (JVM start alone ~10 s)
# would take minutes, and its ratio to our stage is far from its target. A reference whose ratio
# is close to its target (Table.upsert: ~5x against >= 5x) sets Run.repeat_when_slow.
SLOW_REFERENCE_S = 10.0
# Landing time of the seeded raw files, fixed so the cached landed lake is the same every time.
SEED_NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)


class BenchError(RuntimeError):
    """The benchmark could not run, or an output failed verification."""


@dataclass
class Measurement:
    name: str  # e.g. "bronze_csv", "bronze_csv.ref_pyarrow"
    stage: str
    kind: str  # system | reference | floor
    description: str
    samples: list[Sample] = field(default_factory=list)
    rows: int | None = None
    checks: dict[str, Any] = field(default_factory=dict)  # what was verified, with the values
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    profile: dict[str, Any] = field(default_factory=dict)  # the last run's own account of its time

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "stage": self.stage,
            "kind": self.kind,
            "description": self.description,
            "samples": [s.as_dict() for s in self.samples],
            "rows": self.rows,
            "checks": self.checks,
            "notes": self.notes,
            "skipped": self.skipped,
            "profile": self.profile,
        }
        out["summary"] = summarise(self.samples).as_dict() if self.samples else None
        return out


def _python() -> str:
    return sys.executable


def _stage_argv(stage: str, *args: str | Path) -> list[str]:
    return [_python(), "-m", "datamaster_assets.bench.stage", stage, *map(str, args)]


def _datamaster_cli() -> list[str]:
    script = Path(sys.executable).parent / "datamaster"
    if script.is_file():
        return [str(script)]
    found = shutil.which("datamaster")
    if found:
        return [found]
    return [_python(), "-c", "from datamaster_assets.cli import main; main()"]


def machine_info() -> dict[str, Any]:
    try:
        import isal

        isal_version: str | None = getattr(isal, "__version__", "installed")
    except ImportError:
        isal_version = None
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "isal": isal_version,
        "java": ref.java_available(),
        # inherited by every measured process, stages and references alike (datamaster_assets.runtime)
        "transparent_huge_pages": transparent_huge_pages_enabled(),
    }


@dataclass
class Run:
    """A measurement's command, and what to do before and after each of its runs (untimed)."""

    m: Measurement
    argv: list[str]
    before: Callable[[], None] | None = None
    verify: Callable[[dict], dict[str, Any]] | None = None
    result_path: Path | None = None
    runs: int | None = None  # None: the benchmark's --runs
    heavy: bool = False  # runs after the rounds of the others (see Bench.measure_side_by_side)
    repeat_when_slow: bool = False  # measured every run even past SLOW_REFERENCE_S (a target hangs on it)
    stopped: bool = False  # a slow reference, measured once

    def finished(self, default_runs: int) -> bool:
        return self.stopped or len(self.m.samples) >= (self.runs or default_runs)


class Bench:
    """The state of one benchmark invocation: data set, work directory, snapshots, measurements."""

    def __init__(self, dataset: BenchDataset, workdir: Path, runs: int, spark: bool, spark_note: str):
        self.dataset = dataset
        self.workdir = workdir
        self.lake_dir = workdir / "lake"
        self.snapshots = workdir / "snapshots"
        self.inputs = workdir / "inputs"
        self.outputs = workdir / "outputs"
        self.logs = workdir / "logs"
        self.set_aside = workdir / "set-aside"  # earlier lakes, deleted with the work directory
        self._set_aside_count = 0
        for d in (self.snapshots, self.inputs, self.outputs, self.logs, self.set_aside):
            d.mkdir(parents=True, exist_ok=True)
        self.runs = runs
        self.spark = spark
        self.spark_note = spark_note
        self.measurements: list[Measurement] = []
        self.expected_marts: dict[str, dict] | None = None
        self._log_seq = 0

    # ---- lakes -------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(DATAMASTER_HOME=str(self.lake_dir), DATAMASTER_ENV="local")
        env.pop("DAGSTER_HOME", None)
        return env

    def settings(self):
        from datamaster_assets.settings import Settings

        return Settings.from_env({**self.env()}).with_home(self.lake_dir)

    def lake(self):
        from datamaster_assets.lake.factory import open_lake

        return open_lake(self.settings())

    def fresh_lake(self):
        self._set_lake_aside()
        return self.lake()

    def _set_lake_aside(self) -> None:
        """Move the current lake out of the way instead of deleting it before the next run.

        On ext4 without a journal (this machine's root file system), creating a file scans past
        every inode deleted in the last 30 s (``recently_deleted``). Deleting the previous run's
        lake (~3,000 files) right before a gold run made its ~850 file creations cost ~0.2 CPU-s
        more (openat 5.8 % of the stage's CPU samples instead of 1.4 %): the bench's own clean-up,
        not the code under test. The lakes set aside are deleted with the work directory at the
        end; a full-size run sets aside up to ~4.5 GB (4.4 GB measured)."""
        if self.lake_dir.exists():
            self._set_aside_count += 1
            self.lake_dir.rename(self.set_aside / str(self._set_aside_count))

    def snapshot(self, name: str) -> None:
        target = self.snapshots / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.lake_dir, target)

    def has_snapshot(self, name: str) -> bool:
        return (self.snapshots / name).is_dir()

    def restore(self, name: str) -> None:
        self._set_lake_aside()
        shutil.copytree(self.snapshots / name, self.lake_dir)

    def land(self, table: str, path: Path) -> None:
        """Land one file into the current lake and register it, as the landing sensor would."""
        from datamaster_assets.lake.landing import land_file

        land_file(self.lake().raw, table, path)
        self.register_landed()

    def register_landed(self) -> int:
        """Register every landed raw file not yet in the ledger; the number registered."""
        from datamaster_assets.lake.landing import LandingCursor, register_new_objects

        lake = self.lake()
        return len(register_new_objects(lake.settings, lake.raw, lake.ledger, LandingCursor()).registered)

    def run_untimed(self, argv: list[str], what: str) -> None:
        self.spawn(argv, what)

    # ---- measuring ---------------------------------------------------------------------------

    def spawn(self, argv: list[str], what: str) -> Sample:
        self._log_seq += 1
        log = self.logs / f"{self._log_seq:03d}-{what}.log"
        try:
            return run_measured(argv, env=self.env(), cwd=self.workdir, log_path=log)
        except StageFailed as exc:
            raise BenchError(f"{what} failed (log: {log}): {exc}") from exc

    def measure(
        self,
        m: Measurement,
        argv: list[str],
        *,
        before: Callable[[], None] | None = None,
        verify: Callable[[dict], dict[str, Any]] | None = None,
        result_path: Path | None = None,
        runs: int | None = None,
    ) -> Measurement:
        """Run ``argv`` ``runs`` times (``before`` each run, ``verify`` after each, untimed)."""
        self.measure_side_by_side([Run(m, argv, before, verify, result_path, runs)])
        return m

    def measure_side_by_side(self, jobs: list[Run]) -> None:
        """Measure several commands in rounds: one run of each per round, in alternating order
        (A B C, then C B A, ...). A slow phase of the host then falls on every command of the round
        rather than on all runs of one, so their ratios hold up better than their seconds.

        Heavy references (``Run.heavy``: pyspark, ``Table.upsert``) run after the rounds: on this
        machine the runs right after one of them were slower (gold: 3.31 s before pyspark's
        39 s run, 3.96 and 4.00 s in the two rounds after it)."""
        self.measurements.extend(job.m for job in jobs)
        light = [job for job in jobs if not job.heavy]
        for round_ in range(max((job.runs or self.runs for job in light), default=0)):
            for job in light if round_ % 2 == 0 else reversed(light):
                if not job.finished(self.runs):
                    self._run_once(job)
        for job in jobs:
            while job.heavy and not job.finished(self.runs):
                self._run_once(job)
        for job in jobs:
            print(f"  {job.m.name:<34} median {summarise(job.m.samples).median_s:7.2f} s", flush=True)

    def _run_once(self, job: Run) -> None:
        m = job.m
        if job.before is not None:
            job.before()
        if job.result_path is not None:
            job.result_path.unlink(missing_ok=True)
        sample = self.spawn(job.argv, m.name.replace(".", "-"))
        m.samples.append(sample)
        result_path = job.result_path
        result = json.loads(result_path.read_text()) if result_path is not None and result_path.exists() else {}
        m.profile = {k: result[k] for k in ("in_process_ms", "profile_ms") if k in result}
        if "review" in result and "worker_ms" in result["review"]:
            m.profile["silver_worker_ms"] = result["review"]["worker_ms"]
        if job.verify is not None:
            m.checks = job.verify(result)
        if (m.kind != "system" and not job.repeat_when_slow and sample.wall_s > SLOW_REFERENCE_S
                and not job.finished(self.runs)):
            m.notes.append(f"measured once: one run takes {sample.wall_s:.0f} s (> {SLOW_REFERENCE_S:.0f} s)")
            job.stopped = True

    def skip(self, m: Measurement, reason: str) -> None:
        m.skipped = reason
        self.measurements.append(m)

    # ---- verification helpers ----------------------------------------------------------------

    def expect(self, checks: dict[str, Any], name: str, actual: Any, expected: Any) -> None:
        checks[name] = {"actual": actual, "expected": expected, "ok": actual == expected}
        if actual != expected:
            raise BenchError(f"verification failed: {name} is {actual!r}, expected {expected!r}")

    def silver_table(self, name: str):
        from datamaster_assets.lake.catalog import table_identifier

        lake = self.lake()
        return lake.catalog.load_table(table_identifier(lake.settings, "silver", name)).scan().to_arrow()

    def gold_marts(self) -> dict[str, Any]:
        from datamaster_assets.lake.catalog import table_identifier

        lake = self.lake()
        return {
            name: lake.catalog.load_table(table_identifier(lake.settings, "gold", name)).scan().to_arrow()
            for name in ref.MART_SQL
        }

    def pending_silver_input(self, table: str = "review") -> Path:
        """The bronze Parquet file of the (one) pending silver item of ``table`` in the current lake."""
        from datamaster_assets.lake.ledger import Layer

        lake = self.lake()
        items = lake.ledger.claimable(Layer.SILVER.value, table_name=table)
        if len(items) != 1:
            raise BenchError(f"expected one pending silver item for {table}, found {len(items)}")
        return lake.store.local_path(items[0].object_key)


# ---- stages -------------------------------------------------------------------------------------


def _bronze_file(bench: Bench, name: str, source: Path, expected_key: str, fmt: str) -> None:
    ds = bench.dataset
    expected = ds.expected(expected_key)
    snap = f"bronze-{name}-input"
    bench.fresh_lake()
    bench.land("review", source)
    bench.snapshot(snap)
    result_path = bench.workdir / "result.json"

    def verify(result: dict) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        bench.expect(checks, "records_read", result["records_read"], expected["rows"])
        bench.expect(checks, "rejected", result["rejected"], 0)
        out = bench.lake().store.local_path(result["output_keys"][0])
        checksum = content_checksum(pq.read_table(out, columns=review_columns()), review_columns())
        bench.expect(checks, "bronze_checksum", checksum.as_dict(), expected)
        return checks

    m = Measurement(f"bronze_{name}", "bronze", "system",
                    f"real bronze worker: {source.name} -> Parquet (typing, validation, masking, lineage, rejects)",
                    rows=expected["rows"])
    system = Run(m, _stage_argv("bronze", "--home", bench.lake_dir, "--result", result_path),
                 before=lambda: bench.restore(snap), verify=verify, result_path=result_path)
    if name == "csv_x10":
        m.description = f"real bronze worker on the CSV repeated 10x ({expected['rows']:,} rows): memory must stay flat"
        bench.measure_side_by_side([system])  # all runs: one peak alone varies by ~15 %
        return

    jobs = [system, Run(Measurement(f"bronze_{name}.floor_gzip", "bronze", "floor", f"gzip -dc {source.name} > /dev/null",
                                    rows=expected["rows"]), ["gzip", "-dc", str(source)])]
    skipped: list[Measurement] = []
    for tool in ("pyarrow", "duckdb", "spark"):
        ref_m = Measurement(f"bronze_{name}.ref_{tool}", "bronze", "reference",
                            {"pyarrow": f"pyarrow read_{fmt} + write_table (zstd)",
                             "duckdb": f"DuckDB COPY (FROM read_{fmt}) TO parquet (zstd)",
                             "spark": f"pyspark {ref.SPARK_MASTER}: read.{fmt} with schema -> parquet (zstd)"}[tool],
                            rows=expected["rows"])
        if tool == "spark" and not bench.spark:
            skipped.append(ref_m)
            continue
        output = bench.outputs / f"{ref_m.name}.parquet"
        ref_result = bench.workdir / f"result-{tool}.json"

        def verify_rows(result: dict) -> dict[str, Any]:
            checks: dict[str, Any] = {}
            bench.expect(checks, "rows", result["rows"], expected["rows"])
            return checks

        jobs.append(Run(ref_m, _stage_argv(f"ref-{tool}-{fmt}", "--input", source, "--output", output,
                                           "--result", ref_result), verify=verify_rows, result_path=ref_result,
                        heavy=tool == "spark"))
    bench.measure_side_by_side(jobs)
    for ref_m in skipped:
        bench.skip(ref_m, bench.spark_note)
    if name == "jsonl":
        bench.snapshot("silver-initial-input")  # the last system run's lake (references leave it alone)


def stage_bronze(bench: Bench) -> None:
    ds = bench.dataset
    _bronze_file(bench, "csv", ds.csv, "base", "csv")
    _bronze_file(bench, "csv_x10", ds.x10_csv, "x10", "csv")
    _bronze_file(bench, "jsonl", ds.jsonl, "base", "json")


def _ensure_silver_initial_input(bench: Bench) -> None:
    if bench.has_snapshot("silver-initial-input"):
        return
    bench.fresh_lake()
    bench.land("review", bench.dataset.jsonl)
    bench.run_untimed(_stage_argv("bronze", "--home", bench.lake_dir), "prepare-bronze-jsonl")
    bench.snapshot("silver-initial-input")


def stage_silver(bench: Bench) -> None:
    from datamaster_assets.contracts import get_contract
    from datamaster_assets.transform.silver import silver_schema

    ds = bench.dataset
    base, merged = ds.expected("base"), ds.expected("merged")
    result_path = bench.workdir / "result.json"
    _ensure_silver_initial_input(bench)
    bench.restore("silver-initial-input")
    load_input = bench.inputs / "review-load.bronze.parquet"
    shutil.copyfile(bench.pending_silver_input(), load_input)

    def verify_silver(expected: dict, counts: dict[str, int]) -> Callable[[dict], dict[str, Any]]:
        def verify(result: dict) -> dict[str, Any]:
            checks: dict[str, Any] = {}
            review = result["review"]
            for outcome, n in counts.items():
                bench.expect(checks, f"outcome_{outcome}", review["counts"][outcome], n)
            table = bench.silver_table("review")
            bench.expect(checks, "silver_rows", table.num_rows, expected["rows"])
            bench.expect(checks, "silver_live_rows", table["deleted_at"].null_count, expected["rows"])
            bench.expect(checks, "silver_checksum", content_checksum(table, review_columns()).as_dict(), expected)
            return checks
        return verify

    initial = Measurement("silver_initial", "silver", "system",
                          f"real silver worker: initial load of {base['rows']:,} reviews into silver.review",
                          rows=base["rows"])
    append = Measurement("silver_initial.ref_iceberg_append", "silver", "reference",
                         "pyiceberg create_table + Table.append of the same bronze rows (unpartitioned)",
                         rows=base["rows"])
    append_home = bench.workdir / "iceberg-append"

    def verify_append(result: dict) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        bench.expect(checks, "rows", result["rows"], base["rows"])
        return checks

    append_result = bench.workdir / "result-append.json"
    bench.measure_side_by_side([
        Run(initial, _stage_argv("silver", "--home", bench.lake_dir, "--result", result_path),
            before=lambda: bench.restore("silver-initial-input"),
            verify=verify_silver(base, {"inserted": base["rows"], "stale_ignored": 0}), result_path=result_path),
        Run(append, _stage_argv("ref-iceberg-append", "--home", append_home, "--input", load_input,
                                "--result", append_result), verify=verify_append, result_path=append_result),
    ])

    # The lake after the last initial load, plus the change file through the real bronze worker.
    bench.land("review", ds.changes)
    bench.run_untimed(_stage_argv("bronze", "--home", bench.lake_dir), "prepare-bronze-changes")
    bench.snapshot("silver-merge-input")
    contract = get_contract("review")
    changes = pq.read_table(bench.pending_silver_input())
    upsert_rows = bench.inputs / "review-upsert.parquet"
    pq.write_table(ref.silver_shaped(changes, silver_schema(contract), contract.column_names), upsert_rows)

    merge = Measurement("silver_merge", "silver", "system",
                        f"real silver worker: merge {ds.updates:,} updates + {ds.inserts:,} inserts into "
                        f"{base['rows']:,} rows (copy-on-write, one Iceberg commit)", rows=ds.updates + ds.inserts)
    upsert = Measurement("silver_merge.ref_iceberg_upsert", "silver", "reference",
                         "pyiceberg Table.upsert(join_cols=['review_id']) of the same changes into the same table",
                         rows=ds.updates + ds.inserts)

    def verify_upsert(result: dict) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        bench.expect(checks, "rows_updated", result["rows_updated"], ds.updates)
        bench.expect(checks, "rows_inserted", result["rows_inserted"], ds.inserts)
        bench.expect(checks, "silver_rows", bench.silver_table("review").num_rows, merged["rows"])
        return checks

    # Both restore the same 1.59 M-row table before each run.
    bench.measure_side_by_side([
        Run(merge, _stage_argv("silver", "--home", bench.lake_dir, "--result", result_path),
            before=lambda: bench.restore("silver-merge-input"),
            verify=verify_silver(merged, {"updated": ds.updates, "inserted": ds.inserts, "stale_ignored": 0}),
            result_path=result_path),
        Run(upsert, _stage_argv("ref-iceberg-upsert", "--home", bench.lake_dir, "--input", upsert_rows,
                                "--result", result_path),
            before=lambda: bench.restore("silver-merge-input"), verify=verify_upsert, result_path=result_path,
            heavy=True, repeat_when_slow=True),
    ])


def _ensure_landed(bench: Bench) -> None:
    """The lake with every raw file `datamaster seed` would land (dims + review extracts), cached."""
    if bench.has_snapshot("landed"):
        return
    cached = bench.dataset.directory / "landed-lake"
    if not cached.is_dir():
        from datamaster_assets.seed import seed_raw

        lake = bench.fresh_lake()
        seed_raw(lake, reviews=bench.dataset.reviews, seed=bench.dataset.seed, now=SEED_NOW)
        tmp = cached.with_name(cached.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(bench.lake_dir, tmp)
        tmp.rename(cached)
    shutil.rmtree(bench.snapshots / "landed", ignore_errors=True)
    shutil.copytree(cached, bench.snapshots / "landed")


def _ensure_gold_input(bench: Bench) -> Path:
    export = bench.inputs / "silver"
    if bench.has_snapshot("gold-input") and export.is_dir():
        return export
    _ensure_landed(bench)
    bench.restore("landed")
    if not bench.register_landed():
        raise BenchError("the landed lake has no raw files to process")
    bench.run_untimed(_stage_argv("prepare-silver", "--home", bench.lake_dir), "prepare-silver")
    bench.snapshot("gold-input")
    export.mkdir(parents=True, exist_ok=True)
    for name in ref.SILVER_INPUTS:
        pq.write_table(bench.silver_table(name), export / f"{name}.parquet")
    return export


def _expected_marts(bench: Bench, export: Path) -> dict[str, dict]:
    """Row counts and checksums of review_flat and the marts, from the plain DuckDB SQL reference."""
    if bench.expected_marts is None:
        out = bench.outputs / "expected-gold"
        ref.duckdb_gold(export, out)
        bench.expected_marts = {"review_flat": {"rows": pq.read_metadata(out / "review_flat.parquet").num_rows}}
        for name, columns in ref.MART_CHECK_COLUMNS.items():
            bench.expected_marts[name] = content_checksum(pq.read_table(out / f"{name}.parquet"), columns).as_dict()
    return bench.expected_marts


def _verify_gold(bench: Bench, expected: dict[str, dict], checks: dict[str, Any]) -> None:
    bench.expect(checks, "review_flat_rows", bench.silver_table("review_flat").num_rows, expected["review_flat"]["rows"])
    for name, mart in bench.gold_marts().items():
        got = content_checksum(mart, ref.MART_CHECK_COLUMNS[name]).as_dict()
        bench.expect(checks, f"{name}_checksum", got, expected[name])


def stage_gold(bench: Bench) -> None:
    export = _ensure_gold_input(bench)
    expected = _expected_marts(bench, export)
    result_path = bench.workdir / "result.json"
    rows = expected["review_flat"]["rows"]

    def verify(result: dict) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        bench.expect(checks, "review_flat_rows_reported", result["review_flat_rows"], rows)
        _verify_gold(bench, expected, checks)
        return checks

    gold = Measurement("gold", "gold", "system",
                       "real gold workers: build silver.review_flat + refresh the 5 gold marts (Iceberg)", rows=rows)
    jobs = [Run(gold, _stage_argv("gold", "--home", bench.lake_dir, "--result", result_path),
                before=lambda: bench.restore("gold-input"), verify=verify, result_path=result_path)]
    skipped: list[Measurement] = []
    for tool in ("duckdb", "spark"):
        m = Measurement(f"gold.ref_{tool}", "gold", "reference",
                        {"duckdb": "DuckDB SQL over the silver Parquet: review_flat + 5 marts -> Parquet",
                         "spark": f"pyspark {ref.SPARK_MASTER}: the same SQL -> Parquet"}[tool], rows=rows)
        if tool == "spark" and not bench.spark:
            skipped.append(m)
            continue
        output = bench.outputs / f"gold-{tool}"
        ref_result = bench.workdir / f"result-{tool}.json"

        def verify_ref(result: dict, output=output, tool=tool) -> dict[str, Any]:
            checks: dict[str, Any] = {}
            bench.expect(checks, "review_flat_rows", result["rows"]["review_flat"], rows)
            for name, columns in ref.MART_CHECK_COLUMNS.items():
                got = content_checksum(ref.read_output(output / (name if tool == "spark" else f"{name}.parquet")),
                                       columns).as_dict()
                bench.expect(checks, f"{name}_checksum", got, expected[name])
            return checks

        jobs.append(Run(m, _stage_argv(f"ref-{tool}-gold", "--input", export, "--output", output, "--result",
                                       ref_result), verify=verify_ref, result_path=ref_result, heavy=tool == "spark"))
    bench.measure_side_by_side(jobs)
    for m in skipped:
        bench.skip(m, bench.spark_note)


def stage_e2e(bench: Bench) -> None:
    _ensure_landed(bench)
    export = _ensure_gold_input(bench)
    expected = _expected_marts(bench, export)
    base = bench.dataset.expected("base")

    def verify(_: dict) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        review = bench.silver_table("review")
        bench.expect(checks, "silver_review_checksum", content_checksum(review, review_columns()).as_dict(), base)
        _verify_gold(bench, expected, checks)
        lake = bench.lake()
        bad = [s for (_, _, s), n in lake.ledger.counts().items() if s != "success" and n]
        bench.expect(checks, "ledger_items_not_success", bad, [])
        return checks

    m = Measurement("e2e", "e2e", "system",
                    "`datamaster run` on a fresh DATAMASTER_HOME: landed raw files -> bronze -> silver -> gold",
                    rows=base["rows"])
    bench.measure(m, [*_datamaster_cli(), "run"], before=lambda: bench.restore("landed"), verify=verify)


STAGE_FUNCTIONS: dict[str, Callable[[Bench], None]] = {
    "bronze": stage_bronze,
    "silver": stage_silver,
    "gold": stage_gold,
    "e2e": stage_e2e,
}


def _spark_choice(spark: bool | None, quick: bool) -> tuple[bool, str]:
    if spark is False:
        return False, "skipped: pyspark references turned off"
    if not ref.java_available():
        return False, "skipped: no Java runtime (JAVA_HOME unset and no java on PATH)"
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False, "skipped: pyspark is not installed (pip install 'datamaster[spark]')"
    if spark is None and quick:
        return False, "skipped in --quick (JVM start alone takes ~10 s per run)"
    return True, ""


def bench_command(quick: bool, runs: int, stages: list[str] | None, out: Path) -> str:
    parts = ["datamaster", "bench"]
    if quick:
        parts.append("--quick")
    parts += ["--runs", str(runs)]
    for s in stages or []:
        parts += ["--stage", s]
    parts += ["--out", str(out)]
    return " ".join(parts)


def bench_main(
    *,
    quick: bool,
    runs: int,
    out: Path,
    stages: list[str] | None,
    cache_dir: Path,
    reviews: int | None = None,
    spark: bool | None = None,
    seed: int = DEFAULT_SEED,
    keep_workdir: bool = False,
) -> dict:
    """Run the benchmark, print the tables, write the JSON report to ``out`` and return it.

    ``reviews`` overrides the size (default: 1,586,614, or 50,000 with ``quick``); ``spark`` forces
    the pyspark references on or off (default: on when Java and pyspark are present, off in quick).
    """
    chosen = list(dict.fromkeys(stages)) if stages else list(STAGES)
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    n = reviews if reviews is not None else (QUICK_REVIEWS if quick else FULL_SIZE_REVIEWS)
    tune_process()  # here too when called from Python: the floor and pyspark inherit it
    started = time.perf_counter()
    cache_dir = Path(cache_dir).absolute()
    print(f"datamaster bench: {n:,} reviews, {runs} run(s) per measurement, stages {', '.join(chosen)}", flush=True)
    dataset, generated = ensure_dataset(cache_dir, n, seed)
    print(f"  data set {'generated' if generated else 'cached'} in {dataset.directory}", flush=True)
    use_spark, spark_note = _spark_choice(spark, quick)
    workdir = cache_dir / "work"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    bench = Bench(dataset, workdir, runs, use_spark, spark_note)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write_report(status: str) -> dict:
        """The report so far, written after every stage so an interrupted run still leaves one."""
        measurements = [m.as_dict() for m in bench.measurements]
        report = {
            "command": bench_command(quick, runs, stages, out),
            "status": status,  # complete | running | failed: <reason>
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "quick": quick,
            "full_size": n == FULL_SIZE_REVIEWS,
            "runs": runs,
            "stages": chosen,
            "machine": machine_info(),
            "dataset": {
                "reviews": n,
                "seed": seed,
                "updates": dataset.updates,
                "inserts": dataset.inserts,
                "files": dataset.manifest["files"],
                "expected": dataset.manifest["expected"],
                "generated_now": generated,
                "generated_in_s": dataset.manifest["generated_in_s"],
            },
            "measurements": measurements,
            "verified": all(c["ok"] for m in bench.measurements for c in m.checks.values()),
            "duration_s": round(time.perf_counter() - started, 1),
        }
        report["targets"] = evaluate_targets(measurements, full_size=report["full_size"])
        out.write_text(json.dumps(report, indent=2))
        return report

    try:
        for stage in STAGES:
            if stage in chosen:
                print(f"[{stage}]", flush=True)
                STAGE_FUNCTIONS[stage](bench)
                write_report("running")
    except BaseException as exc:
        write_report(f"failed: {type(exc).__name__}: {exc}")
        raise
    finally:
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    report = write_report("complete")
    print(format_report(report), flush=True)
    print(f"report written to {out}", flush=True)
    return report
