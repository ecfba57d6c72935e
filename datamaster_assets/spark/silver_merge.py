"""Spark job: apply bronze CDC change files to one silver table (DESIGN sections 6 and 7).

Entry point for ``spark-submit`` / EMR Serverless (``entryPoint`` = this file) and importable::

    silver_merge.py --table review --manifest s3://lake/_manifests/silver-review-<batch>.txt \\
        --mode iceberg --catalog glue --namespace dm_silver
    silver_merge.py --table review --bronze a.parquet b.parquet \\
        --mode parquet --current silver/review/v1 --output silver/review/v2

``iceberg`` runs ``MERGE INTO <catalog>.<namespace>.<table>`` (copy-on-write, one commit);
``parquet`` writes the complete merged table to ``--output`` (the local mode the tests compare
with ``transform.silver.merge_changes``). The SQL comes from ``spark.silver_sql``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from datamaster_assets.contracts import Contract, get_contract
from datamaster_assets.spark import silver_sql
from datamaster_assets.spark.jobs import (
    CATALOG_MODES,
    DEFAULT_CATALOG,
    JobReporter,
    configure_session,
    job_reporter,
    job_session,
    read_manifest_lines,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


class BronzeChangesError(ValueError):
    """The bronze change rows cannot be merged (nulls in required fields, unknown operations)."""


@dataclass(frozen=True)
class SparkMergeResult:
    counts: dict[str, int]  # change rows per outcome (transform.silver.OUTCOMES)
    changes_read: int
    merged: "DataFrame | None" = None  # parquet mode: the complete new silver table

    @property
    def applied(self) -> int:
        return sum(v for k, v in self.counts.items() if k not in ("stale_ignored", "superseded"))


def _view(prefix: str, contract: Contract) -> str:
    return f"dm_{prefix}_{contract.name}"


def read_bronze(spark: "SparkSession", contract: Contract, uris: Sequence[str]) -> "DataFrame":
    """The bronze change rows of ``uris`` (Parquet), typed by the contract."""
    if not uris:
        raise BronzeChangesError(f"no bronze files given for table {contract.name!r}")
    return spark.read.schema(silver_sql.bronze_ddl(contract)).parquet(*uris)


def empty_silver(spark: "SparkSession", contract: Contract) -> "DataFrame":
    ddl = ", ".join(f"{silver_sql.quote(n)} {t}" for n, t in silver_sql.silver_columns(contract))
    return spark.createDataFrame([], ddl)


def read_silver_parquet(spark: "SparkSession", contract: Contract, path: str) -> "DataFrame":
    """A silver table stored as Parquet (by this job or by the Arrow engine), in silver column order."""
    columns = silver_sql.silver_columns(contract)
    ddl = ", ".join(f"{silver_sql.quote(n)} {t}" for n, t in columns)
    return spark.read.schema(ddl).parquet(path).select(*[n for n, _ in columns])


def check_changes(spark: "SparkSession", contract: Contract, changes_view: str) -> None:
    """Raise :class:`BronzeChangesError` naming each bad field and its first ``file:line``."""
    row = spark.sql(silver_sql.validation_sql(contract, changes_view)).first().asDict()
    problems = []
    for name, value in row.items():
        if name.startswith("nulls:") and value:
            field = name[len("nulls:"):]
            first = row[f"first:{field}"]
            if field == "_op_value":
                problems.append(f"{value} row(s) with _op not in {list(silver_sql.CDC_OPERATIONS)} (first at {first})")
            else:
                problems.append(f"{value} row(s) with null {field} (first at {first})")
    if problems:
        raise BronzeChangesError(f"bronze changes for {contract.name!r}: " + "; ".join(problems))


def plan_merge(spark: "SparkSession", contract: Contract, changes: "DataFrame", target: str) -> tuple[str, dict[str, int], int]:
    """Register the merge source for ``changes`` against the table or view ``target`` and count
    outcomes. The source is checkpointed, so it stays what it was when the MERGE rewrites the
    target it was computed from. Returns (source view, outcome counts, change rows read)."""
    changes_view, fresh_view, source_view = (_view(p, contract) for p in ("changes", "fresh", "source"))
    changes = changes.cache()
    changes.createOrReplaceTempView(changes_view)
    check_changes(spark, contract, changes_view)
    spark.sql(silver_sql.fresh_changes_sql(contract, changes_view, target)).createOrReplaceTempView(fresh_view)
    spark.sql(silver_sql.source_sql(contract, fresh_view)).localCheckpoint().createOrReplaceTempView(source_view)
    counts_sql = silver_sql.outcome_counts_sql(contract, changes_view, fresh_view, source_view, target)
    counts = {k: int(v or 0) for k, v in spark.sql(counts_sql).first().asDict().items()}
    changes_read = sum(counts.values())
    return source_view, counts, changes_read


def merge_parquet(
    spark: "SparkSession", contract: Contract, changes: "DataFrame", current: "DataFrame | None"
) -> SparkMergeResult:
    """The complete new silver table (lazy DataFrame) for ``changes`` applied to ``current``."""
    current_view = _view("current", contract)
    (current if current is not None else empty_silver(spark, contract)).createOrReplaceTempView(current_view)
    source_view, counts, read = plan_merge(spark, contract, changes, current_view)
    merged = spark.sql(silver_sql.merged_table_sql(contract, current_view, source_view))
    return SparkMergeResult(counts=counts, changes_read=read, merged=merged)


def iceberg_table(catalog: str, namespace: str, table: str) -> str:
    return ".".join(silver_sql.quote(p) for p in (catalog, namespace, table))


def merge_iceberg(spark: "SparkSession", contract: Contract, changes: "DataFrame", table: str) -> SparkMergeResult:
    """``MERGE INTO`` the Iceberg silver table (created when missing)."""
    spark.sql(silver_sql.create_table_sql(contract, table))
    source_view, counts, read = plan_merge(spark, contract, changes, table)
    if sum(v for k, v in counts.items() if k not in ("stale_ignored", "superseded")):
        spark.sql(silver_sql.merge_into_sql(contract, table, source_view))
    return SparkMergeResult(counts=counts, changes_read=read)


def latest_snapshot_id(spark: "SparkSession", table: str) -> int | None:
    row = spark.sql(f"SELECT snapshot_id FROM {table}.snapshots ORDER BY committed_at DESC LIMIT 1").first()
    return None if row is None else int(row[0])


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="silver_merge.py", description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help="source table (a contract name)")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--bronze", nargs="+", help="bronze Parquet file URIs")
    inputs.add_argument("--manifest", help="URI of a text file listing bronze file URIs, one per line")
    parser.add_argument("--mode", choices=CATALOG_MODES, default="iceberg")
    parser.add_argument("--catalog", default=DEFAULT_CATALOG, help="iceberg: Spark catalog name (Glue)")
    parser.add_argument("--namespace", default="dm_silver", help="iceberg: database of the silver tables")
    parser.add_argument("--current", help="parquet: the current silver table (absent: start empty)")
    parser.add_argument("--output", help="parquet: where to write the merged silver table")
    args = parser.parse_args(list(argv))
    if args.mode == "parquet" and not args.output:
        parser.error("--mode parquet needs --output")
    if args.mode == "parquet" and args.current and args.current.rstrip("/") == args.output.rstrip("/"):
        parser.error("--output must differ from --current (Spark cannot overwrite what it reads)")
    return args


def run(spark: "SparkSession", args: argparse.Namespace, reporter: JobReporter) -> dict[str, Any]:
    """Run the job for parsed ``args``; returns (and reports) the materialization metadata."""
    started = time.monotonic()
    configure_session(spark)
    contract = get_contract(args.table)
    uris = args.bronze or read_manifest_lines("\n".join(r.value for r in spark.read.text(args.manifest).collect()))
    changes = read_bronze(spark, contract, uris)
    metadata: dict[str, Any] = {"table": contract.name, "engine": "spark", "mode": args.mode, "bronze_files": len(uris)}
    if args.mode == "iceberg":
        table = iceberg_table(args.catalog, args.namespace, contract.name)
        result = merge_iceberg(spark, contract, changes, table)
        metadata["iceberg_table"] = table.replace("`", "")
        metadata["snapshot_id"] = latest_snapshot_id(spark, table)
        metadata["dagster/row_count"] = spark.table(table).count()
    else:
        current = read_silver_parquet(spark, contract, args.current) if args.current else None
        result = merge_parquet(spark, contract, changes, current)
        result.merged.write.mode("overwrite").parquet(args.output)
        metadata["output"] = args.output
        metadata["dagster/row_count"] = spark.read.parquet(args.output).count()
    metadata.update(changes_read=result.changes_read, changes_applied=result.applied, **result.counts)
    metadata["duration_s"] = round(time.monotonic() - started, 3)
    reporter.log(f"silver {contract.name}: {result.changes_read} changes read, {result.applied} applied")
    reporter.materialized(metadata)
    return metadata


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with job_reporter() as reporter:
        run(job_session(f"datamaster-silver-{args.table}"), args, reporter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
