"""Catalog construction per environment (the Glue branch itself runs against moto elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from datamaster_assets.lake.catalog import (
    build_catalog,
    catalog_properties,
    ensure_namespace,
    iceberg_schema,
    load_or_create_table,
    read_iceberg_table,
    table_identifier,
)
from datamaster_assets.settings import Settings


def test_local_catalog_is_sqlite_with_a_file_warehouse(tmp_path: Path):
    settings = Settings(home=tmp_path)
    props = catalog_properties(settings, {})
    assert props == {
        "type": "sql",
        "uri": f"sqlite:///{tmp_path / 'catalog.sqlite'}",
        "warehouse": str(tmp_path / "warehouse"),
    }
    catalog = build_catalog(settings, {})
    ensure_namespace(catalog, "silver")
    ensure_namespace(catalog, "silver")  # a second worker racing to create it is fine
    assert ("silver",) in catalog.list_namespaces()
    assert table_identifier(settings, "silver", "review") == "silver.review"


@pytest.mark.parametrize("name", ["a b=c", "p%20q", "q?r", "x#y", "\u00fc \u00f1"])
def test_a_home_with_uri_special_characters_keeps_everything_inside_it(tmp_path: Path, name: str):
    home = tmp_path / name / "home"
    settings = Settings(home=home)
    catalog = build_catalog(settings, {})
    ensure_namespace(catalog, "silver")
    table = load_or_create_table(catalog, "silver.t", pa.schema([("a", pa.int64())]))
    table.append(pa.table({"a": [1, 2]}))
    assert read_iceberg_table(catalog, "silver.t").num_rows == 2
    assert (home / "catalog.sqlite").is_file()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(p.is_relative_to(home) for p in written)  # no ".../a%20b=c" sibling, no "/q"
    assert any(p.suffix == ".parquet" for p in (home / "warehouse").rglob("*"))


def test_aws_properties_use_glue_s3_and_endpoint_overrides():
    settings = Settings(env="aws", lake_bucket="my-lake", aws_region="eu-west-1")
    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
           "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:5001"}
    props = catalog_properties(settings, env)
    assert props == {
        "type": "glue",
        "warehouse": "s3://my-lake/warehouse",
        "glue.region": "eu-west-1",
        "s3.region": "eu-west-1",
        "glue.access-key-id": "AK",
        "s3.access-key-id": "AK",
        "glue.secret-access-key": "SK",
        "s3.secret-access-key": "SK",
        "glue.endpoint": "http://127.0.0.1:5000",
        "s3.endpoint": "http://127.0.0.1:5001",
    }
    assert table_identifier(settings, "silver", "review") == "dm_silver.review"
    assert "glue.endpoint" not in catalog_properties(settings, {})


def test_tables_are_created_once_with_identifier_fields(tmp_path: Path):
    catalog = build_catalog(Settings(home=tmp_path), {})
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("v", pa.string())])
    assert read_iceberg_table(catalog, "silver.things") is None
    table = load_or_create_table(catalog, "silver.things", schema, ("id",))
    assert table.schema().identifier_field_names() == {"id"}
    assert [f.field_id for f in iceberg_schema(schema).fields] == [1, 2]
    table.append(pa.table({"id": [1], "v": ["a"]}, schema=schema))
    again = load_or_create_table(catalog, "silver.things", schema, ("id",))
    assert again.current_snapshot() is not None
    assert read_iceberg_table(catalog, "silver.things").to_pylist() == [{"id": 1, "v": "a"}]
