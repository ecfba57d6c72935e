"""Reference implementations the benchmark runs side by side with the real stages.

They do the plain version of each stage's work with a well-known tool, so the report can state
ratios that survive a noisy machine: pyarrow and DuckDB CSV/JSON -> Parquet, pyiceberg's own
``append`` and ``Table.upsert``, the gold SQL in DuckDB and in pyspark local mode. None of them
types, validates, masks or adds lineage; they are yardsticks, not alternatives.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PARQUET_COMPRESSION = "zstd"
SPARK_MASTER = "local[2]"

REVIEW_DDL = (
    "review_id BIGINT, brewery_id BIGINT, beer_id BIGINT, profile_id BIGINT, review_overall DOUBLE, "
    "review_aroma DOUBLE, review_appearance DOUBLE, review_palate DOUBLE, review_taste DOUBLE, review_time BIGINT"
)
ENVELOPE_DDL = (
    f"data STRUCT<{REVIEW_DDL.replace(' BIGINT', ': BIGINT').replace(' DOUBLE', ': DOUBLE')}>, "
    "metadata STRUCT<`timestamp`: STRING, `record-type`: STRING, operation: STRING, "
    "`partition-key-type`: STRING, `schema-name`: STRING, `table-name`: STRING, `transaction-id`: BIGINT>"
)

# The gold work in plain SQL that DuckDB and Spark SQL both accept: review_flat, then five marts.
REVIEW_FLAT_SQL = """
SELECT r.review_id, r.review_time,
       year(r.review_time) AS review_year, month(r.review_time) AS review_month,
       r.review_overall, r.review_aroma, r.review_appearance, r.review_palate, r.review_taste,
       r.beer_id, b.beer_name, b.beer_style, b.beer_abv,
       r.brewery_id, br.brewery_name,
       r.profile_id, p.profile_name, p.state,
       r.created_at, r.updated_at
FROM review r
LEFT JOIN (SELECT beer_id, beer_name, beer_style, beer_abv FROM beer WHERE deleted_at IS NULL) b ON b.beer_id = r.beer_id
LEFT JOIN (SELECT brewery_id, brewery_name FROM brewery WHERE deleted_at IS NULL) br ON br.brewery_id = r.brewery_id
LEFT JOIN (SELECT profile_id, profile_name, state FROM profile WHERE deleted_at IS NULL) p ON p.profile_id = r.profile_id
WHERE r.deleted_at IS NULL
"""
MART_SQL = {
    "top_beers_by_rating": """
        SELECT review_year, review_month, beer_id, any_value(beer_name) AS beer_name,
               any_value(beer_style) AS beer_style, avg(review_overall) AS avg_rating, count(*) AS total_reviews
        FROM review_flat GROUP BY review_year, review_month, beer_id HAVING count(*) >= 25""",
    "top_breweries_by_rating": """
        SELECT review_year, review_month, brewery_id, any_value(brewery_name) AS brewery_name,
               avg(review_overall) AS avg_rating, count(*) AS total_reviews
        FROM review_flat GROUP BY review_year, review_month, brewery_id""",
    "top_styles_by_popularity": """
        SELECT review_year, review_month, beer_style, count(*) AS total_reviews, avg(review_overall) AS avg_rating
        FROM review_flat GROUP BY review_year, review_month, beer_style""",
    "state_by_review_volume": """
        SELECT review_year, review_month, state, count(*) AS total_reviews
        FROM review_flat GROUP BY review_year, review_month, state""",
    "top_drinkers": """
        SELECT review_year, review_month, profile_id, any_value(profile_name) AS profile_name,
               any_value(state) AS state, count(*) AS total_reviews, avg(review_overall) AS avg_rating
        FROM review_flat GROUP BY review_year, review_month, profile_id""",
}
# Columns a mart's checksum covers: the same in the real marts and in every reference.
MART_CHECK_COLUMNS = {
    "top_beers_by_rating": ["review_year", "review_month", "beer_id", "beer_name", "beer_style", "avg_rating", "total_reviews"],
    "top_breweries_by_rating": ["review_year", "review_month", "brewery_id", "brewery_name", "avg_rating", "total_reviews"],
    "top_styles_by_popularity": ["review_year", "review_month", "beer_style", "total_reviews", "avg_rating"],
    "state_by_review_volume": ["review_year", "review_month", "state", "total_reviews"],
    "top_drinkers": ["review_year", "review_month", "profile_id", "profile_name", "state", "total_reviews", "avg_rating"],
}
SILVER_INPUTS = ("review", "beer", "brewery", "profile")


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ---- bronze ---------------------------------------------------------------------------------


def pyarrow_csv_to_parquet(source: Path, output: Path) -> int:
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(source)
    pq.write_table(table, output, compression=PARQUET_COMPRESSION)
    return table.num_rows


def pyarrow_json_to_parquet(source: Path, output: Path) -> int:
    import pyarrow.json as pajson

    table = pajson.read_json(source)
    pq.write_table(table, output, compression=PARQUET_COMPRESSION)
    return table.num_rows


def duckdb_copy_to_parquet(source: Path, output: Path, file_format: str) -> int:
    import duckdb

    reader = {"csv": "read_csv", "json": "read_json"}[file_format]
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute(
            f"COPY (FROM {reader}(?)) TO '{_sql_path(output)}' (FORMAT parquet, COMPRESSION {PARQUET_COMPRESSION})",
            [str(source)],
        )
        return con.execute(f"SELECT count(*) FROM read_parquet('{_sql_path(output)}')").fetchone()[0]
    finally:
        con.close()


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


# ---- spark ------------------------------------------------------------------------------------


def java_available() -> bool:
    return bool(os.environ.get("JAVA_HOME")) or shutil.which("java") is not None


def _spark_session():
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(SPARK_MASTER)
        .appName("datamaster-bench")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )


def _stop_spark(spark) -> None:
    """Stop Spark and wait for the JVM, so its memory and shutdown are in this process's figures."""
    gateway = spark.sparkContext._gateway
    proc = getattr(gateway, "proc", None)
    spark.stop()
    gateway.shutdown()
    if proc is not None:
        if proc.stdin is not None:
            proc.stdin.close()  # the gateway JVM exits when its stdin closes
        proc.wait(timeout=120)


