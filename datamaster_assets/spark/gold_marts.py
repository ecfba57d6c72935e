"""Spark job: rebuild silver.review_flat and refresh the gold marts for the affected months.

Entry point for ``spark-submit`` / EMR Serverless and importable::

    gold_marts.py --mode iceberg --catalog glue --silver-namespace dm_silver --gold-namespace dm_gold
    gold_marts.py --mode parquet --source review=silver/review --source beer=silver/beer \\
        --source brewery=silver/brewery --source profile=silver/profile --output lake/

Affected months are the old and new months of every review whose gold inputs changed since the
previous review_flat (all months on a first build), or ``--months 2010-01,2010-02`` /
``--all-months``. Each mart is then overwritten for exactly those months: Iceberg
``overwrite(<months predicate>)`` in one commit per mart; Parquet dynamic partition overwrite plus
removal of affected months left without rows. Same semantics as ``workers.gold`` (Arrow engine),
including the snapshot properties the Arrow worker reads (``datamaster.gold-affected-months`` on
review_flat, ``datamaster.review-flat-snapshot`` on each mart), so the engines can alternate.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

from datamaster_assets.spark import gold_sql
from datamaster_assets.spark.jobs import (
    CATALOG_MODES,
    DEFAULT_CATALOG,
    JobReporter,
    configure_session,
    job_reporter,
    job_session,
    parse_months,
    parse_pairs,
)
from datamaster_assets.spark.silver_sql import quote
from datamaster_assets.transform.gold import GOLD_INPUT_COLUMNS, MARTS, PARTITION_COLUMNS, Month, mart_specs
from datamaster_assets.transform.review_flat import REQUIRED_INPUT_COLUMNS
from datamaster_assets.workers.gold import PROP_AFFECTED_MONTHS, PROP_BUILT_AT, PROP_SOURCE_SNAPSHOT, encode_months

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SILVER_INPUTS = tuple(REQUIRED_INPUT_COLUMNS)  # review, beer, brewery, profile
REVIEW_FLAT = "review_flat"


class GoldInputError(ValueError):
    """A silver input is missing a column, or a dimension has duplicate live keys."""


@dataclass
class GoldRun:
    review_flat: "DataFrame"
    review_flat_rows: int
    months: set[Month] | None  # None: every month (full rebuild)
    flat_changed: bool
    diff_months: set[Month]  # months whose gold inputs changed since the previous review_flat
    marts: dict[str, "DataFrame"] = field(default_factory=dict)  # rows for `months`


def register_inputs(spark: "SparkSession", inputs: dict[str, "DataFrame"]) -> dict[str, str]:
    """Temp views of the silver inputs (only the columns review_flat reads), by table name."""
    views = {}
    for name in SILVER_INPUTS:
        if name not in inputs:
            raise GoldInputError(f"silver.{name} is missing (review_flat needs {list(SILVER_INPUTS)})")
        missing = [c for c in REQUIRED_INPUT_COLUMNS[name] if c not in inputs[name].columns]
        if missing:
            raise GoldInputError(f"silver.{name} lacks column(s) {missing} needed by review_flat")
        views[name] = f"dm_gold_in_{name}"
        inputs[name].select(*REQUIRED_INPUT_COLUMNS[name]).createOrReplaceTempView(views[name])
    return views


def build_review_flat(spark: "SparkSession", inputs: dict[str, "DataFrame"]) -> tuple["DataFrame", int]:
    """review_flat (checkpointed) and its row count; fails like the Arrow engine when a dimension
    has duplicate live keys (the join would multiply reviews)."""
    views = register_inputs(spark, inputs)
    flat = spark.sql(gold_sql.review_flat_sql(views["review"], views["beer"], views["brewery"], views["profile"]))
    flat = flat.localCheckpoint()
    rows = flat.count()
    live = spark.sql(f"SELECT count(*) FROM {views['review']} WHERE deleted_at IS NULL").first()[0]
    if rows != live:
        raise GoldInputError(
            f"review_flat has {rows} rows for {live} live reviews: a dimension has duplicate live keys "
            "(silver.beer/brewery/profile must be unique per key)"
        )
    return flat, rows


def diff_flat(spark: "SparkSession", old: "DataFrame | None", new: "DataFrame") -> tuple[bool, set[Month]]:
    """(anything changed, months whose gold inputs changed) from ``old`` to ``new`` review_flat;
    without ``old``: (True, every month)."""
    new.createOrReplaceTempView("dm_gold_flat_new")
    if old is None:
        rows = spark.sql("SELECT DISTINCT review_year, review_month FROM dm_gold_flat_new").collect()
        return True, {(int(r[0]), int(r[1])) for r in rows}
    old.select(*new.columns).createOrReplaceTempView("dm_gold_flat_old")
    delta = spark.sql(gold_sql.flat_delta_sql("dm_gold_flat_old", "dm_gold_flat_new", GOLD_INPUT_COLUMNS)).localCheckpoint()
    delta.createOrReplaceTempView("dm_gold_flat_delta")
    if delta.isEmpty():
        return False, set()
    rows = spark.sql(gold_sql.affected_months_sql("dm_gold_flat_delta")).collect()
    return True, {(int(r[0]), int(r[1])) for r in rows}


def compute(
    spark: "SparkSession",
    inputs: dict[str, "DataFrame"],
    previous_flat: "DataFrame | None",
    months: set[Month] | None = None,
    all_months: bool = False,
    marts: Sequence[str] | None = None,
) -> GoldRun:
    """review_flat and each mart's rows for the affected months (lazy mart DataFrames).

    ``months`` given: exactly those; ``all_months``: every month (None); otherwise the months the
    diff against ``previous_flat`` yields."""
    flat, rows = build_review_flat(spark, inputs)
    flat_changed, diff_months = diff_flat(spark, previous_flat, flat)
    chosen = None if all_months else (set(months) if months is not None else diff_months)
    flat.createOrReplaceTempView("dm_gold_review_flat")
    run = GoldRun(review_flat=flat, review_flat_rows=rows, months=chosen, flat_changed=flat_changed, diff_months=diff_months)
    if chosen is None or chosen:
        for spec in mart_specs(marts):
            run.marts[spec.name] = spark.sql(gold_sql.mart_sql(spec, "dm_gold_review_flat", chosen))
    return run


# ---- writers ----------------------------------------------------------------------------------
def write_parquet(spark: "SparkSession", run: GoldRun, output: str) -> dict[str, int]:
    """review_flat (whole) and marts (affected month partitions) under ``output``; rows written per mart.

    A refresh first removes the affected months' partition directories, then appends their new
    rows, so a month that lost all its reviews disappears too. (Not atomic: Parquet mode is the
    local and test mode; on AWS the Iceberg mode commits each mart in one snapshot.)"""
    root = output.rstrip("/")
    if run.flat_changed:
        run.review_flat.write.mode("overwrite").parquet(f"{root}/{REVIEW_FLAT}")
    written = {}
    for name, rows in run.marts.items():
        path = f"{root}/{name}"
        stored = spark.read.schema(gold_sql.table_ddl(MARTS[name].schema))  # no inference: a mart may be empty
        writer = rows.write.partitionBy(*PARTITION_COLUMNS)
        if run.months is None:
            writer.mode("overwrite").option("partitionOverwriteMode", "static").parquet(path)
            written[name] = stored.parquet(path).count()
            continue
        for year, month in sorted(run.months):
            _delete_path(spark, f"{path}/review_year={year}/review_month={month}")
        writer.mode("append").parquet(path)
        written[name] = stored.parquet(path).where(gold_sql.months_condition_sql(run.months)).count()
    return written


def _delete_path(spark: "SparkSession", path: str) -> None:
    jvm = spark.sparkContext._jvm  # Hadoop FileSystem: the same storage layer Spark writes through
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(hadoop_path, True)


def iceberg_name(catalog: str, namespace: str, table: str) -> str:
    return ".".join(quote(p) for p in (catalog, namespace, table))


def latest_snapshot_id(spark: "SparkSession", table: str) -> int | None:
    row = spark.sql(f"SELECT snapshot_id FROM {table}.snapshots ORDER BY committed_at DESC LIMIT 1").first()
    return None if row is None else int(row[0])


def write_iceberg(spark: "SparkSession", run: GoldRun, flat_table: str, gold_tables: dict[str, str]) -> dict[str, int]:
    """review_flat (one overwrite commit, recording the affected months) and each mart (one
    overwrite-by-months commit, recording the review_flat snapshot it reflects)."""
    from pyspark.sql import functions as F

    now = datetime.now(timezone.utc).isoformat()
    if run.flat_changed:
        (
            run.review_flat.writeTo(flat_table)
            .option(f"snapshot-property.{PROP_AFFECTED_MONTHS}", encode_months(run.diff_months))
            .option(f"snapshot-property.{PROP_BUILT_AT}", now)
            .overwrite(F.lit(True))
        )
    flat_snapshot = latest_snapshot_id(spark, flat_table)
    condition = F.lit(True) if run.months is None else F.expr(gold_sql.months_condition_sql(run.months))
    written = {}
    for name, rows in run.marts.items():
        writer = rows.writeTo(gold_tables[name]).option(f"snapshot-property.{PROP_BUILT_AT}", now)
        if flat_snapshot is not None:
            writer = writer.option(f"snapshot-property.{PROP_SOURCE_SNAPSHOT}", str(flat_snapshot))
        writer.overwrite(condition)
        written[name] = added_records(spark, gold_tables[name])
    return written


def marts_in_sync(spark: "SparkSession", gold_tables: dict[str, str], flat_snapshot: int | None) -> bool:
    """Every mart's latest snapshot was built from review_flat snapshot ``flat_snapshot``."""
    if flat_snapshot is None:
        return True  # first build: the diff yields every month anyway
    for table in gold_tables.values():
        row = spark.sql(
            f"SELECT summary['{PROP_SOURCE_SNAPSHOT}'] FROM {table}.snapshots ORDER BY committed_at DESC LIMIT 1"
        ).first()
        if row is None or row[0] != str(flat_snapshot):
            return False
    return True


