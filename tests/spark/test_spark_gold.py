"""The Spark gold job (Parquet mode, local pyspark) builds the same review_flat and the same five
marts as the Arrow/DuckDB engine, on the gold unit-test fixtures, first in full and then as an
affected-months refresh."""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from datamaster_assets.spark import gold_marts
from datamaster_assets.spark.jobs import JobReporter
from datamaster_assets.transform.gold import MARTS, PARTITION_COLUMNS, compute_marts
from datamaster_assets.transform.review_flat import REVIEW_FLAT_SCHEMA, build_review_flat
from tests.unit.gold_data import review_rows, silver_set, silver_table

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.xdist_group("spark")]

MONTH_PARTITIONING = ds.partitioning(pa.schema([pa.field(c, pa.int32()) for c in PARTITION_COLUMNS]), flavor="hive")


def write_silver(tables: dict[str, pa.Table], root: Path) -> list[str]:
    sources = []
    for name, table in tables.items():
        path = root / name
        path.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path / "part-0.parquet")
        sources.append(f"{name}={path}")
    return sources


def run_gold(spark, sources: list[str], output: Path, **overrides) -> dict:
    args = argparse.Namespace(mode="parquet", catalog="glue", silver_namespace="dm_silver", gold_namespace="dm_gold",
                              source=sources, previous_flat=None, output=str(output), mart=None, months=None,
                              all_months=False)
    for key, value in overrides.items():
        setattr(args, key, value)
    return gold_marts.run(spark, args, JobReporter(None))


def read_mart(output: Path, name: str) -> pa.Table:
    schema = MARTS[name].schema
    return ds.dataset(output / name, schema=schema, format="parquet", partitioning=MONTH_PARTITIONING).to_table()


def rows_of(table: pa.Table, key: list[str]) -> list[dict]:
    return table.sort_by([(k, "ascending") for k in key]).to_pylist()


def mart_key(name: str) -> list[str]:
    return [*PARTITION_COLUMNS, *MARTS[name].grain]


def assert_same_gold(output: Path, tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    arrow_flat = build_review_flat(tables["review"], tables["beer"], tables["brewery"], tables["profile"])
    spark_flat = pq.read_table(output / "review_flat")
    assert spark_flat.schema.names == REVIEW_FLAT_SCHEMA.names
    assert [f.type for f in spark_flat.schema] == [f.type for f in REVIEW_FLAT_SCHEMA]
    assert rows_of(spark_flat, ["review_id"]) == rows_of(arrow_flat, ["review_id"])
    arrow_marts = compute_marts(arrow_flat)
    for name, expected in arrow_marts.items():
        got = read_mart(output, name)
        written = [pq.read_schema(f) for f in sorted((output / name).rglob("*.parquet"))]
        expected_types = {f.name: f.type for f in MARTS[name].schema if f.name not in PARTITION_COLUMNS}
        assert all({f.name: f.type for f in schema} == expected_types for schema in written), name
        # Exact equality, averages included: scores are multiples of 0.5, so sums are exact in any order.
        assert rows_of(got, mart_key(name)) == rows_of(expected, mart_key(name)), name
    return arrow_marts


def test_gold_job_matches_arrow_engine_then_refreshes_only_affected_months(spark, tmp_path: Path) -> None:
    tables = silver_set()
    output = tmp_path / "lake"
    metadata = run_gold(spark, write_silver(tables, tmp_path / "silver-v1"), output)
    marts = assert_same_gold(output, tables)
    assert metadata["review_flat"]["affected_months_list"] == "2010-01, 2010-02, 2011-07"
    assert metadata["review_flat"]["dagster/row_count"] == 81  # 82 reviews, 1 soft-deleted
    assert [(r["review_year"], r["review_month"], r["beer_id"], r["total_reviews"])
            for r in rows_of(marts["top_beers_by_rating"], mart_key("top_beers_by_rating"))] == [(2010, 1, 1, 25), (2010, 2, 1, 26)]

    # Second build: one 2010-01 review of beer 1 deleted (beer 1 falls to 24 reviews, under the
    # 25 threshold) and the only 2011-07 review deleted (the month must vanish from every mart).
    rows = review_rows()
    first_beer_1 = next(r for r in rows if r["beer_id"] == 1 and not r.get("deleted"))
    only_2011 = next(r for r in rows if r["review_time"].year == 2011)
    for row in rows:
        if row["review_id"] in (first_beer_1["review_id"], only_2011["review_id"]):
            row["deleted"] = True
    tables_2 = {**tables, "review": silver_table("review", rows)}
    metadata = run_gold(spark, write_silver(tables_2, tmp_path / "silver-v2"), output)
    assert metadata["review_flat"]["affected_months_list"] == "2010-01, 2011-07"
    assert not (output / "top_beers_by_rating" / "review_year=2011").exists() or not any(
        (output / "top_beers_by_rating" / "review_year=2011").iterdir()
    )
    marts_2 = assert_same_gold(output, tables_2)  # untouched 2010-02 kept, affected months replaced
    assert [r["review_month"] for r in marts_2["top_beers_by_rating"].to_pylist()] == [2]
    assert not pc.any(pc.equal(read_mart(output, "top_drinkers")["review_year"], 2011)).as_py()

    # Nothing changed: review_flat is not rewritten and no month is recomputed.
    metadata = run_gold(spark, write_silver(tables_2, tmp_path / "silver-v3"), output)
    assert metadata["review_flat"]["written"] is False and metadata["review_flat"]["affected_months"] == 0
    assert set(metadata) == {"review_flat"}

    # Only a column no mart reads changes: review_flat is rewritten, no month is recomputed.
    live = next(r for r in rows if not r.get("deleted"))
    live["review_aroma"] = 1.0
    tables_4 = {**tables, "review": silver_table("review", rows)}
    metadata = run_gold(spark, write_silver(tables_4, tmp_path / "silver-v4"), output)
    assert metadata["review_flat"]["written"] is True and metadata["review_flat"]["affected_months"] == 0
    assert set(metadata) == {"review_flat"}
    assert_same_gold(output, tables_4)


def test_gold_review_flat_months_are_utc_months(spark, tmp_path: Path) -> None:
    late = datetime(2010, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # 2010-02-01 04:30 UTC
    tables = silver_set([{"review_id": 1, "brewery_id": 1, "beer_id": 1, "profile_id": 1, "review_overall": 4.0,
                          "review_time": late}])
    metadata = run_gold(spark, write_silver(tables, tmp_path / "silver"), tmp_path / "lake", all_months=True)
    assert metadata["review_flat"]["affected_months_list"] == "all"
    flat = pq.read_table(tmp_path / "lake" / "review_flat")
    assert (flat["review_year"][0].as_py(), flat["review_month"][0].as_py()) == (2010, 2)
    assert_same_gold(tmp_path / "lake", tables)
