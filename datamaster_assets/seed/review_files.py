"""Review files for benchmarks and the demo: batch CSV, JSON-lines loads and CDC change files."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from datamaster_assets.seed.cdc import TXN_SIZE, encode_numeric_change_lines, to_epoch_us, write_lines
from datamaster_assets.seed.gzipio import gzip_writer
from datamaster_assets.seed.reviews import draw_reviews, draw_scores, generate_reviews, review_model

DEFAULT_CHANGE_TS = datetime(2024, 1, 1, tzinfo=timezone.utc)
JSON_CHUNK_ROWS = 250_000
_STREAM_CHANGE_FILE = 3


def write_change_rows(
    path: Path,
    rows: pa.Table,
    operations: np.ndarray,
    *,
    first_change_us: int,
    first_transaction_id: int,
    envelope: bool,
    table_name: str = "review",
) -> int:
    """Rows as CDC JSON lines, one microsecond apart, TXN_SIZE changes per transaction."""
    n = rows.num_rows
    offsets = np.arange(n, dtype=np.int64)
    with gzip_writer(Path(path)) as gz:
        for start in range(0, n, JSON_CHUNK_ROWS):
            stop = min(start + JSON_CHUNK_ROWS, n)
            lines = encode_numeric_change_lines(
                table_name,
                rows.slice(start, stop - start),
                operations[start:stop],
                first_change_us + offsets[start:stop],
                first_transaction_id + offsets[start:stop] // TXN_SIZE,
                envelope=envelope,
            )
            write_lines(gz, lines)
    return n


def write_reviews_jsonl(
    path: Path,
    n: int,
    seed: int,
    envelope: bool = True,
    operation: str = "load",
    change_ts: datetime = DEFAULT_CHANGE_TS,
) -> int:
    """``generate_reviews(n, seed)`` (the rows of ``write_reviews_csv``) as CDC JSON lines."""
    if operation not in ("load", "insert"):
        raise ValueError(f"operation must be 'load' or 'insert' for new rows, got {operation!r}")
    rows = generate_reviews(n, seed)
    ops = np.full(n, operation, dtype=object)
    return write_change_rows(path, rows, ops, first_change_us=to_epoch_us(change_ts), first_transaction_id=1, envelope=envelope)


def changed_scores(rng: np.random.Generator, scores: np.ndarray) -> np.ndarray:
    """Each score moved by 0.5 or 1.0 up or down, staying within 0..5, never left equal."""
    delta = rng.choice(np.array([-1.0, -0.5, 0.5, 1.0]), size=len(scores))
    moved = scores + delta
    return np.where((moved < 0.0) | (moved > 5.0), scores - delta, moved)


def updated_rows(rng: np.random.Generator, rows: pa.Table) -> pa.Table:
    """The after-image of an update: review_overall and review_taste changed, the rest kept."""
    for name in ("review_overall", "review_taste"):
        idx = rows.column_names.index(name)
        rows = rows.set_column(idx, name, pa.array(changed_scores(rng, rows.column(name).to_numpy())))
    return rows


def write_review_change_file(
    path: Path,
    *,
    base_reviews: int,
    updates: int,
    inserts: int,
    seed: int,
    change_ts: datetime,
    envelope: bool,
) -> int:
    """A CDC file against ``generate_reviews(base_reviews, seed)``: ``updates`` updates of distinct
    existing ids (scores changed) and ``inserts`` new ids base_reviews+1.., interleaved in a seeded
    order. Returns the number of change lines."""
    if updates > base_reviews:
        raise ValueError(f"cannot update {updates} distinct reviews out of {base_reviews}")
    if updates < 0 or inserts < 0:
        raise ValueError("updates and inserts must be >= 0")
    rng = np.random.default_rng([seed, _STREAM_CHANGE_FILE])
    base = generate_reviews(base_reviews, seed)
    update_ids = rng.choice(base_reviews, size=updates, replace=False)
    updated = updated_rows(rng, base.take(pa.array(update_ids)))
    new_ids = np.arange(base_reviews + 1, base_reviews + inserts + 1, dtype=np.int64)
    inserted = draw_reviews(review_model(seed), rng, new_ids)
    rows = pa.concat_tables([updated, inserted])
    ops = np.array(["update"] * updates + ["insert"] * inserts, dtype=object)
    order = rng.permutation(rows.num_rows)
    return write_change_rows(
        path,
        rows.take(pa.array(order, type=pa.int64())),
        ops[order],
        first_change_us=to_epoch_us(change_ts),
        first_transaction_id=1,
        envelope=envelope,
    )


__all__ = ["write_reviews_jsonl", "write_review_change_file", "write_change_rows", "updated_rows", "draw_scores"]
