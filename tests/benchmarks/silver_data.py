"""Deterministic bronze-shaped review changes for the silver tests and benchmark (numpy, no loops)."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from datamaster_assets.contracts import get_contract

BASE_TS = datetime(2026, 1, 1, tzinfo=timezone.utc)
REVIEW_TIME_START = datetime(2000, 1, 1, tzinfo=timezone.utc)


def review_changes(
    review_ids: np.ndarray,
    *,
    op: str,
    seed: int,
    change_ts: datetime,
    source_key: str,
    first_seq: int = 0,
) -> pa.Table:
    """One bronze review row per id, with random scores and ids, all with the same op and time."""
    contract = get_contract("review")
    rng = np.random.default_rng(seed)
    n = len(review_ids)
    scores = lambda: pa.array(rng.integers(2, 11, n) / 2.0)  # 1.0 .. 5.0 in halves  # noqa: E731
    start_us = int(REVIEW_TIME_START.timestamp() * 1_000_000)
    review_time = start_us + rng.integers(0, 20 * 365 * 86_400, n) * 1_000_000
    columns = {
        "review_id": pa.array(review_ids, pa.int64()),
        "brewery_id": pa.array(rng.integers(1, 5_000, n)),
        "beer_id": pa.array(rng.integers(1, 60_000, n)),
        "profile_id": pa.array(rng.integers(1, 33_000, n)),
        "review_overall": scores(),
        "review_aroma": scores(),
        "review_appearance": scores(),
        "review_palate": scores(),
        "review_taste": scores(),
        "review_time": pa.array(review_time).cast(pa.timestamp("us", tz="UTC")),
        "_source_key": pa.nulls(n, pa.string()).fill_null(source_key),
        "_control_id": pa.nulls(n, pa.string()).fill_null("s-benchmark"),
        "_ingested_at": pa.nulls(n, pa.timestamp("us", tz="UTC")).fill_null(change_ts),
        "_op": pa.nulls(n, pa.string()).fill_null(op),
        "_change_ts": pa.nulls(n, pa.timestamp("us", tz="UTC")).fill_null(change_ts),
        "_change_seq": pa.array(np.arange(first_seq, first_seq + n)),
        "_source_line": pa.array(np.arange(1, n + 1)),
    }
    schema = contract.bronze_schema
    return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in schema], schema=schema)


def at(seconds: float) -> datetime:
    """A change time ``seconds`` after BASE_TS."""
    from datetime import timedelta

    return BASE_TS + timedelta(seconds=seconds)


def bronze_table(table: str, changes: list[dict], *, source_key: str = "raw/t/file-a.json.gz") -> pa.Table:
    """Bronze rows for ``table`` from compact dicts: contract columns plus ``op``, ``t`` (seconds
    after BASE_TS), optional ``seq`` (default: t) and ``line`` (default: position in the list)."""
    schema = get_contract(table).bronze_schema
    rows = []
    for i, change in enumerate(changes):
        row = {k: v for k, v in change.items() if k not in ("op", "t", "seq", "line", "src")}
        row.update(
            _source_key=change.get("src", source_key),
            _control_id="b-test",
            _ingested_at=BASE_TS,
            _op=change["op"],
            _change_ts=at(change["t"]),
            _change_seq=change.get("seq", int(change["t"])),
            _source_line=change.get("line", i + 1),
        )
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema)
