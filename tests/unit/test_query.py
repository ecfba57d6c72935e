"""run_query over silver/gold Iceberg tables and bronze Parquet files, and format_table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datamaster_assets.lake.catalog import load_or_create_table, table_identifier
from datamaster_assets.lake.factory import open_lake
from datamaster_assets.settings import Settings
from datamaster_assets.transform.query import QueryError, format_table, referenced_tables, run_query
from datamaster_assets.workers.gold import build_review_flat_table, refresh_gold
from tests.unit.gold_data import silver_set


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    lake = open_lake(Settings(home=tmp_path_factory.mktemp("query") / "home"))
    for name, table in silver_set().items():
        load_or_create_table(lake.catalog, table_identifier(lake.settings, "silver", name), table.schema).overwrite(table)
    build_review_flat_table(lake)
    refresh_gold(lake, ["top_beers_by_rating"])
    for day, ids in (("01", [1, 2]), ("02", [3])):
        key = f"bronze/brewery/year=2024/month=01/day={day}/part-{day}.parquet"
        path = lake.store.local_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"brewery_id": pa.array(ids, pa.int64()),
                                 "brewery_name": [f"b{i}" for i in ids]}), path)
    return lake


def test_referenced_tables_ignores_literals_and_dedupes():
    sql = "SELECT * FROM Silver.review r JOIN gold.top_drinkers d ON true WHERE x = 'bronze.nope' AND r.a IN (SELECT 1 FROM silver.review)"
    assert referenced_tables(sql) == [("silver", "review"), ("gold", "top_drinkers")]


def test_query_silver_counts_soft_deleted_rows(lake):
    result = run_query(lake, "SELECT count(*) AS n, count(deleted_at) AS deleted FROM silver.review")
    assert result.to_pylist() == [{"n": 82, "deleted": 1}]


def test_query_gold_and_join_with_silver(lake):
    result = run_query(lake, """
        SELECT g.review_year, g.review_month, g.beer_name, g.total_reviews, count(f.review_id) AS flat_reviews
        FROM gold.top_beers_by_rating g JOIN silver.review_flat f USING (beer_id, review_year, review_month)
        GROUP BY ALL ORDER BY 1, 2""")
    assert result.to_pylist() == [
        {"review_year": 2010, "review_month": 1, "beer_name": "Alpha IPA", "total_reviews": 25, "flat_reviews": 25},
        {"review_year": 2010, "review_month": 2, "beer_name": "Alpha IPA", "total_reviews": 26, "flat_reviews": 26},
    ]


def test_query_bronze_with_hive_partitions(lake):
    result = run_query(lake, "SELECT day, count(*) AS n FROM bronze.brewery GROUP BY day ORDER BY day")
    assert result.to_pylist() == [{"day": 1, "n": 2}, {"day": 2, "n": 1}]


def test_query_bronze_through_a_store_without_local_paths(lake, monkeypatch):
    # The S3 branch: objects are read through the ObjectStore interface.
    monkeypatch.setattr(lake.store, "local_path", lambda key: None)
    result = run_query(lake, "SELECT day, sum(brewery_id) AS s FROM bronze.brewery GROUP BY day ORDER BY day")
    assert result.to_pylist() == [{"day": 1, "s": 3}, {"day": 2, "s": 3}]


def test_unknown_tables_and_bad_sql_are_clear_errors(lake):
    with pytest.raises(QueryError, match=r"gold.top_wines does not exist.*known gold tables: \['top_beers_by_rating'\]"):
        run_query(lake, "SELECT * FROM gold.top_wines")
    with pytest.raises(QueryError, match="bronze.review: no Parquet files"):
        run_query(lake, "SELECT * FROM bronze.review")
    with pytest.raises(QueryError, match="query failed"):
        run_query(lake, "SELECT nope FROM silver.brewery")


def test_an_alias_named_like_a_layer_is_not_taken_for_a_table(lake):
    result = run_query(lake, """
        SELECT gold.review_month, silver.beer_name
        FROM gold.top_beers_by_rating AS gold JOIN silver.beer AS silver USING (beer_id)
        ORDER BY gold.review_month""")
    assert result.to_pylist() == [{"review_month": 1, "beer_name": "Alpha IPA"},
                                  {"review_month": 2, "beer_name": "Alpha IPA"}]
    # a real reference to a missing table still gets the explanation, not DuckDB's guess
    with pytest.raises(QueryError, match=r"gold.top_wines does not exist") as caught:
        run_query(lake, "SELECT gold.x FROM gold.top_wines AS gold")
    assert "pg_catalog" not in str(caught.value)


def test_formats(lake):
    result = run_query(lake, """SELECT brewery_id, brewery_name, deleted_at FROM silver.brewery ORDER BY brewery_id""")
    text = format_table(result, "table")
    lines = text.splitlines()
    assert lines[0].split(" | ")[0].strip() == "brewery_id"
    assert lines[2].startswith("         1 | Alpha Brewing") and lines[2].endswith("NULL")
    assert lines[3].endswith("2024-02-01T00:00:00+00:00")
    assert lines[-1] == "(2 rows)"
    rows = list(csv.DictReader(io.StringIO(format_table(result, "csv"))))
    assert rows == [
        {"brewery_id": "1", "brewery_name": "Alpha Brewing", "deleted_at": ""},
        {"brewery_id": "2", "brewery_name": "Gone Brewing", "deleted_at": "2024-02-01T00:00:00+00:00"},
    ]
    assert json.loads(format_table(result, "json")) == [
        {"brewery_id": 1, "brewery_name": "Alpha Brewing", "deleted_at": None},
        {"brewery_id": 2, "brewery_name": "Gone Brewing", "deleted_at": "2024-02-01T00:00:00+00:00"},
    ]
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        format_table(result, "xml")