def added_records(spark: "SparkSession", table: str) -> int:
    """Rows the table's latest snapshot added (Iceberg snapshot summary)."""
    row = spark.sql(
        f"SELECT summary['added-records'] FROM {table}.snapshots ORDER BY committed_at DESC LIMIT 1"
    ).first()
    return int(row[0] or 0) if row is not None else 0


# ---- entry point ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gold_marts.py", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=CATALOG_MODES, default="iceberg")
    parser.add_argument("--catalog", default=DEFAULT_CATALOG, help="iceberg: Spark catalog name (Glue)")
    parser.add_argument("--silver-namespace", default="dm_silver")
    parser.add_argument("--gold-namespace", default="dm_gold")
    parser.add_argument("--source", action="append", default=[], help="parquet: TABLE=PATH of a silver table")
    parser.add_argument("--previous-flat", help="parquet: the previous review_flat (default: <output>/review_flat if present)")
    parser.add_argument("--output", help="parquet: directory for review_flat/ and one directory per mart")
    parser.add_argument("--mart", action="append", help="only these marts (default: all)")
    months = parser.add_mutually_exclusive_group()
    months.add_argument("--months", action="append", help="recompute these months: YYYY-MM[,YYYY-MM...]")
    months.add_argument("--all-months", action="store_true", help="recompute every month")
    args = parser.parse_args(list(argv))
    if args.mode == "parquet" and (not args.output or not args.source):
        parser.error("--mode parquet needs --output and a --source per silver table")
    return args


