"""Spark SQL for review_flat and the gold marts (no pyspark import here).

review_flat is the same join as ``transform.review_flat`` (DuckDB there); the marts are the very
definitions of ``transform.gold.MARTS`` (their SQL is plain enough to run on both engines, and the
parity tests keep it that way). UTC months come from the session time zone the jobs pin to UTC.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import pyarrow as pa

from datamaster_assets.spark.silver_sql import quote, tblproperties_sql
from datamaster_assets.transform.gold import MART_TABLE_PROPERTIES, PARTITION_COLUMNS, MartSpec, Month
from datamaster_assets.transform.review_flat import REVIEW_FLAT_SCHEMA

_SPARK_OF_ARROW = {
    pa.int64(): "BIGINT",
    pa.int32(): "INT",
    pa.float64(): "DOUBLE",
    pa.string(): "STRING",
    pa.bool_(): "BOOLEAN",
    pa.date32(): "DATE",
}


def spark_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP"
    try:
        return _SPARK_OF_ARROW[arrow_type]
    except KeyError:
        raise ValueError(f"no Spark SQL type for Arrow type {arrow_type}") from None


def cast_to_schema_sql(query: str, schema: pa.Schema) -> str:
    """``query`` with its columns selected in ``schema`` order and cast to the schema's types."""
    columns = ", ".join(f"CAST({quote(f.name)} AS {spark_type(f.type)}) AS {quote(f.name)}" for f in schema)
    return f"SELECT {columns} FROM ({query}) AS q"


def table_ddl(schema: pa.Schema, not_null: Iterable[str] = ()) -> str:
    required = set(not_null)
    return ", ".join(
        f"{quote(f.name)} {spark_type(f.type)}{' NOT NULL' if f.name in required else ''}" for f in schema
    )


def review_flat_sql(review: str, beer: str, brewery: str, profile: str) -> str:
    """Live reviews left-joined to live beer, brewery and profile rows (``transform.review_flat``)."""
    query = f"""SELECT
    r.review_id,
    r.review_time,
    year(r.review_time) AS review_year,
    month(r.review_time) AS review_month,
    r.review_overall, r.review_aroma, r.review_appearance, r.review_palate, r.review_taste,
    r.beer_id, b.beer_name, b.beer_style, b.beer_abv,
    r.brewery_id, br.brewery_name,
    r.profile_id, p.profile_name, p.state,
    r.created_at, r.updated_at
FROM {review} AS r
LEFT JOIN (SELECT beer_id, beer_name, beer_style, beer_abv FROM {beer} WHERE deleted_at IS NULL) AS b
    ON b.beer_id = r.beer_id
LEFT JOIN (SELECT brewery_id, brewery_name FROM {brewery} WHERE deleted_at IS NULL) AS br
    ON br.brewery_id = r.brewery_id
LEFT JOIN (SELECT profile_id, profile_name, state FROM {profile} WHERE deleted_at IS NULL) AS p
    ON p.profile_id = r.profile_id
WHERE r.deleted_at IS NULL"""
    return cast_to_schema_sql(query, REVIEW_FLAT_SCHEMA)


def flat_delta_sql(old: str, new: str, gold_columns: Sequence[str]) -> str:
    """Reviews added, removed or changed (any review_flat column) between two review_flat versions,
    with their old and new months and whether a column a mart reads changed (``diff_review_flat``)."""

    def row(alias: str, columns: Sequence[str]) -> str:
        return "struct(" + ", ".join(f"{alias}.{quote(c)}" for c in columns) + ")"

    every = [c for c in REVIEW_FLAT_SCHEMA.names if c != "review_id"]
    gold = [c for c in gold_columns if c != "review_id"]
    return f"""SELECT o.review_year AS old_year, o.review_month AS old_month,
    n.review_year AS new_year, n.review_month AS new_month,
    NOT ({row('o', gold)} <=> {row('n', gold)}) AS gold_changed
FROM {old} AS o FULL JOIN {new} AS n ON o.review_id = n.review_id
WHERE o.review_id IS NULL OR n.review_id IS NULL OR NOT ({row('o', every)} <=> {row('n', every)})"""


def affected_months_sql(delta: str) -> str:
    """(review_year, review_month) pairs gold must recompute: the old and the new month of every
    review in ``delta`` (``flat_delta_sql``) whose gold inputs changed."""
    return f"""SELECT old_year AS review_year, old_month AS review_month FROM {delta} WHERE gold_changed AND old_year IS NOT NULL
UNION
SELECT new_year, new_month FROM {delta} WHERE gold_changed AND new_year IS NOT NULL"""


def months_condition_sql(months: Iterable[Month]) -> str:
    """SQL predicate on review_year/review_month for a set of months (one IN list per year)."""
    by_year: dict[int, list[int]] = {}
    for year, month in sorted(set(months)):
        by_year.setdefault(int(year), []).append(int(month))
    if not by_year:
        return "FALSE"
    return " OR ".join(
        f"(review_year = {year} AND review_month IN ({', '.join(str(m) for m in months_)}))"
        for year, months_ in by_year.items()
    )


def mart_sql(spec: MartSpec, review_flat: str, months: Iterable[Month] | None) -> str:
    """The mart's rows for ``months`` (all when None), typed like ``spec.schema``."""
    source = review_flat
    if months is not None:
        source = f"(SELECT * FROM {review_flat} WHERE {months_condition_sql(months)}) AS review_flat_months"
    return cast_to_schema_sql(spec.sql(source), spec.schema)


def create_mart_sql(spec: MartSpec, table: str) -> str:
    partitions = ", ".join(PARTITION_COLUMNS)
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ({table_ddl(spec.schema, PARTITION_COLUMNS)}) USING iceberg "
        f"PARTITIONED BY ({partitions}) {tblproperties_sql(MART_TABLE_PROPERTIES)}"
    )


def create_review_flat_sql(table: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ({table_ddl(REVIEW_FLAT_SCHEMA, ('review_id',))}) USING iceberg "
        + tblproperties_sql()
    )
