"""Silver benchmark: initial load of 1.59 M reviews and a 100 k-change merge vs pyiceberg's upsert.

A measurement, not a test (no timed assertions). Run from the repository root:

    .venv/bin/python -m tests.benchmarks.silver_benchmark --runs 3

Each run uses a fresh DATAMASTER_HOME under a temporary directory and goes through the real
worker path: bronze Parquet in the object store, silver ledger items in SQLite, SqlCatalog +
file warehouse. Per run it times
  1. ``apply_pending_silver`` of one bronze file holding 1,586,614 review loads (empty table),
  2. ``apply_pending_silver`` of one change file: 50,000 updates spread over the table and
     50,000 new reviews,
  3. pyiceberg ``Table.upsert`` of the same 100,000 rows (already in silver shape, so it gets the
     merge for free) into an identical copy of the loaded table,
and, once, the same load and merge on a month(review_time)-partitioned table (full rewrite).
Prints the medians as a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datamaster_assets.contracts import get_contract
from datamaster_assets.lake.catalog import iceberg_schema
from datamaster_assets.lake.factory import open_lake
from datamaster_assets.lake.ledger import Registration
from datamaster_assets.settings import Settings
from datamaster_assets.transform.silver import merge_changes, silver_schema
from datamaster_assets.workers.silver import apply_pending_silver
from tests.benchmarks.silver_data import BASE_TS, review_changes

FULL_SIZE = 1_586_614


def make_inputs(n_reviews: int, n_updates: int, n_inserts: int) -> tuple[pa.Table, pa.Table]:
    load = review_changes(np.arange(1, n_reviews + 1), op="load", seed=1, change_ts=BASE_TS,
                          source_key="raw/review/20260101T000000000000Z-review.csv.gz")
    updated_ids = np.sort(np.random.default_rng(2).choice(n_reviews, n_updates, replace=False) + 1)
    when = BASE_TS + timedelta(days=1)
    src = "raw/review/20260102T000000000000Z-review-cdc.json.gz"
    changes = pa.concat_tables([
        review_changes(updated_ids, op="update", seed=3, change_ts=when, source_key=src),
        review_changes(np.arange(n_reviews + 1, n_reviews + n_inserts + 1), op="insert", seed=4, change_ts=when,
                       source_key=src, first_seq=n_updates),
    ]).combine_chunks()
    return load, changes


def land(lake, name: str, table: pa.Table) -> None:
    key = f"bronze/review/year=2026/month=01/day=01/{name}.parquet"
    path = lake.store.local_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    info = lake.store.head(key)
    lake.ledger.register(Registration("silver", "review", key, info.etag, "parquet", info.size))


CPU: dict[str, list[float]] = {}


def timed(fn, label: str | None = None):
    """(wall seconds, result); the process CPU seconds (all threads) go to CPU[label]."""
    started, cpu = time.perf_counter(), time.process_time()
    out = fn()
    if label:
        CPU.setdefault(label, []).append(time.process_time() - cpu)
    return time.perf_counter() - started, out


def one_run(root: Path, load: pa.Table, changes: pa.Table) -> dict[str, float]:
    lake = open_lake(Settings(home=root))
    land(lake, "load", load)
    t_load, first = timed(lambda: apply_pending_silver(lake, "review", owner="bench"), "load")
    assert first.counts["inserted"] == load.num_rows, first.counts

    # An identical copy of the loaded table for pyiceberg's upsert (not timed).
    contract = get_contract("review")
    loaded = lake.catalog.load_table("silver.review").scan().to_arrow()
    twin = lake.catalog.create_table("silver.review_upsert", schema=iceberg_schema(silver_schema(contract),
                                                                                 contract.primary_key))
    twin.append(loaded)
    upsert_rows = merge_changes(None, changes, contract).table  # silver-shaped rows, merge done for it

    land(lake, "changes", changes)
    t_merge, merged = timed(lambda: apply_pending_silver(lake, "review", owner="bench"), "merge")
    assert merged.counts["updated"] + merged.counts["inserted"] == changes.num_rows, merged.counts
    t_upsert, up = timed(lambda: twin.upsert(upsert_rows, join_cols=["review_id"]), "upsert")
    assert (up.rows_updated, up.rows_inserted) == (merged.counts["updated"], merged.counts["inserted"])
    return {"load": t_load, "merge": t_merge, "upsert": t_upsert}


def partitioned_run(root: Path, load: pa.Table, changes: pa.Table) -> dict[str, float]:
    """The same copy-on-write merge on a table partitioned by month(review_time)."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import MonthTransform

    lake = open_lake(Settings(home=root))
    contract = get_contract("review")
    schema = iceberg_schema(silver_schema(contract), contract.primary_key)
    source_id = schema.find_field("review_time").field_id
    spec = PartitionSpec(PartitionField(source_id=source_id, field_id=1000, transform=MonthTransform(),
                                        name="review_month"))
    lake.catalog.create_namespace("silver")
    table = lake.catalog.create_table("silver.review", schema=schema, partition_spec=spec)
    first = merge_changes(None, load, contract).table
    t_load, _ = timed(lambda: table.append(first), "load_partitioned")

    def merge_and_rewrite():
        current = lake.catalog.load_table("silver.review")
        merged = merge_changes(current.scan().to_arrow(), changes, contract)
        current.overwrite(merged.table)

    t_merge, _ = timed(merge_and_rewrite, "merge_partitioned")
    return {"load_partitioned": t_load, "merge_partitioned": t_merge,
            "files_partitioned": len(list(lake.catalog.load_table("silver.review").scan().plan_files()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reviews", type=int, default=FULL_SIZE)
    parser.add_argument("--updates", type=int, default=50_000)
    parser.add_argument("--inserts", type=int, default=50_000)
    parser.add_argument("--no-partitioned", action="store_true", help="skip the month-partitioned comparison")
    args = parser.parse_args()

    load, changes = make_inputs(args.reviews, args.updates, args.inserts)
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="silver-bench-") as tmp:
            runs.append(one_run(Path(tmp), load, changes))
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in runs[-1].items()), flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    cpu = {k: statistics.median(v) for k, v in CPU.items()}
    print(f"\n{args.reviews:,} reviews; change file {changes.num_rows:,} rows "
          f"({args.updates:,} updates, {args.inserts:,} inserts); medians of {args.runs} runs\n")
    print("| step | median wall s | median CPU s (all threads) |\n|---|---|---|")
    print(f"| initial load (apply_pending_silver, empty table) | {med['load']:.2f} | {cpu['load']:.2f} |")
    print(f"| 100 k merge (apply_pending_silver, copy-on-write) | {med['merge']:.2f} | {cpu['merge']:.2f} |")
    print(f"| pyiceberg Table.upsert, same rows, same table | {med['upsert']:.2f} | {cpu['upsert']:.2f} |")
    print(f"| upsert / merge | {med['upsert'] / med['merge']:.1f}x | {cpu['upsert'] / cpu['merge']:.1f}x |")
    if not args.no_partitioned:
        with tempfile.TemporaryDirectory(prefix="silver-bench-part-") as tmp:
            part = partitioned_run(Path(tmp), load, changes)
        print(f"| month-partitioned: append of the load (1 run) | {part['load_partitioned']:.2f} "
              f"| {CPU['load_partitioned'][0]:.2f} |")
        print(f"| month-partitioned: merge + full rewrite (1 run, {part['files_partitioned']} files) "
              f"| {part['merge_partitioned']:.2f} | {CPU['merge_partitioned'][0]:.2f} |")


if __name__ == "__main__":
    main()
