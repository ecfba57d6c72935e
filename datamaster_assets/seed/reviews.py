"""Synthetic reviews shaped like the BeerAdvocate fact table, referencing the real dimensions.

Everything is drawn from numpy Generators seeded by ``seed``, vectorised, so 1.59 M rows take
seconds. The model:

* beer popularity is Zipf-Mandelbrot (weight ``1/(rank+1)**1.1`` over a seeded random ranking of
  the 66,055 real beers), so the busiest months hold a few beers with >= 25 reviews and a few
  just under, at 100 k reviews as at 1.59 M;
* reviewer activity is Zipf-Mandelbrot too (``1/(rank+50)``), a long tail of casual drinkers;
* the last DORMANT_ROWS beers and profiles of each ranking never review (deletable dimension rows);
* review_time: a month from January 1998 to January 2012 weighted by a logistic growth curve
  (centred on early 2007), then a uniform second within that month;
* each beer has a hidden quality ~ N(3.8, 0.35); ``review_overall`` = quality + N(0, 0.55),
  aspect scores = that latent + N(0, 0.45), rounded to 0.5 and clipped to 0..5 (aspects 1..5).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from datamaster_assets.seed.cdc import SCORE_TEXT
from datamaster_assets.seed.dims import load_dim
from datamaster_assets.seed.gzipio import gzip_writer

REVIEW_COLUMNS = (
    "review_id",
    "brewery_id",
    "beer_id",
    "profile_id",
    "review_overall",
    "review_aroma",
    "review_appearance",
    "review_palate",
    "review_taste",
    "review_time",
)
SCORE_COLUMNS = REVIEW_COLUMNS[4:9]
REVIEW_SCHEMA = pa.schema(
    [(name, pa.float64() if name in REVIEW_COLUMNS[4:9] else pa.int64()) for name in REVIEW_COLUMNS]
)
ASPECT_COLUMNS = SCORE_COLUMNS[1:]
FULL_SIZE_REVIEWS = 1_586_614

BEER_ZIPF_EXPONENT, BEER_ZIPF_OFFSET = 1.1, 1.0
PROFILE_ZIPF_EXPONENT, PROFILE_ZIPF_OFFSET = 1.0, 50.0
FIRST_MONTH, LAST_MONTH = "1998-01", "2012-01"
GROWTH_MIDPOINT_MONTH, GROWTH_WIDTH_MONTHS = 110, 15.0

# Independent random streams derived from the one user seed.
_STREAM_MODEL, _STREAM_BASE_REVIEWS = 0, 1


@dataclass(frozen=True)
class ReviewModel:
    """Who reviews what and when; arrays are in popularity order (index 0 = most reviewed)."""

    beer_ids: np.ndarray
    beer_brewery_ids: np.ndarray
    beer_quality: np.ndarray
    beer_p: np.ndarray
    profile_ids: np.ndarray
    profile_p: np.ndarray
    month_starts: np.ndarray  # epoch seconds, one more than there are months (the end bound)
    month_p: np.ndarray


# The least popular beers and profiles never review, at any scale: the change scenario deletes
# some of them, and deleting an unreferenced row keeps every review's references resolvable.
DORMANT_ROWS = 25


def _zipf(n: int, exponent: float, offset: float) -> np.ndarray:
    weights = 1.0 / (np.arange(1, n + 1) + offset) ** exponent
    weights[n - DORMANT_ROWS :] = 0.0
    return weights / weights.sum()


@lru_cache(maxsize=8)
def review_model(seed: int) -> ReviewModel:
    rng = np.random.default_rng([seed, _STREAM_MODEL])
    beer = load_dim("beer")
    profile = load_dim("profile")
    beer_order = rng.permutation(beer.num_rows)
    profile_order = rng.permutation(profile.num_rows)
    months = np.arange(np.datetime64(FIRST_MONTH), np.datetime64(LAST_MONTH) + 2)
    month_index = np.arange(len(months) - 1)
    growth = 1.0 / (1.0 + np.exp(-(month_index - GROWTH_MIDPOINT_MONTH) / GROWTH_WIDTH_MONTHS))
    return ReviewModel(
        beer_ids=beer.column("beer_id").to_numpy()[beer_order],
        beer_brewery_ids=beer.column("brewery_id").to_numpy()[beer_order],
        beer_quality=rng.normal(3.8, 0.35, beer.num_rows),
        beer_p=_zipf(beer.num_rows, BEER_ZIPF_EXPONENT, BEER_ZIPF_OFFSET),
        profile_ids=profile.column("profile_id").to_numpy()[profile_order],
        profile_p=_zipf(profile.num_rows, PROFILE_ZIPF_EXPONENT, PROFILE_ZIPF_OFFSET),
        month_starts=months.astype("datetime64[s]").astype(np.int64),
        month_p=growth / growth.sum(),
    )


def _round_scores(latent: np.ndarray, low: float) -> np.ndarray:
    return np.clip(np.rint(latent * 2.0) / 2.0, low, 5.0)


def draw_scores(model: ReviewModel, rng: np.random.Generator, beer_rank: np.ndarray) -> dict[str, np.ndarray]:
    n = len(beer_rank)
    latent = model.beer_quality[beer_rank] + rng.normal(0.0, 0.55, n)
    scores = {"review_overall": _round_scores(latent, 0.0)}
    for name in ASPECT_COLUMNS:
        scores[name] = _round_scores(latent + rng.normal(0.0, 0.45, n), 1.0)
    return scores


def draw_reviews(model: ReviewModel, rng: np.random.Generator, review_ids: np.ndarray, months: np.ndarray | None = None) -> pa.Table:
    """Reviews with the given ids; ``months`` (indexes into the model's months) pins their dates."""
    n = len(review_ids)
    beer_rank = rng.choice(len(model.beer_p), size=n, p=model.beer_p)
    profile_rank = rng.choice(len(model.profile_p), size=n, p=model.profile_p)
    if months is None:
        months = rng.choice(len(model.month_p), size=n, p=model.month_p)
    start = model.month_starts[months]
    length = model.month_starts[months + 1] - start
    review_time = start + (rng.random(n) * length).astype(np.int64)
    scores = draw_scores(model, rng, beer_rank)
    columns = {
        "review_id": np.asarray(review_ids, dtype=np.int64),
        "brewery_id": model.beer_brewery_ids[beer_rank],
        "beer_id": model.beer_ids[beer_rank],
        "profile_id": model.profile_ids[profile_rank],
        **scores,
        "review_time": review_time,
    }
    return pa.table({name: columns[name] for name in REVIEW_COLUMNS})


def generate_reviews(n: int, seed: int) -> pa.Table:
    """The base reviews: ids 1..n, the same table for the same (n, seed)."""
    if n < 0:
        raise ValueError(f"number of reviews must be >= 0, got {n}")
    rng = np.random.default_rng([seed, _STREAM_BASE_REVIEWS])
    return draw_reviews(review_model(seed), rng, np.arange(1, n + 1, dtype=np.int64))


def _csv_ready(table: pa.Table) -> pa.Table:
    """Scores as the source prints them (4.0, not 4)."""
    text = pa.array(SCORE_TEXT)
    columns = []
    for name in REVIEW_COLUMNS:
        col = table.column(name)
        if name in SCORE_COLUMNS:
            col = text.take(pa.array(np.rint(col.to_numpy() * 2).astype(np.int64)))
        columns.append(col)
    return pa.table(columns, names=list(REVIEW_COLUMNS))


CSV_CHUNK_ROWS = 262_144


def write_review_table_csv(path: Path, table: pa.Table) -> int:
    """A gzip CSV extract with the source header; returns the number of rows."""
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with gzip_writer(Path(path)) as gz:
        gz.write((",".join(REVIEW_COLUMNS) + "\n").encode())
        for offset in range(0, table.num_rows, CSV_CHUNK_ROWS):
            sink = pa.BufferOutputStream()
            pacsv.write_csv(_csv_ready(table.slice(offset, CSV_CHUNK_ROWS)), sink, options)
            gz.write(memoryview(sink.getvalue()))
    return table.num_rows


def write_reviews_csv(path: Path, n: int, seed: int) -> int:
    """``generate_reviews(n, seed)`` as one gzip CSV file; returns the number of rows."""
    return write_review_table_csv(path, generate_reviews(n, seed))
