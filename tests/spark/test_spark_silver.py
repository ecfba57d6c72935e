"""The Spark silver merge (Parquet mode, local pyspark) produces exactly what the Arrow engine
(``transform.silver.merge_changes``) produces, on hand-written and on randomised change sets."""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datamaster_assets.contracts import get_contract
from datamaster_assets.spark import silver_merge
from datamaster_assets.spark.jobs import JobReporter
from datamaster_assets.transform.silver import merge_changes, silver_schema

pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.xdist_group("spark")]

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def t(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def beer_changes(rows: list[dict], file: str) -> pa.Table:
    """Bronze beer rows; each row gives op, ts (minutes), seq and the contract values it carries."""
    contract = get_contract("beer")
    out = []
    for line, row in enumerate(rows, start=1):
        full = {c: row.get(c) for c in contract.column_names}
        full.update(
            _source_key=row.get("file", file), _control_id="c-test", _ingested_at=T0, _op=row["op"],
            _change_ts=t(row["ts"]), _change_seq=row.get("seq", 0), _source_line=row.get("line", line),
        )
        out.append(full)
    return pa.Table.from_pylist(out, schema=contract.bronze_schema)


def beer(beer_id: int, op: str, ts: int, name: str = "b", style: str | None = "IPA", abv: float | None = 5.0, **kw) -> dict:
    return {"beer_id": beer_id, "brewery_id": 1, "beer_name": name, "beer_style": style, "beer_abv": abv,
            "op": op, "ts": ts, **kw}


BATCH_1 = [
    # (rows, file): out-of-order within and across files
    ([beer(1, "update", 3, "one v2"), beer(2, "insert", 2, "two"), beer(3, "delete", 2, "ghost")], "bronze/beer/a.parquet"),
    ([beer(1, "insert", 1, "one"), beer(2, "delete", 4), beer(4, "insert", 1, "four"), beer(4, "delete", 2),
      beer(4, "load", 3, "four again"), beer(5, "insert", 1, "five"), beer(5, "insert", 1, "five", line=5),
      beer(6, "insert", 1, "six"), beer(6, "delete", 2), beer(6, "delete", 3),
      beer(7, "update", 1, "seq five", seq=5), beer(7, "update", 1, "seq three", seq=3),
      beer(8, "update", 1, "from b"), beer(8, "update", 1, "from a", file="bronze/beer/a.parquet"),
      beer(9, "insert", 1, "nulls", style=None, abv=None)], "bronze/beer/b.parquet"),
]
BATCH_2 = [
    ([beer(1, "update", 2, "stale"), beer(1, "update", 3, "one v2"), beer(2, "insert", 5, "two back"),
      beer(3, "insert", 1, "too old"), beer(3, "insert", 6, "three"), beer(4, "delete", 5),
      beer(6, "delete", 7), beer(10, "insert", 5, "ten"), beer(9, "update", 5, "nine v2", style="Stout"),
      beer(9, "delete", 6, "delete carries this"), beer(11, "delete", 3, "tomb")], "bronze/beer/c.parquet"),
]


def write_bronze(tmp: Path, batch: list[tuple[list[dict], str]]) -> tuple[list[str], pa.Table]:
    paths, tables = [], []
    for i, (rows, file) in enumerate(batch):
        table = beer_changes(rows, file)
        path = tmp / f"bronze-{file.rsplit('/', 1)[-1]}-{i}"
        pq.write_table(table, path)
        paths.append(str(path))
        tables.append(table)
    return paths, pa.concat_tables(tables)


def run_spark_merge(spark, table: str, bronze: list[str], current: str | None, output: Path) -> tuple[pa.Table, dict]:
    args = argparse.Namespace(table=table, bronze=bronze, manifest=None, mode="parquet", catalog="glue",
                              namespace="dm_silver", current=current, output=str(output))
    metadata = silver_merge.run(spark, args, JobReporter(None))
    return pq.read_table(output), metadata


def canonical(table: pa.Table, name: str) -> list[dict]:
    contract = get_contract(name)
    schema = silver_schema(contract)
    assert [f.name for f in table.schema] == schema.names
    # the Arrow merge holds _source_key as a dictionary of the same strings (transform/silver.py)
    assert [f.type.value_type if pa.types.is_dictionary(f.type) else f.type for f in table.schema] == \
        [f.type for f in schema]
    return table.sort_by([(k, "ascending") for k in contract.primary_key]).to_pylist()


def test_spark_merge_equals_arrow_merge_over_two_batches(spark, tmp_path: Path) -> None:
    bronze_1, changes_1 = write_bronze(tmp_path, BATCH_1)
    arrow_1 = merge_changes(None, changes_1, get_contract("beer"))
    spark_1, md_1 = run_spark_merge(spark, "beer", bronze_1, None, tmp_path / "silver-v1")
    assert canonical(spark_1, "beer") == canonical(arrow_1.table, "beer")
    assert {k: md_1[k] for k in arrow_1.counts()} == arrow_1.counts()
    assert md_1["changes_read"] == changes_1.num_rows and md_1["dagster/row_count"] == 9

    rows = {r["beer_id"]: r for r in canonical(spark_1, "beer")}
    assert rows[1]["beer_name"] == "one v2" and rows[1]["created_at"] == t(1) and rows[1]["updated_at"] == t(3)
    assert rows[2]["deleted_at"] == t(4) and rows[2]["beer_name"] == "two"  # delete keeps the last values
    assert rows[3]["created_at"] is None and rows[3]["deleted_at"] == t(2)  # tombstone
    assert rows[4]["beer_name"] == "four again" and rows[4]["created_at"] == t(1) and rows[4]["deleted_at"] is None
    assert rows[7]["beer_name"] == "seq five" and rows[8]["beer_name"] == "from b"

    # Batch 2 runs on the Arrow engine's output: both engines read each other's Parquet.
    pq.write_table(arrow_1.table, tmp_path / "arrow-v1.parquet")
    bronze_2, changes_2 = write_bronze(tmp_path, BATCH_2)
    arrow_2 = merge_changes(arrow_1.table, changes_2, get_contract("beer"))
    spark_2, md_2 = run_spark_merge(spark, "beer", bronze_2, str(tmp_path / "arrow-v1.parquet"), tmp_path / "silver-v2")
    assert canonical(spark_2, "beer") == canonical(arrow_2.table, "beer")
    assert {k: md_2[k] for k in arrow_2.counts()} == arrow_2.counts()
    # beer 1's "one v2" comes again from c.parquet with the time of a.parquet's: a tie the later file wins
    assert md_2["stale_ignored"] == 2 and md_2["updated"] == 1 and md_2["revived"] == 2 and md_2["unchanged"] == 1

    rows = {r["beer_id"]: r for r in canonical(spark_2, "beer")}
    assert rows[2]["deleted_at"] is None and rows[2]["created_at"] == t(2)  # revived, first created_at kept
    assert rows[3]["beer_name"] == "three" and rows[3]["created_at"] == t(6)  # revived tombstone
    assert rows[6]["deleted_at"] == t(2) and rows[6]["_change_ts"] == t(7)
    assert rows[9]["beer_name"] == "nine v2" and rows[9]["deleted_at"] == t(6)

    # Replaying batch 2 changes nothing.
    spark_3, md_3 = run_spark_merge(spark, "beer", bronze_2, str(tmp_path / "silver-v2"), tmp_path / "silver-v3")
    assert canonical(spark_3, "beer") == canonical(spark_2, "beer")
    assert md_3["changes_applied"] == 0 and md_3["stale_ignored"] == changes_2.num_rows


def random_review_changes(rng: np.random.Generator, n: int, keys: int, file: str) -> pa.Table:
    """Random review changes over a small key space: every op, clashing times and sequences."""
    contract = get_contract("review")
    ops = rng.choice(["insert", "update", "delete", "load"], n, p=[0.3, 0.3, 0.3, 0.1])
    review_time = np.datetime64("2005-01-01T00:00:00", "us") + rng.integers(0, 10 * 365 * 86_400, n).astype("timedelta64[s]")
    columns = {
        "review_id": pa.array(rng.integers(1, keys + 1, n)),
        "brewery_id": pa.array(rng.integers(1, 50, n)),
        "beer_id": pa.array(rng.integers(1, 500, n)),
        "profile_id": pa.array(rng.integers(1, 300, n)),
        "review_overall": pa.array(rng.integers(0, 11, n) / 2.0),
        "review_aroma": pa.array(np.where(rng.random(n) < 0.2, np.nan, rng.integers(0, 11, n) / 2.0), from_pandas=True),
        "review_appearance": pa.array(rng.integers(0, 11, n) / 2.0),
        "review_palate": pa.array(rng.integers(0, 11, n) / 2.0),
        "review_taste": pa.array(rng.integers(0, 11, n) / 2.0),
        "review_time": pa.array(review_time).cast(pa.timestamp("us", tz="UTC")),
        "_source_key": pa.array([file] * n),
        "_control_id": pa.array(["c"] * n),
        "_ingested_at": pa.array([T0] * n, pa.timestamp("us", tz="UTC")),
        "_op": pa.array(ops),
        "_change_ts": pa.array([t(int(m)) for m in rng.integers(0, 40, n)], pa.timestamp("us", tz="UTC")),
        "_change_seq": pa.array(rng.integers(0, 4, n)),
        "_source_line": pa.array(np.arange(1, n + 1)),
    }
    schema = contract.bronze_schema
    return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in schema], schema=schema)


