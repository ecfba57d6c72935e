"""The generated Iceberg SQL (which cannot run here: no Iceberg runtime jar offline): its text
follows the contracts, and Spark's own parser accepts it."""

from __future__ import annotations

import re

import pytest

from datamaster_assets.contracts import get_contract, table_names
from datamaster_assets.spark import gold_sql, silver_sql
from datamaster_assets.spark.gold_marts import iceberg_name, parse_args as gold_args
from datamaster_assets.spark.jobs import parse_months, read_manifest_lines
from datamaster_assets.spark.silver_merge import parse_args as silver_args
from datamaster_assets.transform.gold import MARTS
from datamaster_assets.transform.silver import silver_schema

TARGET = "`glue`.`dm_silver`.`review`"


def test_merge_into_sql_updates_only_newer_rows_and_sets_every_silver_column() -> None:
    contract = get_contract("review")
    sql = silver_sql.merge_into_sql(contract, TARGET, "dm_source_review")
    assert sql.startswith(f"MERGE INTO {TARGET} AS t\nUSING dm_source_review AS s\nON t.`review_id` = s.`review_id`\n")
    assert (
        "WHEN MATCHED AND (t._change_ts IS NULL OR s._change_ts > t._change_ts OR (s._change_ts = t._change_ts AND "
        "(t._change_seq IS NULL OR s._change_seq > t._change_seq OR (s._change_seq = t._change_seq AND "
        "(t._source_key IS NULL OR s._source_key > t._source_key))))) THEN UPDATE SET" in sql
    )
    updated = re.findall(r"^\s+`(\w+)` = ", sql, flags=re.M)
    inserted = re.search(r"THEN INSERT \((.*)\)\n", sql).group(1).replace("`", "").split(", ")
    assert updated == inserted == silver_schema(contract).names
    # An already-deleted row deleted again keeps its deleted_at; a revived tombstone takes its first upsert time.
    assert "WHEN (s._op = 'delete' AND t.deleted_at IS NOT NULL AND NOT s._has_prior) THEN t.deleted_at" in sql
    assert "`created_at` = coalesce(t.created_at, s._first_upsert_ts)" in sql
    assert "WHEN NOT MATCHED" in sql and "WHEN NOT MATCHED BY SOURCE" not in sql  # rows absent from the batch stay


@pytest.mark.parametrize("table", table_names())
def test_generated_sql_covers_each_contract(table: str) -> None:
    contract = get_contract(table)
    source = silver_sql.source_sql(contract, "fresh")
    for column in contract.column_names:
        assert f"AS `_prior_{column}`" in source and f"AS `_end_{column}`" in source
    key = contract.primary_key[0]
    assert f"PARTITION BY `{key}` ORDER BY _change_ts DESC, _change_seq DESC, _source_key DESC, _source_line DESC" in source
    ddl = silver_sql.create_table_sql(contract, f"`glue`.`dm_silver`.`{table}`")
    assert f"`{key}` BIGINT NOT NULL" in ddl and "'write.merge.mode' = 'copy-on-write'" in ddl
    assert ddl.count(",\n") == len(silver_schema(contract)) - 1


def test_mart_overwrite_predicate_and_tables() -> None:
    assert gold_sql.months_condition_sql({(2010, 2), (2010, 1), (2011, 7)}) == (
        "(review_year = 2010 AND review_month IN (1, 2)) OR (review_year = 2011 AND review_month IN (7))"
    )
    assert gold_sql.months_condition_sql(set()) == "FALSE"
    ddl = gold_sql.create_mart_sql(MARTS["top_beers_by_rating"], iceberg_name("glue", "dm_gold", "top_beers_by_rating"))
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS `glue`.`dm_gold`.`top_beers_by_rating` (`review_year` INT NOT NULL")
    assert "PARTITIONED BY (review_year, review_month)" in ddl
    assert "'write.parquet.compression-codec' = 'snappy'" in ddl  # the same properties as the Arrow path
    assert "'write.metadata.metrics.column.review_month' = 'full'" in ddl


def test_job_arguments() -> None:
    args = silver_args(["--table", "beer", "--manifest", "s3://lake/m.txt"])
    assert (args.mode, args.catalog, args.namespace) == ("iceberg", "glue", "dm_silver")
    with pytest.raises(SystemExit):
        silver_args(["--table", "beer", "--bronze", "a.parquet", "--mode", "parquet"])  # no --output
    with pytest.raises(SystemExit):
        silver_args(["--table", "beer", "--bronze", "a", "--mode", "parquet", "--current", "x/", "--output", "x"])
    assert read_manifest_lines("# batch 7\ns3://b/1.parquet\n\n  s3://b/2.parquet \n") == ["s3://b/1.parquet", "s3://b/2.parquet"]
    assert parse_months(["2010-01,2010-2", "2011-07"]) == {(2010, 1), (2010, 2), (2011, 7)}
    with pytest.raises(ValueError, match="YYYY-MM"):
        parse_months(["2010-13"])
    with pytest.raises(SystemExit):
        gold_args(["--mode", "parquet", "--output", "x"])  # no --source


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.xdist_group("spark")
def test_spark_parses_the_iceberg_statements(spark) -> None:
    parser = spark._jsparkSession.sessionState().sqlParser()
    for table in table_names():
        contract = get_contract(table)
        name = f"`glue`.`dm_silver`.`{table}`"
        for sql in (silver_sql.create_table_sql(contract, name), silver_sql.merge_into_sql(contract, name, "src")):
            plan = parser.parsePlan(sql).toString()
            assert plan.split("\n")[0].split(" ")[0].strip("'") in ("MergeIntoTable", "CreateTable"), plan
    for spec in MARTS.values():
        parser.parsePlan(gold_sql.create_mart_sql(spec, f"`glue`.`dm_gold`.`{spec.name}`"))