def spark_to_parquet(source: Path, output: Path, file_format: str) -> int:
    spark = _spark_session()
    try:
        if file_format == "csv":
            frame = spark.read.option("header", True).schema(REVIEW_DDL).csv(str(source))
        else:
            frame = spark.read.schema(ENVELOPE_DDL).json(str(source))
        frame.write.mode("overwrite").option("compression", PARQUET_COMPRESSION).parquet(str(output))
    finally:
        _stop_spark(spark)
    return pq.ParquetDataset(output).read(columns=[]).num_rows


# ---- silver -----------------------------------------------------------------------------------


def _local_catalog(home: Path):
    from pyiceberg.catalog.sql import SqlCatalog

    home.mkdir(parents=True, exist_ok=True)
    (home / "warehouse").mkdir(exist_ok=True)
    return SqlCatalog("reference", uri=f"sqlite:///{home / 'catalog.sqlite'}", warehouse=(home / "warehouse").as_uri())


def iceberg_append(home: Path, source: Path, identifier: str = "reference.review") -> int:
    """Create an unpartitioned Iceberg table in a fresh catalog under ``home`` and append ``source``."""
    rows = pq.read_table(source)
    catalog = _local_catalog(_fresh_dir(home))
    catalog.create_namespace(identifier.split(".")[0])
    table = catalog.create_table(identifier, schema=rows.schema)
    table.append(rows)
    return rows.num_rows


def iceberg_upsert(catalog, identifier: str, source: Path, key: str) -> dict:
    """pyiceberg's own ``Table.upsert`` of the rows in ``source`` on ``key``."""
    table = catalog.load_table(identifier)
    rows = pq.read_table(source)
    result = table.upsert(rows, join_cols=[key])
    return {"rows_updated": result.rows_updated, "rows_inserted": result.rows_inserted}


# ---- gold -------------------------------------------------------------------------------------


def duckdb_gold(input_dir: Path, output_dir: Path) -> dict[str, int]:
    import duckdb

    _fresh_dir(output_dir)
    con = duckdb.connect()
    counts: dict[str, int] = {}
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")
        for name in SILVER_INPUTS:
            con.execute(f"CREATE VIEW {name} AS FROM read_parquet('{_sql_path(input_dir / name)}.parquet')")
        con.execute(f"CREATE TEMP TABLE review_flat AS {REVIEW_FLAT_SQL}")
        for name in ("review_flat", *MART_SQL):
            query = "FROM review_flat" if name == "review_flat" else MART_SQL[name]
            out = _sql_path(output_dir / f"{name}.parquet")
            con.execute(f"COPY ({query}) TO '{out}' (FORMAT parquet, COMPRESSION {PARQUET_COMPRESSION})")
            counts[name] = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()[0]
    finally:
        con.close()
    return counts


def spark_gold(input_dir: Path, output_dir: Path) -> dict[str, int]:
    _fresh_dir(output_dir)
    spark = _spark_session()
    try:
        for name in SILVER_INPUTS:
            spark.read.parquet(str(input_dir / f"{name}.parquet")).createOrReplaceTempView(name)
        flat = spark.sql(REVIEW_FLAT_SQL).cache()
        flat.createOrReplaceTempView("review_flat")
        for name in ("review_flat", *MART_SQL):
            frame = flat if name == "review_flat" else spark.sql(MART_SQL[name])
            frame.write.mode("overwrite").option("compression", PARQUET_COMPRESSION).parquet(str(output_dir / name))
    finally:
        _stop_spark(spark)
    return {name: pq.ParquetDataset(output_dir / name).read(columns=[]).num_rows for name in ("review_flat", *MART_SQL)}


def read_output(path: Path) -> pa.Table:
    """A reference output: one Parquet file (pyarrow, DuckDB) or a directory of parts (Spark)."""
    return pq.ParquetDataset(path).read() if path.is_dir() else pq.read_table(path)


def silver_shaped(changes: pa.Table, schema: pa.Schema, columns: list[str]) -> pa.Table:
    """Bronze change rows as rows of the silver schema, for ``Table.upsert`` (audit = change time)."""
    ts = changes["_change_ts"]
    data = {c: changes[c] for c in columns}
    data.update(created_at=ts, updated_at=ts, deleted_at=pa.nulls(changes.num_rows, schema.field("deleted_at").type),
                _change_ts=ts, _change_seq=changes["_change_seq"], _source_key=changes["_source_key"])
    return pa.table([pa.chunked_array(data[f.name]).cast(f.type) if isinstance(data[f.name], pa.ChunkedArray)
                     else data[f.name].cast(f.type) for f in schema], schema=schema)
