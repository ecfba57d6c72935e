"""silver.review_flat: live reviews joined to their beer, brewery and reviewer (DESIGN section 6).

Shaped like the source's ``dm_view.review_flat``. Rules:

- only live reviews (``deleted_at IS NULL``): gold never counts a deleted review, so review_flat
  does not carry them either;
- dimensions are left-joined and only live dimension rows match: a review whose beer (brewery,
  profile) was soft-deleted keeps its ``beer_id`` (``brewery_id``, ``profile_id``) but gets null
  beer (brewery, profile) columns;
- the brewery is the review's own ``brewery_id`` (the review row carries it), not the beer's;
- ``review_year`` / ``review_month`` are the UTC calendar month of ``review_time``.

All in Arrow: the live reviews and their UTC months, then each review's live dimension row
(``index_in`` on the key), the numeric attributes taken from that row, and the names, styles and
states as Arrow dictionaries over the dimension's distinct values. A full build is 1.59 M reviews
over 66 k beers, 5.8 k breweries and 33 k reviewers: the dictionaries cost a few milliseconds,
where DuckDB's hash join copied five strings into every review row (join CPU 0.72 -> 0.37 s;
docs/gold.md). The Parquet writer
takes the dictionaries as they are (write CPU 0.78 -> 0.65 s, files 38 -> 34 MiB), and DuckDB
groups the marts over them (marts CPU 1.06 -> 0.96 s).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

TS = pa.timestamp("us", tz="UTC")

REVIEW_FLAT_SCHEMA = pa.schema(
    [
        pa.field("review_id", pa.int64(), nullable=False),
        pa.field("review_time", TS),
        pa.field("review_year", pa.int32()),
        pa.field("review_month", pa.int32()),
        pa.field("review_overall", pa.float64()),
        pa.field("review_aroma", pa.float64()),
        pa.field("review_appearance", pa.float64()),
        pa.field("review_palate", pa.float64()),
        pa.field("review_taste", pa.float64()),
        pa.field("beer_id", pa.int64()),
        pa.field("beer_name", pa.string()),
        pa.field("beer_style", pa.string()),
        pa.field("beer_abv", pa.float64()),
        pa.field("brewery_id", pa.int64()),
        pa.field("brewery_name", pa.string()),
        pa.field("profile_id", pa.int64()),
        pa.field("profile_name", pa.string()),
        pa.field("state", pa.string()),
        pa.field("created_at", TS),
        pa.field("updated_at", TS),
    ]
)

# Each dimension: its key (also a review column) and the review_flat columns taken from its live row.
_DIMENSIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "beer": ("beer_id", ("beer_name", "beer_style", "beer_abv")),
    "brewery": ("brewery_id", ("brewery_name",)),
    "profile": ("profile_id", ("profile_name", "state")),
}

# The dimensions' strings (names, style, state) are Arrow dictionaries in what build_review_flat
# returns; plain strings in the Iceberg table (Parquet stores them dictionary-encoded).
LABEL = pa.dictionary(pa.int32(), pa.string())
REVIEW_FLAT_BUILT_SCHEMA = pa.schema([
    f.with_type(LABEL)
    if pa.types.is_string(f.type) and any(f.name in columns for _, columns in _DIMENSIONS.values()) else f
    for f in REVIEW_FLAT_SCHEMA
])

# The silver columns each input must have (more are allowed and ignored).
REQUIRED_INPUT_COLUMNS: dict[str, tuple[str, ...]] = {
    "review": (
        "review_id", "review_time", "review_overall", "review_aroma", "review_appearance", "review_palate",
        "review_taste", "beer_id", "brewery_id", "profile_id", "created_at", "updated_at", "deleted_at",
    ),
    "beer": ("beer_id", "beer_name", "beer_style", "beer_abv", "deleted_at"),
    "brewery": ("brewery_id", "brewery_name", "deleted_at"),
    "profile": ("profile_id", "profile_name", "state", "deleted_at"),
}

class ReviewFlatInputError(ValueError):
    """A silver input table lacks a column review_flat needs, or has duplicate live keys."""


def check_inputs(tables: dict[str, pa.Table]) -> None:
    for name, required in REQUIRED_INPUT_COLUMNS.items():
        missing = [c for c in required if c not in tables[name].column_names]
        if missing:
            raise ReviewFlatInputError(f"silver.{name} lacks column(s) {missing} needed by review_flat")


_database: duckdb.DuckDBPyConnection | None = None
_database_pid: int | None = None
_database_lock = threading.Lock()


def duckdb_connection() -> duckdb.DuckDBPyConnection:
    """A connection pinned to UTC (calendar months are UTC months) to this process's in-memory DuckDB.

    Opening a new database costs ~20 ms; a connection (cursor) to a shared one costs ~0.2 ms. Each
    connection has its own registered tables, temp tables and settings, and may be used from its
    own thread. Close it when done.
    """
    global _database, _database_pid
    with _database_lock:
        if _database is None or _database_pid != os.getpid():
            _database, _database_pid = duckdb.connect(), os.getpid()
        con = _database.cursor()
    con.execute("SET TimeZone = 'UTC'")
    return con


def arrow_of(result: duckdb.DuckDBPyRelation) -> pa.Table:
    """A DuckDB relation as one Arrow table (DuckDB 2 returns a reader from ``.arrow()``)."""
    out = result.arrow()
    return out.read_all() if isinstance(out, pa.RecordBatchReader) else out


def build_review_flat(review: pa.Table, beer: pa.Table, brewery: pa.Table, profile: pa.Table) -> pa.Table:
    """review_flat from the four silver tables (soft-deleted rows included in the inputs), with
    REVIEW_FLAT_BUILT_SCHEMA: the label columns are Arrow dictionaries."""
    tables = {"review": review, "beer": beer, "brewery": brewery, "profile": profile}
    check_inputs(tables)
    reviews = _live(review)
    review_time = reviews["review_time"].cast(TS)  # the UTC calendar month, whatever zone it came in
    columns = {name: reviews[name] for name in reviews.column_names}
    columns["review_year"] = pc.year(review_time)
    columns["review_month"] = pc.month(review_time)
    for name, (key, attributes) in _DIMENSIONS.items():
        live = _live_rows(name, key, tables[name])
        rows = pc.index_in(reviews[key], value_set=live[key], skip_nulls=True)  # null: no live row
        for attribute in attributes:
            columns[attribute] = _looked_up(live[attribute], rows, REVIEW_FLAT_BUILT_SCHEMA.field(attribute).type)
    return pa.table(
        [columns[f.name].cast(f.type) for f in REVIEW_FLAT_BUILT_SCHEMA], schema=REVIEW_FLAT_BUILT_SCHEMA
    )


def _live(table: pa.Table) -> pa.Table:
    """The rows without ``deleted_at`` (the table itself when none is deleted: no copy)."""
    if table["deleted_at"].null_count == table.num_rows:
        return table
    return table.filter(pc.is_null(table["deleted_at"]))


def _live_rows(name: str, key: str, table: pa.Table) -> pa.Table:
    """A dimension's live rows; refused when a key has more than one (which row would a review get?)."""
    live = _live(table)
    keys = live[key].drop_null()
    if pc.count_distinct(keys).as_py() != len(keys):
        counts = pc.value_counts(keys)
        duplicated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))[:5].to_pylist()
        raise ReviewFlatInputError(
            f"silver.{name} has duplicate live keys ({key} {duplicated}): silver.beer/brewery/profile "
            "must be unique per key"
        )
    return live


