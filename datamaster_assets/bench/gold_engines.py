"""Full-size benchmark for review_flat + gold: ``python -m datamaster_assets.bench.gold_engines``.

Builds a synthetic silver set (the real brewery/beer/profile dimensions vendored in the package,
``--reviews`` generated reviews over 169 months with a skewed beer popularity), then times:

- ``compute``: review_flat + the five marts in memory (the engine alone);
- ``compute+parquet``: the same plus writing every output as zstd Parquet (PERFORMANCE.md's yardstick);
- ``iceberg``: the worker path on a fresh local lake: write silver.review_flat, refresh all gold marts,
  then an incremental round after changing a few reviews in two months.

Each figure is the median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import time
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from datamaster_assets.contracts import get_contract

FULL_SIZE_REVIEWS = 1_586_614
_AUDIT_TS = datetime(2024, 1, 1, tzinfo=timezone.utc)


def _read_dimension(name: str) -> pa.Table:
    contract = get_contract(name)
    data = resources.files("datamaster_assets").joinpath(f"data/beer-datasets/{name}.csv.gz").read_bytes()
    table = pacsv.read_csv(
        pa.BufferReader(gzip.decompress(data)),
        convert_options=pacsv.ConvertOptions(column_types=contract.arrow_schema),
    )
    return table.select(contract.column_names).cast(contract.arrow_schema)


def _with_audit(table: pa.Table, name: str) -> pa.Table:
    """Silver-shaped: contract columns + created_at/updated_at/deleted_at + hidden lineage columns."""
    n = table.num_rows
    ts = pa.array(np.full(n, int(_AUDIT_TS.timestamp() * 1_000_000), dtype=np.int64), pa.timestamp("us", tz="UTC"))
    return (
        table.append_column("created_at", ts)
        .append_column("updated_at", ts)
        .append_column("deleted_at", pa.nulls(n, pa.timestamp("us", tz="UTC")))
        .append_column("_change_ts", ts)
        .append_column("_change_seq", pa.array(np.arange(n, dtype=np.int64)))
        .append_column("_source_key", pa.array([f"bronze/{name}/synthetic.parquet"] * n, pa.string()))
    )


def synthetic_silver(n_reviews: int = FULL_SIZE_REVIEWS, seed: int = 7) -> dict[str, pa.Table]:
    """Silver brewery/beer/profile (real ids) and ``n_reviews`` synthetic reviews, deterministic per seed."""
    rng = np.random.default_rng(seed)
    brewery = _read_dimension("brewery")
    beer = _read_dimension("beer")
    profile = _read_dimension("profile")
    beer_ids = beer["beer_id"].to_numpy()
    beer_brewery = beer["brewery_id"].to_numpy()
    profile_ids = profile["profile_id"].to_numpy()
    # Zipf-like popularity so that a few thousand beer x month pairs reach 25 reviews.
    beer_weights = 1.0 / np.arange(1, len(beer_ids) + 1) ** 1.1
    beer_pick = rng.choice(len(beer_ids), size=n_reviews, p=beer_weights / beer_weights.sum())
    profile_weights = 1.0 / np.arange(1, len(profile_ids) + 1) ** 0.8
    profile_pick = rng.choice(len(profile_ids), size=n_reviews, p=profile_weights / profile_weights.sum())
    start = int(datetime(1998, 1, 1, tzinfo=timezone.utc).timestamp())
    end = int(datetime(2012, 2, 1, tzinfo=timezone.utc).timestamp())  # 169 months
    review_time = np.sort(rng.integers(start, end, size=n_reviews)) * 1_000_000

    def score() -> pa.Array:
        return pa.array(rng.integers(2, 11, size=n_reviews) / 2.0)

    review = pa.table(
        {
            "review_id": pa.array(np.arange(1, n_reviews + 1, dtype=np.int64)),
            "brewery_id": pa.array(beer_brewery[beer_pick]),
            "beer_id": pa.array(beer_ids[beer_pick]),
            "profile_id": pa.array(profile_ids[profile_pick]),
            "review_overall": score(),
            "review_aroma": score(),
            "review_appearance": score(),
            "review_palate": score(),
            "review_taste": score(),
            "review_time": pa.array(review_time, pa.timestamp("us", tz="UTC")),
        }
    )
    review = review.cast(get_contract("review").arrow_schema)
    return {
        "brewery": _with_audit(brewery, "brewery"),
        "beer": _with_audit(beer, "beer"),
        "profile": _with_audit(profile, "profile"),
        "review": _with_audit(review, "review"),
    }


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_compute(silver: dict[str, pa.Table], out_dir: Path | None) -> float:
    """review_flat + five marts in memory; with ``out_dir``, also written as zstd Parquet."""
    from datamaster_assets.transform.gold import compute_marts
    from datamaster_assets.transform.review_flat import build_review_flat

    def run() -> None:
        flat = build_review_flat(silver["review"], silver["beer"], silver["brewery"], silver["profile"])
        marts = compute_marts(flat)
        if out_dir is not None:
            pq.write_table(flat, out_dir / "review_flat.parquet", compression="zstd")
            for name, table in marts.items():
                pq.write_table(table, out_dir / f"{name}.parquet", compression="zstd")

    return _timed(run)


def bench_iceberg(silver: dict[str, pa.Table], home: Path) -> dict[str, float]:
    """Worker path on a fresh local lake: first build, then one review changed in each of two months."""
    from datamaster_assets.lake.catalog import load_or_create_table, table_identifier
    from datamaster_assets.lake.factory import open_lake
    from datamaster_assets.settings import Settings
    from datamaster_assets.workers.gold import build_review_flat_table, refresh_gold

    lake = open_lake(Settings(home=home))

    def write_silver(tables: dict[str, pa.Table]) -> None:
        for name, table in tables.items():
            identifier = table_identifier(lake.settings, "silver", name)
            load_or_create_table(lake.catalog, identifier, table.schema).overwrite(table)

    write_silver(silver)
    out = {
        "review_flat first build": _timed(lambda: build_review_flat_table(lake)),
        "gold first refresh (5 marts)": _timed(lambda: refresh_gold(lake)),
    }
    review = silver["review"]
    first_ids = pc.equal(review["review_id"], 1)  # earliest month
    last_ids = pc.equal(review["review_id"], review.num_rows)  # latest month
    overall = pc.if_else(pc.or_(first_ids, last_ids), 0.0, review["review_overall"])
    write_silver({"review": review.set_column(review.schema.get_field_index("review_overall"),
                                              review.schema.field("review_overall"), overall)})
    out["review_flat incremental (2 reviews changed)"] = _timed(lambda: build_review_flat_table(lake))
    out["gold incremental (2 months)"] = _timed(lambda: refresh_gold(lake))
    out["gold no-op refresh"] = _timed(lambda: refresh_gold(lake))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=FULL_SIZE_REVIEWS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-iceberg", action="store_true")
    args = parser.parse_args(argv)
    silver = synthetic_silver(args.reviews)
    timings: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            timings.setdefault("compute", []).append(bench_compute(silver, None))
            timings.setdefault("compute+parquet", []).append(bench_compute(silver, Path(tmp)))
            if not args.no_iceberg:
                for step, seconds in bench_iceberg(silver, Path(tmp) / "home").items():
                    timings.setdefault(step, []).append(seconds)
    print(f"{args.reviews:,} reviews, median of {args.repeat} runs")
    for step, values in timings.items():
        print(f"{step:45s} {statistics.median(values):7.2f} s   ({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
