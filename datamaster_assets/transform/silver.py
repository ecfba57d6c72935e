"""Silver CDC merge (DESIGN section 6), pure Arrow: bronze change rows in, new silver table out.

A silver table holds the current state of one source table: the contract columns, the audit
columns ``created_at``/``updated_at``/``deleted_at`` and three watermark columns recording the
change that last touched the row (``_change_ts``, ``_change_seq``, ``_source_key``).

``merge_changes`` is idempotent and order-insensitive across calls: a change is applied only if
it is newer, by ``(_change_ts, _change_seq)``, than the watermark stored for its key, so replayed,
duplicated or late (older) files change nothing. Deletes are soft. A delete for a key the table
has never seen leaves a *tombstone* (a row with ``deleted_at`` set and ``created_at`` null), so
that an older insert of that key arriving later in a late file stays deleted.

Everything is vectorised (Arrow compute, one numpy scatter); nothing loops over rows.

A table with a single integer primary key is stored sorted by that key: looking up the changed
keys is then a binary search instead of hashing the whole table, the new table is assembled with
one near-sequential ``take``, and each data file covers a narrow key range (tight min/max
statistics for key lookups). A table that is not sorted yet (another writer, an older version)
is sorted by the first merge that rewrites it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datamaster_assets.contracts import CDC_OPERATIONS, Contract

TIMESTAMP = pa.timestamp("us", tz="UTC")
AUDIT_COLUMNS = ("created_at", "updated_at", "deleted_at")
WATERMARK_COLUMNS = ("_change_ts", "_change_seq", "_source_key")
# Total order of changes (DESIGN section 6): time, sequence within the source, file, line.
CHANGE_ORDER = ("_change_ts", "_change_seq", "_source_key", "_source_line")
# The bronze lineage columns the merge reads (the others, _control_id and _ingested_at, are not
# needed, so the worker does not even read them from the Parquet files).
MERGE_LINEAGE = ("_op",) + CHANGE_ORDER
MAX_CHUNKS = 64  # above this many chunks in a column, tables are made contiguous (_bounded_chunks)
# Watermark columns the merge holds as Arrow dictionaries: ``_source_key`` repeats one bronze key
# per file across the whole table, so ~1.6 M rows carry 6 MB of int32 indices instead of ~90 MB of
# strings to read, reorder and write (docs/silver.md, "Table layout").
DICTIONARY_COLUMNS = ("_source_key",)
DICTIONARY_STRING = pa.dictionary(pa.int32(), pa.string())


def change_schema(contract: Contract) -> pa.Schema:
    """What the merge reads from bronze: the contract columns and MERGE_LINEAGE, bronze-typed."""
    bronze = contract.bronze_schema
    return pa.schema([bronze.field(name) for name in contract.column_names + list(MERGE_LINEAGE)])


def silver_schema(contract: Contract) -> pa.Schema:
    """Contract columns (only the primary key required), audit columns, watermark columns."""
    fields = [pa.field(c.name, c.arrow_type, nullable=c.name not in contract.primary_key) for c in contract.columns]
    fields += [pa.field(name, TIMESTAMP) for name in AUDIT_COLUMNS]
    fields += [
        pa.field("_change_ts", TIMESTAMP),
        pa.field("_change_seq", pa.int64()),
        pa.field("_source_key", pa.string()),
    ]
    return pa.schema(fields)


def merge_schema(contract: Contract) -> pa.Schema:
    """``silver_schema`` as the merge holds it: DICTIONARY_COLUMNS as dictionaries of their strings."""
    schema = silver_schema(contract)
    for name in DICTIONARY_COLUMNS:
        at = schema.get_field_index(name)
        schema = schema.set(at, schema.field(at).with_type(DICTIONARY_STRING))
    return schema


# What happened to each change row: exactly one of these. The last six describe the final change
# of a key (the one that decides its row); the first two are changes that did not.
OUTCOMES = (
    "stale_ignored",  # not newer than the row already held for its key (replays, late files)
    "superseded",  # overtaken by a later change to the same key in this batch
    "inserted",  # key absent -> live row
    "updated",  # live row -> live row
    "revived",  # deleted row (or tombstone) -> live row
    "deleted",  # ends soft-deleted after being live (stored, or upserted earlier in this batch)
    "tombstoned",  # delete of a key never seen: recorded as a deleted row (see module docstring)
    "unchanged",  # delete of an already-deleted row: only the watermark moves
)
_CODE = {name: i for i, name in enumerate(OUTCOMES)}


@dataclass(frozen=True)
class MergeResult:
    table: pa.Table  # the complete new silver table, ``merge_schema`` (at most MAX_CHUNKS chunks per column)
    outcomes: np.ndarray = field(repr=False)  # int8 code (index into OUTCOMES) per input change row
    written: pa.Table = field(repr=False)  # the rows written: final upserts, then final deletes

    def counts(self, rows: slice | None = None) -> dict[str, int]:
        """Change rows per outcome, for all changes or for a slice of them (e.g. one input file)."""
        codes = self.outcomes if rows is None else self.outcomes[rows]
        per_code = np.bincount(codes, minlength=len(OUTCOMES))
        return {name: int(n) for name, n in zip(OUTCOMES, per_code)}

    def __getattr__(self, name: str) -> int:
        if name in _CODE:
            return int(np.count_nonzero(self.outcomes == _CODE[name]))
        raise AttributeError(name)

    @property
    def changes_read(self) -> int:
        return len(self.outcomes)

    @property
    def applied(self) -> int:
        return int(np.count_nonzero(self.outcomes >= _CODE["inserted"]))

    @property
    def changed(self) -> bool:
        """False when the merge is a no-op and the stored table can stay as it is."""
        return self.applied > 0


def validate_changes(changes: pa.Table, contract: Contract) -> list[str]:
    """Problems that make a bronze change table unusable (empty list when it is fine).

    Messages name the field and the first offending ``_source_line``.
    """
    addable = _addable(contract)
    missing = [c for c in change_schema(contract).names if c not in changes.column_names and c not in addable]
    if missing:
        return [f"missing columns {missing}"]
    problems = []
    for name in list(contract.primary_key) + ["_op", "_change_ts", "_change_seq", "_source_key", "_source_line"]:
        nulls = changes[name].null_count
        if nulls:
            line = _first_line(changes, pc.is_null(changes[name]))
            problems.append(f"{nulls} row(s) with null {name} (first at _source_line {line})")
    bad_op = pc.invert(pc.is_in(changes["_op"], value_set=pa.array(CDC_OPERATIONS)))
    n_bad = pc.sum(pc.fill_null(bad_op, False)).as_py() or 0
    if n_bad:
        problems.append(
            f"{n_bad} row(s) with _op not in {list(CDC_OPERATIONS)} (first at _source_line {_first_line(changes, bad_op)})"
        )
    return problems


def _first_line(changes: pa.Table, mask: pa.ChunkedArray) -> int | None:
    lines = changes["_source_line"].filter(pc.fill_null(mask, False))
    return lines[0].as_py() if len(lines) else None


def _addable(contract: Contract) -> list[str]:
    """Contract columns a bronze file may lack: written before the column joined the contract, its
    changes carry null there (like a column DMS omits). Keys and lineage never."""
    return [c for c in contract.column_names if c not in contract.primary_key]


def conform_changes(changes: pa.Table, contract: Contract) -> pa.Table:
    """Select and cast to ``change_schema`` (fails with pyarrow's message if a type cannot cast);
    a non-key contract column the file lacks comes back as nulls."""
    schema = change_schema(contract)
    for name in _addable(contract):
        if name not in changes.column_names:
            changes = changes.append_column(schema.field(name), pa.nulls(changes.num_rows, schema.field(name).type))
    return changes.select(schema.names).cast(schema)


def _keys_unique(table: pa.Table, key: tuple[str, ...]) -> bool:
    if table.num_rows <= 1:
        return True
    if len(key) != 1:
        return False
    column = table[key[0]]
    if pa.types.is_integer(column.type) and column.null_count == 0:
        values = column.to_numpy()
        if (values[1:] > values[:-1]).all():  # strictly increasing (typical of a load): no hashing
            return True
    return pc.count_distinct(column).as_py() == table.num_rows


@dataclass(frozen=True)
class KeyHistory:
    """Per key with several changes in a batch (keys in ascending order), row numbers into the
    batch of: its last change, its first and last upsert, and the first delete of its trailing
    run of deletes (the delete that ended the row's life). -1 where there is none."""

    last: np.ndarray
    first_upsert: np.ndarray
    last_upsert: np.ndarray
    trailing_delete: np.ndarray


def key_history(changes: pa.Table, key: tuple[str, ...], is_upsert: np.ndarray) -> KeyHistory:
    n = changes.num_rows
    sort_keys = [(k, "ascending") for k in key] + [(c, "ascending") for c in CHANGE_ORDER]
    order = pc.sort_indices(changes, sort_keys=sort_keys).to_numpy().astype(np.int64)
    starts_mask = np.zeros(n, dtype=bool)
    starts_mask[:1] = True
    for k in key:
        col = changes[k].take(order).combine_chunks()
        starts_mask[1:] |= _bools(pc.not_equal(col.slice(0, n - 1), col.slice(1)))
    starts = np.flatnonzero(starts_mask)
    idx = np.arange(n)
    up = is_upsert[order]
    ends = np.r_[starts[1:], n] - 1
    first_up = np.minimum.reduceat(np.where(up, idx, n), starts)
    last_up = np.maximum.reduceat(np.where(up, idx, -1), starts)
    prev_up = np.r_[False, up[:-1]]
    delete_run_start = ~up & (starts_mask | prev_up)
    trailing = np.maximum.reduceat(np.where(delete_run_start, idx, -1), starts)

    def rows(sorted_pos: np.ndarray) -> np.ndarray:
        valid = (sorted_pos >= 0) & (sorted_pos < n)
        return np.where(valid, order[np.clip(sorted_pos, 0, n - 1)], -1)

    return KeyHistory(order[ends], rows(first_up), rows(last_up), rows(trailing))


def latest_change_per_key(changes: pa.Table, key: tuple[str, ...]) -> pa.Table:
    """The last change of every key in CHANGE_ORDER (input rows in any order)."""
    if _keys_unique(changes, key):
        return changes
    is_upsert = _bools(pc.not_equal(changes["_op"], "delete"))
    return changes.take(key_history(changes, key, is_upsert).last)


def _nullable_rows(rows: np.ndarray) -> pa.Array:
    return pa.array(np.where(rows < 0, 0, rows), mask=rows < 0)


def _is_int_key(schema: pa.Schema, key: tuple[str, ...]) -> bool:
    """Tables with this key are kept sorted by it (module docstring)."""
    return len(key) == 1 and pa.types.is_integer(schema.field(key[0]).type)


def sorted_int_keys(table: pa.Table, key: tuple[str, ...]) -> np.ndarray | None:
    """The key values as numpy when ``key`` is one integer column without nulls, strictly
    ascending through ``table``; else None."""
    if not _is_int_key(table.schema, key):
        return None
    column = table[key[0]]
    if column.null_count:
        return None
    values = column.to_numpy()
    return values if values.size < 2 or bool((values[1:] > values[:-1]).all()) else None


def _sorted_positions(sorted_keys: np.ndarray, probe: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``_positions`` by binary search in ascending unique keys."""
    wanted = probe.to_numpy() if isinstance(probe, pa.ChunkedArray) else probe.to_numpy(zero_copy_only=False)
    at = np.searchsorted(sorted_keys, wanted)
    clipped = np.minimum(at, max(sorted_keys.size - 1, 0))
    found = (at < sorted_keys.size) & (sorted_keys[clipped] == wanted) if sorted_keys.size else np.zeros(len(wanted), bool)
    return pa.array(clipped, pa.int64(), mask=~found)


def _positions(target: pa.Table, probe: pa.Table, key: tuple[str, ...], sorted_keys: np.ndarray | None = None) -> pa.Array:
    """For every row of ``probe``: the row number of its key in ``target`` (null when absent).
    ``target`` keys must be unique; ``sorted_keys`` is ``sorted_int_keys(target, key)``."""
    if sorted_keys is not None and probe[key[0]].null_count == 0:
        return _sorted_positions(sorted_keys, probe[key[0]])
    if len(key) == 1:
        return _array(pc.index_in(probe[key[0]], value_set=target[key[0]].combine_chunks()))
    left = probe.select(key).append_column("_pidx", pa.array(np.arange(probe.num_rows)))
    right = target.select(key).append_column("_tidx", pa.array(np.arange(target.num_rows)))
    joined = left.join(right, keys=list(key), join_type="left outer").sort_by("_pidx")
    return joined["_tidx"].combine_chunks()


def _later_file_wins_ties(newer: pa.Array, current: pa.Table, changes: pa.Table, positions, tie) -> pa.Array:
    """Changes whose time and sequence equal the stored watermark's are newer when their file sorts
    after the stored one: the order a single batch applies (CHANGE_ORDER), so how files are batched
    does not change the result. The same file again (a replay) stays not newer."""
    tie_rows = np.flatnonzero(_array(pc.fill_null(tie, False)).to_numpy(zero_copy_only=False))
    if not len(tie_rows):
        return newer
    change_file = changes["_source_key"].take(tie_rows).cast(pa.string())
    stored_file = current["_source_key"].take(positions.take(tie_rows)).cast(pa.string())
    later = pc.fill_null(pc.or_kleene(pc.is_null(stored_file), pc.greater(change_file, stored_file)), False)
    out = newer.to_numpy(zero_copy_only=False).copy()
    out[tie_rows[_array(later).to_numpy(zero_copy_only=False)]] = True
    return pa.array(out)


def _sum(mask: pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0)


def _and(*masks: pa.Array) -> pa.Array:
    out = masks[0]
    for m in masks[1:]:
        out = pc.and_(out, m)
    return out


def _where(values, mask: pa.Array, selected: int):
    """values.filter(mask), without a copy when the mask selects everything."""
    return values if selected == len(mask) else values.filter(mask)


def _take_or_nulls(column: pa.ChunkedArray, positions: pa.Array) -> pa.Array:
    if positions.null_count == len(positions):
        return pa.nulls(len(positions), column.type)
    return _array(column.take(positions))


def merge_changes(current: pa.Table | None, changes: pa.Table, contract: Contract) -> MergeResult:
    """Apply bronze change rows (``contract.bronze_schema``, or just ``change_schema``) to the
    current silver table.

    With the changes in order, the result equals applying them one at a time in CHANGE_ORDER and
    skipping every change that is not newer than the row's stored watermark.
    """
    schema = merge_schema(contract)
    key = contract.primary_key
    current = schema.empty_table() if current is None else current.select(schema.names).cast(schema)
    changes = conform_changes(changes, contract)

    # 1. Drop changes not newer than what the table holds for their key (replays, late files).
    sorted_keys = sorted_int_keys(current, key)
    if current.num_rows:
        pos_all = _positions(current, changes, key, sorted_keys)
        stored_ts, stored_seq = current["_change_ts"].take(pos_all), current["_change_seq"].take(pos_all)
        ts, seq = changes["_change_ts"], changes["_change_seq"]
        # A stored row without a watermark (written by another tool) is older than any change.
        same_ts = pc.equal(ts, stored_ts)
        newer_seq = pc.or_kleene(pc.is_null(stored_seq), pc.greater(seq, stored_seq))
        newer = pc.or_kleene(
            pc.or_kleene(pc.is_null(pos_all), pc.is_null(stored_ts)),
            pc.or_kleene(pc.greater(ts, stored_ts), pc.and_kleene(same_ts, newer_seq)),
        )
        newer = _later_file_wins_ties(_array(pc.fill_null(newer, False)), current, changes, pos_all,
                                      pc.and_kleene(same_ts, pc.equal(seq, stored_seq)))
        n_fresh = _sum(newer)
        fresh = _bounded_chunks(_where(changes, newer, n_fresh))
        fresh_pos = _where(pos_all, newer, n_fresh)
        fresh_rows = np.flatnonzero(newer.to_numpy(zero_copy_only=False))
    else:
        fresh = _bounded_chunks(changes)
        fresh_pos = pa.nulls(fresh.num_rows, pa.int32())
        fresh_rows = np.arange(fresh.num_rows)

    # 2. The final change per key decides the row's state. With several changes to a key in this
    #    batch, its first upsert gives created_at and, when the final change is a delete, its last
    #    upsert gives the values and the delete that ended the run gives deleted_at.
    if _keys_unique(fresh, key):
        history = None  # every key changes once: its final change is its only one
        latest, pos, latest_rows = fresh, fresh_pos, fresh_rows
        first_upsert_ts = fresh["_change_ts"]  # only read for upserts
    else:
        history = key_history(fresh, key, _bools(pc.not_equal(fresh["_op"], "delete")))
        latest, pos = fresh.take(history.last).combine_chunks(), fresh_pos.take(history.last)
        latest_rows = fresh_rows[history.last]
        first_upsert_ts = _array(fresh["_change_ts"].take(_nullable_rows(history.first_upsert)))

    is_delete = _array(pc.equal(latest["_op"], "delete"))
    n_delete = _sum(is_delete)
    is_upsert = pc.invert(is_delete)
    n_upsert = latest.num_rows - n_delete

    # 3a. Final upserts: the change's values; created_at of the first time the row was live.
    up = _where(latest, is_upsert, n_upsert)
    up_pos = _where(pos, is_upsert, n_upsert)
    up_first_ts = _where(first_upsert_ts, is_upsert, n_upsert)
    up_stored_created = _take_or_nulls(current["created_at"], up_pos)
    up_stored_deleted = pc.is_valid(_take_or_nulls(current["deleted_at"], up_pos))
    up_columns = {c: up[c] for c in contract.column_names + list(WATERMARK_COLUMNS)}
    up_columns["created_at"] = pc.coalesce(up_stored_created, _array(up_first_ts))
    up_columns["updated_at"] = up["_change_ts"]
    up_columns["deleted_at"] = pa.nulls(up.num_rows, TIMESTAMP)
    written_up = _table(up_columns, schema)

    # 3b. Final deletes keep the most recent values known: this batch's last upsert of the key,
    #     else the stored row, else (a tombstone) whatever the ending delete itself carried.
    dl = _where(latest, is_delete, n_delete)
    if history is None:
        dl_end, dl_prior = dl, None
    else:
        dl_mask = _bools(is_delete)
        dl_end = fresh.take(_nullable_rows(history.trailing_delete[dl_mask])).combine_chunks()
        last_upsert = history.last_upsert[dl_mask]
        dl_prior = fresh.take(_nullable_rows(last_upsert)).combine_chunks()  # null rows: no upsert
        dl_prior = dl_prior.append_column("_has_prior", pa.array(last_upsert >= 0))
    dl_pos = _where(pos, is_delete, n_delete)
    dl_stored = current.take(dl_pos).combine_chunks()
    dl_has_stored = pc.is_valid(dl_pos)
    dl_stored_deleted = pc.is_valid(dl_stored["deleted_at"])
    dl_had_prior = pa.array(np.zeros(dl.num_rows, bool)) if dl_prior is None else dl_prior["_has_prior"]
    dl_columns = {}
    for c in contract.column_names:
        values = pc.if_else(dl_has_stored, dl_stored[c], dl_end[c])
        dl_columns[c] = values if dl_prior is None else pc.if_else(dl_had_prior, dl_prior[c], values)
    # Only the watermark moves when an already-deleted row is deleted again.
    stays_deleted = _and(dl_stored_deleted, pc.invert(dl_had_prior))
    dl_first_ts = _where(first_upsert_ts, is_delete, n_delete) if dl_prior is not None else pa.nulls(dl.num_rows, TIMESTAMP)
    dl_columns["created_at"] = pc.coalesce(dl_stored["created_at"], _array(dl_first_ts))
    dl_columns["updated_at"] = pc.if_else(stays_deleted, dl_stored["updated_at"], dl_end["_change_ts"])
    dl_columns["deleted_at"] = pc.if_else(stays_deleted, dl_stored["deleted_at"], dl_end["_change_ts"])
    for c in WATERMARK_COLUMNS:
        dl_columns[c] = dl[c]
    written_dl = _table(dl_columns, schema)

    # 4. Untouched stored rows + the rows written above.
    written = pa.concat_tables([written_up, written_dl])
    touched = np.zeros(current.num_rows, dtype=bool)
    touched[pos.drop_null().to_numpy()] = True
    table = _without_unused_values(_assemble(current, touched, written, key, sorted_keys))

    outcomes = np.full(changes.num_rows, _CODE["stale_ignored"], dtype=np.int8)
    outcomes[fresh_rows] = _CODE["superseded"]
    up_has_stored = _bools(pc.is_valid(up_pos))
    up_code = np.where(
        _bools(up_stored_deleted), _CODE["revived"], np.where(up_has_stored, _CODE["updated"], _CODE["inserted"])
    )
    dl_code = np.where(
        _bools(stays_deleted),
        _CODE["unchanged"],
        np.where(_bools(dl_had_prior) | _bools(dl_has_stored), _CODE["deleted"], _CODE["tombstoned"]),
    )
    outcomes[_where_np(latest_rows, is_upsert, n_upsert)] = up_code
    outcomes[_where_np(latest_rows, is_delete, n_delete)] = dl_code
    return MergeResult(table=table, outcomes=outcomes, written=written)


def _assemble(current: pa.Table, touched: np.ndarray, written: pa.Table, key: tuple[str, ...],
              sorted_keys: np.ndarray | None) -> pa.Table:
    """The new table: ``current`` without its ``touched`` rows, plus ``written`` (keys unique,
    none among the untouched rows). Kept sorted by a single integer key (module docstring):
    merged in key order when ``current`` is sorted, else sorted once."""
    if not written.num_rows:
        return current
    if sorted_keys is not None:
        written_keys = written[key[0]].to_numpy()
        if not current.num_rows and (written_keys.size < 2 or bool((written_keys[1:] > written_keys[:-1]).all())):
            return _bounded_chunks(written)  # a first load already in key order: nothing to move
        kept_rows = np.flatnonzero(~touched)
        written_order = np.argsort(written_keys, kind="stable")
        # Where each written row lands among the kept ones, in key order.
        landing = np.searchsorted(sorted_keys[kept_rows], written_keys[written_order]) + np.arange(written.num_rows)
        is_written = np.zeros(kept_rows.size + written.num_rows, dtype=bool)
        is_written[landing] = True
        order = np.empty(is_written.size, dtype=np.int64)
        order[~is_written] = kept_rows
        order[is_written] = current.num_rows + written_order
        return _bounded_chunks(pa.concat_tables([current, written]).take(pa.array(order)))
    kept = current.filter(pa.array(~touched)) if touched.any() else current
    parts = [t for t in (kept, written) if t.num_rows]
    table = _bounded_chunks(pa.concat_tables(parts)) if len(parts) > 1 else parts[0]
    if _is_int_key(table.schema, key) and sorted_int_keys(table, key) is None:
        table = _bounded_chunks(table.take(pc.sort_indices(table[key[0]])))
    return table


def _without_unused_values(table: pa.Table) -> pa.Table:
    """DICTIONARY_COLUMNS without the dictionary values no row refers to any more (a bronze file
    whose rows were all replaced). Parquet stores a dictionary column's values as given, used or
    not, and the next merge reads them back, so they would pile up with every file merged."""
    for name in DICTIONARY_COLUMNS:
        at = table.schema.get_field_index(name)
        if at < 0 or not pa.types.is_dictionary(table.schema.field(at).type):
            continue
        column = table.column(at)
        chunks = [_compact_dictionary(chunk) for chunk in column.chunks]
        if any(new is not old for new, old in zip(chunks, column.chunks)):
            table = table.set_column(at, table.field(at), pa.chunked_array(chunks, column.type))
    return table


def _compact_dictionary(values: pa.DictionaryArray) -> pa.DictionaryArray:
    used = np.sort(pc.unique(values.indices).drop_null().to_numpy())
    if used.size == len(values.dictionary):
        return values
    renumber = np.zeros(len(values.dictionary), dtype=values.type.index_type.to_pandas_dtype())
    renumber[used] = np.arange(used.size)
    indices = pc.take(pa.array(renumber), values.indices)  # null indices stay null
    return pa.DictionaryArray.from_arrays(indices, values.dictionary.take(pa.array(used)))


def _bools(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(_array(mask).to_numpy(zero_copy_only=False), dtype=bool)


def _where_np(rows: np.ndarray, mask: pa.Array, selected: int) -> np.ndarray:
    return rows if selected == len(rows) else rows[_bools(mask)]


def _table(columns: dict, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_arrays([_as_type(columns[f.name], f.type) for f in schema], schema=schema)


def _as_type(values: pa.Array | pa.ChunkedArray, type_: pa.DataType) -> pa.Array | pa.ChunkedArray:
    return values if values.type == type_ else values.cast(type_)


def _bounded_chunks(table: pa.Table) -> pa.Table:
    """The table as is when its columns have few chunks, else one chunk per column.

    Thousands of small chunks make Parquet writes crawl (PERFORMANCE.md); a few dozen large ones
    (a scan's record batches, a Parquet file's row groups) write as fast as one, and leaving
    them saves a copy of the whole table.
    """
    if max((column.num_chunks for column in table.columns), default=0) > MAX_CHUNKS:
        return table.combine_chunks()
    return table


def _array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    return values


def live_rows(silver: pa.Table) -> pa.Table:
    """Rows that are not soft-deleted."""
    return silver.filter(pc.is_null(silver["deleted_at"]))