def _looked_up(values: pa.ChunkedArray, rows: pa.ChunkedArray, out_type: pa.DataType) -> pa.ChunkedArray:
    """``values`` at ``rows`` (null where the row is null); a dictionary over the distinct values
    when ``out_type`` is one, so no string is copied per review."""
    if not pa.types.is_dictionary(out_type):
        return pc.take(values, rows)
    encoded = pc.dictionary_encode(values.combine_chunks())  # one dictionary for every chunk
    dictionary = encoded.dictionary.cast(out_type.value_type)
    indices = pc.take(encoded.indices, rows).cast(out_type.index_type)
    return pa.chunked_array(
        [pa.DictionaryArray.from_arrays(chunk, dictionary) for chunk in indices.chunks], type=out_type
    )


@dataclass(frozen=True)
class FlatDiff:
    """What changed between two review_flat versions, keyed by review_id."""

    added: int
    removed: int
    changed: int  # present in both, any column different
    gold_months: frozenset[tuple[int, int]]  # old and new months of rows whose gold inputs differ

    @property
    def any_change(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def _row(alias: str, columns: Sequence[str]) -> str:
    return "(" + ", ".join(f"{alias}.{c}" for c in columns) + ")"


def diff_review_flat(old: pa.Table | None, new: pa.Table, gold_columns: Sequence[str]) -> FlatDiff:
    """Rows added, removed and changed from ``old`` to ``new``, and the (year, month) pairs gold must
    recompute: for every row added, removed or changed in a ``gold_columns`` column, its old month
    and its new month (a review moved to another month affects both). No ``old``: every month."""
    from datamaster_assets.transform.gold import months_of  # gold imports this module

    if old is None:
        return FlatDiff(added=new.num_rows, removed=0, changed=0, gold_months=frozenset(months_of(new)))
    columns = [c for c in REVIEW_FLAT_SCHEMA.names if c != "review_id"]
    missing = [c for c in [*columns, "review_id"] if c not in old.column_names or c not in new.column_names]
    if missing:
        raise ReviewFlatInputError(f"review_flat versions to compare lack column(s) {missing}")
    gold = [c for c in gold_columns if c != "review_id"]
    con = duckdb_connection()
    try:
        con.register("old_flat", old.select(["review_id", *columns]))
        con.register("new_flat", new.select(["review_id", *columns]))
        con.execute(
            f"""
            CREATE TEMP TABLE delta AS
            SELECT o.review_id IS NULL AS is_added, n.review_id IS NULL AS is_removed,
                   {_row('o', gold)} IS DISTINCT FROM {_row('n', gold)} AS gold_changed,
                   o.review_year AS old_year, o.review_month AS old_month,
                   n.review_year AS new_year, n.review_month AS new_month
            FROM old_flat o FULL JOIN new_flat n ON o.review_id = n.review_id
            WHERE o.review_id IS NULL OR n.review_id IS NULL
               OR {_row('o', columns)} IS DISTINCT FROM {_row('n', columns)}
            """
        )
        added, removed, changed = con.execute(
            "SELECT count(*) FILTER (is_added), count(*) FILTER (is_removed), "
            "count(*) FILTER (NOT is_added AND NOT is_removed) FROM delta"
        ).fetchone()
        months = con.execute(
            "SELECT old_year, old_month FROM delta WHERE gold_changed AND old_year IS NOT NULL "
            "UNION SELECT new_year, new_month FROM delta WHERE gold_changed AND new_year IS NOT NULL"
        ).fetchall()
        if old.num_rows - removed != new.num_rows - added:
            # More matched pairs than rows: the stored table repeats a review_id (another writer's
            # append). The join cannot see that; the extra copies count as removed rows.
            extra, duplicated_months = _duplicates(con)
            removed += extra
            months = [*months, *duplicated_months]
    finally:
        con.close()
    return FlatDiff(added=added, removed=removed, changed=changed, gold_months=frozenset(map(tuple, months)))


def _duplicates(con) -> tuple[int, list[tuple]]:
    """(extra copies of repeated review_ids in ``old_flat``, the months those rows sit in)."""
    extra = con.execute("SELECT count(*) - count(DISTINCT review_id) FROM old_flat").fetchone()[0]
    months = con.execute(
        "SELECT DISTINCT review_year, review_month FROM old_flat WHERE review_year IS NOT NULL AND review_id IN "
        "(SELECT review_id FROM old_flat GROUP BY review_id HAVING count(*) > 1)"
    ).fetchall()
    return extra, months