def _path_exists(spark: "SparkSession", path: str) -> bool:
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    return bool(hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).exists(hadoop_path))


def _month_labels(months: set[Month] | None) -> str:
    return "all" if months is None else ", ".join(f"{y}-{m:02d}" for y, m in sorted(months))


def run(spark: "SparkSession", args: argparse.Namespace, reporter: JobReporter) -> dict[str, Any]:
    """Run the job for parsed ``args``; returns (and reports) the metadata per asset."""
    started = time.monotonic()
    configure_session(spark)
    months = parse_months(args.months) if args.months else None
    if args.mode == "iceberg":
        silver = {name: spark.table(iceberg_name(args.catalog, args.silver_namespace, name)) for name in SILVER_INPUTS}
        flat_table = iceberg_name(args.catalog, args.silver_namespace, REVIEW_FLAT)
        spark.sql(gold_sql.create_review_flat_sql(flat_table))
        gold_tables = {}
        for spec in mart_specs(args.mart):
            gold_tables[spec.name] = iceberg_name(args.catalog, args.gold_namespace, spec.name)
            spark.sql(gold_sql.create_mart_sql(spec, gold_tables[spec.name]))
        flat_snapshot = latest_snapshot_id(spark, flat_table)
        previous = spark.table(flat_table) if flat_snapshot is not None else None
        # The diff only covers changes since the current review_flat: a mart built from an older
        # one (a review_flat written by the Arrow worker, a failed run) is rebuilt in full.
        all_months = args.all_months or (months is None and not marts_in_sync(spark, gold_tables, flat_snapshot))
        result = compute(spark, silver, previous, months, all_months, args.mart)
        written = write_iceberg(spark, result, flat_table, gold_tables)
        where = {REVIEW_FLAT: flat_table, **gold_tables}
    else:
        paths = parse_pairs(args.source, "--source")
        silver = {name: spark.read.parquet(path) for name, path in paths.items()}
        previous_path = args.previous_flat or f"{args.output.rstrip('/')}/{REVIEW_FLAT}"
        previous = spark.read.parquet(previous_path) if _path_exists(spark, previous_path) else None
        result = compute(spark, silver, previous, months, args.all_months, args.mart)
        written = write_parquet(spark, result, args.output)
        where = {name: f"{args.output.rstrip('/')}/{name}" for name in [REVIEW_FLAT, *result.marts]}

    duration = round(time.monotonic() - started, 3)
    label = _month_labels(result.months)
    n_months = None if result.months is None else len(result.months)
    metadata: dict[str, Any] = {
        REVIEW_FLAT: {"dagster/row_count": result.review_flat_rows, "written": result.flat_changed,
                      "affected_months": n_months, "affected_months_list": label, "table": where[REVIEW_FLAT].replace("`", "")},
    }
    for name, rows in written.items():
        metadata[name] = {"rows_written": rows, "affected_months": n_months, "affected_months_list": label,
                          "table": where[name].replace("`", "")}
    for asset, values in metadata.items():
        values.update(engine="spark", mode=args.mode, duration_s=duration)
        layer = "silver" if asset == REVIEW_FLAT else "gold"
        reporter.materialized(values, asset_key=f"{layer}/{asset}")
    reporter.log(f"gold: review_flat {result.review_flat_rows} rows, months {label}, marts {sorted(written)}")
    return metadata


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with job_reporter() as reporter:
        run(job_session("datamaster-gold"), args, reporter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
