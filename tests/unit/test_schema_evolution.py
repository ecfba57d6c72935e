"""A contract change reaches the silver table: columns added or widened, anything else refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datamaster_assets.contracts import Column, get_contract
from datamaster_assets.lake.catalog import SchemaConflict, iceberg_schema, read_table, schema_changes
from datamaster_assets.lake.factory import Lake, open_lake
from datamaster_assets.lake.ledger import Registration, Status
from datamaster_assets.settings import Settings
from datamaster_assets.workers import silver as silver_worker
from tests.benchmarks.silver_data import bronze_table

BREWERY = get_contract("brewery")
WITH_CITY = replace(BREWERY, columns=BREWERY.columns + (Column(name="city", type="string"),))


def schema(*fields: pa.Field):
    return iceberg_schema(pa.schema([pa.field("id", pa.int64(), nullable=False), *fields]), ("id",))


def test_new_nullable_columns_are_added_and_int_or_float_widened():
    stored = schema(pa.field("n", pa.int32()), pa.field("x", pa.float32()), pa.field("s", pa.string()))
    wanted = schema(pa.field("n", pa.int64()), pa.field("x", pa.float64()), pa.field("s", pa.string()),
                    pa.field("city", pa.string()))
    added, widened = schema_changes(stored, wanted)
    assert [(f.name, str(f.field_type), f.required) for f in added] == [("city", "string", False)]
    assert [(f.name, str(f.field_type)) for f in widened] == [("n", "long"), ("x", "double")]
    assert schema_changes(wanted, wanted) == ([], [])


def test_dropped_columns_other_type_changes_and_new_required_columns_are_refused():
    stored = schema(pa.field("s", pa.string()), pa.field("gone", pa.int64()))
    wanted = iceberg_schema(pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("s", pa.int64()),
                                       pa.field("k2", pa.int64(), nullable=False)]), ("id", "k2"))
    with pytest.raises(SchemaConflict) as refused:
        schema_changes(stored, wanted)
    message = str(refused.value)
    assert "column 'gone' is in the table but not wanted" in message
    assert "column 's' is string in the table, long wanted" in message
    assert "new column 'k2' is required" in message


@pytest.fixture
def lake(dm_home: Path) -> Lake:
    return open_lake(Settings.from_env())


def land(lake: Lake, name: str, table: pa.Table) -> str:
    key = f"bronze/brewery/year=2026/month=01/day=01/{name}.parquet"
    path = lake.store.local_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    info = lake.store.head(key)
    lake.ledger.register(Registration("silver", "brewery", key, info.etag, "parquet", info.size))
    return key


def with_city(table: pa.Table, cities: list[str | None]) -> pa.Table:
    return table.append_column(pa.field("city", pa.string()), pa.array(cities, pa.string()))


def test_a_column_added_to_the_contract_is_added_to_silver_and_older_files_still_merge(lake, monkeypatch):
    land(lake, "before", bronze_table("brewery", [{"op": "load", "t": 1, "brewery_id": 1, "brewery_name": "One"}]))
    assert silver_worker.apply_pending_silver(lake, "brewery", owner="t").files_applied == 1
    schema_before = lake.catalog.load_table("silver.brewery").schema()
    assert "city" not in [f.name for f in schema_before.fields]

    monkeypatch.setattr(silver_worker, "get_contract", lambda name: WITH_CITY)
    land(lake, "after", with_city(bronze_table("brewery", [
        {"op": "update", "t": 2, "brewery_id": 1, "brewery_name": "One"},
        {"op": "insert", "t": 2, "brewery_id": 2, "brewery_name": "Two"},
    ]), ["Boston", "Austin"]))
    # Written before the contract change (e.g. still pending): no city column at all.
    land(lake, "late", bronze_table("brewery", [{"op": "insert", "t": 3, "brewery_id": 3, "brewery_name": "Three"}]))
    result = silver_worker.apply_pending_silver(lake, "brewery", owner="t")

    assert result.files_applied == 2 and not result.failures
    table = lake.catalog.load_table("silver.brewery")
    assert table.schema().schema_id == schema_before.schema_id + 1
    assert not table.schema().find_field("city").required
    rows = {r["brewery_id"]: r["city"] for r in read_table(lake, "silver", "brewery").to_pylist()}
    assert rows == {1: "Boston", 2: "Austin", 3: None}


def test_a_contract_change_that_would_lose_data_stops_the_merge_with_the_column_named(lake, monkeypatch):
    land(lake, "before", bronze_table("brewery", [{"op": "load", "t": 1, "brewery_id": 1, "brewery_name": "One"}]))
    silver_worker.apply_pending_silver(lake, "brewery", owner="t")
    without_name = replace(BREWERY, columns=BREWERY.columns[:1])
    monkeypatch.setattr(silver_worker, "get_contract", lambda name: without_name)
    key = land(lake, "after", bronze_table("brewery", [{"op": "insert", "t": 2, "brewery_id": 2, "brewery_name": "x"}])
               .drop_columns(["brewery_name"]))

    for _ in range(3):  # more runs than max_attempts: the files are never quarantined for it
        with pytest.raises(SchemaConflict, match="silver.brewery: column 'brewery_name' is in the table but not wanted"):
            silver_worker.apply_pending_silver(lake, "brewery", owner="t")
    item = next(i for i in lake.ledger.items(layer="silver") if i.object_key == key)
    assert item.status is Status.PENDING and item.attempt_count == 0  # not claimed: merges once the contract is fixed
    assert {r["brewery_id"]: r["brewery_name"] for r in read_table(lake, "silver", "brewery").to_pylist()} == {1: "One"}


def test_the_spark_route_gets_the_new_columns_before_its_merge_runs(lake, monkeypatch):
    land(lake, "before", bronze_table("brewery", [{"op": "load", "t": 1, "brewery_id": 1, "brewery_name": "One"}]))
    silver_worker.apply_pending_silver(lake, "brewery", owner="t")
    monkeypatch.setattr(silver_worker, "get_contract", lambda name: WITH_CITY)
    land(lake, "after", with_city(bronze_table("brewery", [{"op": "insert", "t": 2, "brewery_id": 2,
                                                              "brewery_name": "Two"}]), ["Austin"]))
    seen = {}

    def run_merge(manifest_uri: str) -> dict:
        seen["columns"] = [f.name for f in lake.catalog.load_table("silver.brewery").schema().fields]
        return {"changes_read": 1, "inserted": 1}

    silver_worker.apply_pending_silver_remotely(lake, "brewery", owner="t", run_merge=run_merge)
    assert "city" in seen["columns"]
