"""Full-size gold benchmark, Spark next to the Arrow/DuckDB engine (not a test)::

    python -m datamaster_assets.bench.gold_spark --reviews 1586614 --repeat 3

On the synthetic silver set of ``bench.gold_engines`` (real dimensions, generated reviews), each
round times, side by side:

- ``duckdb in-process``: review_flat + five marts + zstd Parquet output (``bench.gold_engines``);
- ``spark job, whole process``: ``python -m datamaster_assets.spark.gold_marts --mode parquet
  --all-months`` in a fresh process on ``local[2]`` (interpreter, JVM start and stop included);
- ``spark job, warm session``: the same job function in an already started local[2] session.

Then it checks that Spark's review_flat and marts equal the Arrow engine's (row for row).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from datamaster_assets.transform.gold import MARTS, PARTITION_COLUMNS, compute_marts
from datamaster_assets.transform.review_flat import REVIEW_FLAT_SCHEMA, build_review_flat
from datamaster_assets.bench.gold_engines import FULL_SIZE_REVIEWS, bench_compute, synthetic_silver

LOCAL_SPARK_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.catalogImplementation": "in-memory",
    "spark.driver.memory": "3g",
}


def submit_args(conf: dict[str, str]) -> str:
    """PYSPARK_SUBMIT_ARGS for a plain ``python`` process that starts its own local[2] JVM."""
    return " ".join(["--master local[2]", *(f"--conf {k}={v}" for k, v in conf.items() if k != "spark.driver.memory"),
                     f"--driver-memory {conf['spark.driver.memory']}", "pyspark-shell"])


def job_argv(silver_dir: Path, output: Path) -> list[str]:
    sources = [f"--source={name}={silver_dir / name}" for name in ("review", "beer", "brewery", "profile")]
    return ["--mode", "parquet", *sources, "--output", str(output), "--all-months"]


def write_silver(silver: dict[str, pa.Table], root: Path) -> None:
    for name, table in silver.items():
        (root / name).mkdir(parents=True)
        pq.write_table(table, root / name / "part-0.parquet", compression="zstd")


def verify(silver: dict[str, pa.Table], output: Path) -> dict[str, int]:
    """Spark output equals the Arrow engine's; returns rows per mart."""
    flat = build_review_flat(silver["review"], silver["beer"], silver["brewery"], silver["profile"])
    spark_flat = pq.read_table(output / "review_flat").cast(REVIEW_FLAT_SCHEMA).sort_by("review_id")
    if not spark_flat.equals(flat.cast(REVIEW_FLAT_SCHEMA).sort_by("review_id")):  # labels: dictionaries here
        raise AssertionError("review_flat differs between Spark and the Arrow engine")
    partitioning = ds.partitioning(pa.schema([pa.field(c, pa.int32()) for c in PARTITION_COLUMNS]), flavor="hive")
    counts = {}
    for name, expected in compute_marts(flat).items():
        schema = MARTS[name].schema
        key = [(c, "ascending") for c in [*PARTITION_COLUMNS, *MARTS[name].grain]]
        got = ds.dataset(output / name, schema=schema, partitioning=partitioning).to_table().sort_by(key)
        if not got.equals(expected.sort_by(key)):
            raise AssertionError(f"{name} differs between Spark and the Arrow engine")
        counts[name] = got.num_rows
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=FULL_SIZE_REVIEWS)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    silver = synthetic_silver(args.reviews)
    timings: dict[str, list[float]] = {}
    env = {**os.environ, "PYSPARK_SUBMIT_ARGS": submit_args(LOCAL_SPARK_CONF), "PYSPARK_PYTHON": sys.executable}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_silver(silver, root / "silver")
        from pyspark.sql import SparkSession

        from datamaster_assets.spark import gold_marts
        from datamaster_assets.spark.jobs import JobReporter

        for i in range(args.repeat):
            out = root / f"duckdb-{i}"
            out.mkdir()
            timings.setdefault("duckdb in-process (+parquet)", []).append(bench_compute(silver, out))
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "datamaster_assets.spark.gold_marts",
                            *job_argv(root / "silver", root / f"spark-proc-{i}")], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            timings.setdefault("spark job, whole process (local[2])", []).append(time.perf_counter() - start)

        builder = SparkSession.builder.master("local[2]")
        for key, value in LOCAL_SPARK_CONF.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        try:
            for i in range(args.repeat):
                job = gold_marts.parse_args(job_argv(root / "silver", root / f"spark-warm-{i}"))
                start = time.perf_counter()
                gold_marts.run(spark, job, JobReporter(None))
                timings.setdefault("spark job, warm session (local[2])", []).append(time.perf_counter() - start)
        finally:
            spark.stop()
        counts = verify(silver, root / "spark-proc-0")
    print(f"{args.reviews:,} reviews, median of {args.repeat} runs (wall seconds)")
    for step, values in timings.items():
        print(f"{step:42s} {statistics.median(values):7.2f} s   ({', '.join(f'{v:.2f}' for v in values)})")
    print("Spark output identical to the Arrow engine; rows per mart:", counts)


if __name__ == "__main__":
    main()