def test_spark_merge_equals_arrow_merge_on_random_review_changes(spark, tmp_path: Path) -> None:
    rng = np.random.default_rng(20260301)
    contract = get_contract("review")
    arrow_current, spark_current = None, None
    for step in range(3):
        files = [random_review_changes(rng, 400, 150, f"bronze/review/f{step}-{i}.parquet") for i in range(2)]
        paths = []
        for i, table in enumerate(files):
            paths.append(str(tmp_path / f"review-{step}-{i}.parquet"))
            pq.write_table(table, paths[-1])
        arrow = merge_changes(arrow_current, pa.concat_tables(files), contract)
        out = tmp_path / f"silver-review-{step}"
        merged, metadata = run_spark_merge(spark, "review", paths, spark_current, out)
        assert canonical(merged, "review") == canonical(arrow.table, "review"), f"step {step}"
        assert {k: metadata[k] for k in arrow.counts()} == arrow.counts()
        arrow_current, spark_current = arrow.table, str(out)
    assert arrow.counts()["stale_ignored"] > 0 and arrow.counts()["revived"] > 0 and arrow.counts()["tombstoned"] >= 0


def test_bad_bronze_rows_are_named(spark, tmp_path: Path) -> None:
    table = beer_changes([beer(1, "insert", 1), beer(2, "upsert", 2), beer(3, "insert", 3)], "bronze/beer/bad.parquet")
    table = table.set_column(0, "beer_id", pa.array([1, 2, None], pa.int64()))
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(silver_merge.BronzeChangesError) as err:
        run_spark_merge(spark, "beer", [str(tmp_path / "bad.parquet")], None, tmp_path / "out")
    assert "1 row(s) with null beer_id (first at bronze/beer/bad.parquet:3)" in str(err.value)
    assert "1 row(s) with _op not in" in str(err.value) and "bad.parquet:2" in str(err.value)
