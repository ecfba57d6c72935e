"""Spark SQL for the silver CDC merge, generated from a table contract (no pyspark import here).

The same semantics as ``transform.silver.merge_changes`` (DESIGN section 6), in three steps:

1. ``source_sql``: the *merge source*, one row per key that has changes newer than the stored
   watermark ``(_change_ts, _change_seq, _source_key)``: the key's final change in CHANGE_ORDER, the values of
   its last upsert in the batch (``_prior_<col>``, ``_has_prior``) and the time of its first upsert
   in the batch (``_first_upsert_ts``).
2. ``row_expressions``: each silver column of the written row as an expression over the source
   (alias ``s``) and the stored row (alias ``t``; absent for a key the table has never seen).
3. Either ``merge_into_sql`` (Iceberg ``MERGE INTO``, EMR) or ``merged_table_sql`` (the same
   MERGE spelled as joins over plain tables: local Parquet mode, and what the tests compare with
   the Arrow engine). Both use the expressions of step 2, so testing one tests the other.
"""

from __future__ import annotations

from typing import Mapping

from datamaster_assets.contracts import CDC_OPERATIONS, Contract
from datamaster_assets.lake.catalog import LAKE_TABLE_PROPERTIES

# Spark SQL type per contract type (contracts.ARROW_TYPES keys).
SPARK_TYPES = {
    "int64": "BIGINT",
    "int32": "INT",
    "float64": "DOUBLE",
    "string": "STRING",
    "bool": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
}
AUDIT_COLUMNS = ("created_at", "updated_at", "deleted_at")
WATERMARK_COLUMNS = ("_change_ts", "_change_seq", "_source_key")
CHANGE_ORDER = ("_change_ts", "_change_seq", "_source_key", "_source_line")
# Bronze lineage columns the merge reads (the others are carried in bronze only).
LINEAGE_TYPES = {
    "_source_key": "STRING",
    "_op": "STRING",
    "_change_ts": "TIMESTAMP",
    "_change_seq": "BIGINT",
    "_source_line": "BIGINT",
}
OUTCOMES = ("stale_ignored", "superseded", "inserted", "updated", "revived", "deleted", "tombstoned", "unchanged")


def tblproperties_sql(extra: Mapping[str, str] | None = None) -> str:
    """TBLPROPERTIES of an Iceberg table the lake creates: format v2, ``LAKE_TABLE_PROPERTIES``
    (as the Arrow path sets them), then the table's own ``extra``."""
    properties = {"format-version": "2", **LAKE_TABLE_PROPERTIES, **(extra or {})}
    return "TBLPROPERTIES (" + ", ".join(f"'{key}' = '{value}'" for key, value in properties.items()) + ")"


def quote(name: str) -> str:
    """A Spark SQL identifier, back-quoted."""
    return "`" + name.replace("`", "``") + "`"


def silver_columns(contract: Contract) -> list[tuple[str, str]]:
    """(column, Spark SQL type) of a silver table, in the order of ``transform.silver.silver_schema``."""
    columns = [(c.name, SPARK_TYPES[c.type]) for c in contract.columns]
    columns += [(name, "TIMESTAMP") for name in AUDIT_COLUMNS]
    columns += [("_change_ts", "TIMESTAMP"), ("_change_seq", "BIGINT"), ("_source_key", "STRING")]
    return columns


def bronze_ddl(contract: Contract) -> str:
    """DDL schema string for reading bronze Parquet (contract columns + the lineage the merge uses)."""
    columns = [(c.name, SPARK_TYPES[c.type]) for c in contract.columns] + list(LINEAGE_TYPES.items())
    return ", ".join(f"{quote(name)} {type_}" for name, type_ in columns)


def create_table_sql(contract: Contract, table: str) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for the Iceberg silver table (unpartitioned, like the contracts
    say; copy-on-write, the fast path measured for whole-table merges)."""
    columns = ",\n    ".join(
        f"{quote(name)} {type_}{' NOT NULL' if name in contract.primary_key else ''}" for name, type_ in silver_columns(contract)
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (\n    {columns}\n) USING iceberg\n"
        + tblproperties_sql({f"write.{op}.mode": "copy-on-write" for op in ("merge", "update", "delete")})
    )


def _key_join(contract: Contract, left: str, right: str) -> str:
    return " AND ".join(f"{left}.{quote(k)} = {right}.{quote(k)}" for k in contract.primary_key)


def _keys(contract: Contract, alias: str | None = None) -> str:
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + quote(k) for k in contract.primary_key)


def newer_sql(change: str, stored: str) -> str:
    """The change (alias ``change``) is newer than the stored row's watermark (alias ``stored``):
    later in CHANGE_ORDER as far as the watermark goes (time, sequence, file). A missing watermark
    (a row written by another tool) is older than any change."""
    c, s = change, stored
    return (
        f"({s}._change_ts IS NULL OR {c}._change_ts > {s}._change_ts OR ({c}._change_ts = {s}._change_ts AND "
        f"({s}._change_seq IS NULL OR {c}._change_seq > {s}._change_seq OR ({c}._change_seq = {s}._change_seq AND "
        f"({s}._source_key IS NULL OR {c}._source_key > {s}._source_key)))))"
    )


def validation_sql(contract: Contract, changes: str) -> str:
    """One row: per required field, the count of null values and the first offending row's
    ``_source_key:_source_line``; plus rows whose ``_op`` is not a CDC operation."""
    required = list(contract.primary_key) + ["_op", "_change_ts", "_change_seq", "_source_key", "_source_line"]
    ops = ", ".join(f"'{op}'" for op in CDC_OPERATIONS)
    order = "struct(_source_key, _source_line)"
    parts = []
    for name in required:
        parts.append(f"count_if({quote(name)} IS NULL) AS {quote('nulls:' + name)}")
        parts.append(
            f"min_by(concat_ws(':', _source_key, CAST(_source_line AS STRING)), {order}) "
            f"FILTER (WHERE {quote(name)} IS NULL) AS {quote('first:' + name)}"
        )
    parts.append(f"count_if(_op IS NOT NULL AND _op NOT IN ({ops})) AS `nulls:_op_value`")
    parts.append(
        f"min_by(concat_ws(':', _source_key, CAST(_source_line AS STRING)), {order}) "
        f"FILTER (WHERE _op IS NOT NULL AND _op NOT IN ({ops})) AS `first:_op_value`"
    )
    return f"SELECT {', '.join(parts)} FROM {changes}"


def fresh_changes_sql(contract: Contract, changes: str, target: str) -> str:
    """The changes newer than the watermark the target holds for their key (all, for new keys)."""
    return f"""SELECT c.* FROM {changes} AS c
LEFT JOIN (SELECT {_keys(contract)}, _change_ts, _change_seq, _source_key FROM {target}) AS w
    ON {_key_join(contract, 'c', 'w')}
WHERE w.{quote(contract.primary_key[0])} IS NULL OR {newer_sql('c', 'w')}"""


def source_sql(contract: Contract, fresh: str) -> str:
    """The merge source over the fresh changes: one row per key (see the module docstring).

    Besides the key's final change it carries, from this batch: ``_first_upsert_ts``; the values
    of the last upsert (``_prior_<col>``, ``_has_prior``); and the values and time of the delete
    that ended the row's life, i.e. the first delete after the last upsert (``_end_<col>``,
    ``_end_ts``), which is what a final delete records (a second delete of a deleted row only
    moves the watermark).
    """
    key = _keys(contract)
    order = ", ".join(CHANGE_ORDER)
    last_first = ", ".join(f"{c} DESC" for c in CHANGE_ORDER)
    values = [quote(c) for c in contract.column_names]
    prior = ", ".join(f"u.{v} AS {quote('_prior_' + c)}" for v, c in zip(values, contract.column_names))
    end = ", ".join(f"e.{v} AS {quote('_end_' + c)}" for v, c in zip(values, contract.column_names))
    return f"""WITH ranked AS (
    SELECT *,
        row_number() OVER (PARTITION BY {key} ORDER BY {last_first}) AS _rank,
        min(CASE WHEN _op <> 'delete' THEN _change_ts END) OVER (PARTITION BY {key}) AS _first_upsert_ts,
        max(CASE WHEN _op <> 'delete' THEN struct({order}) END) OVER (PARTITION BY {key}) AS _last_upsert_at
    FROM {fresh}
), last_upserts AS (
    SELECT {', '.join(values)}, row_number() OVER (PARTITION BY {key} ORDER BY {last_first}) AS _rank
    FROM {fresh} WHERE _op <> 'delete'
), ending_deletes AS (
    SELECT {', '.join(values)}, _change_ts, row_number() OVER (PARTITION BY {key} ORDER BY {order}) AS _rank
    FROM ranked WHERE _op = 'delete' AND (_last_upsert_at IS NULL OR struct({order}) > _last_upsert_at)
)
SELECT {', '.join('l.' + v for v in values)},
    l._op, l._change_ts, l._change_seq, l._source_key, l._first_upsert_ts,
    u.{quote(contract.primary_key[0])} IS NOT NULL AS _has_prior,
    {prior},
    e._change_ts AS _end_ts,
    {end}
FROM ranked AS l
LEFT JOIN (SELECT * FROM last_upserts WHERE _rank = 1) AS u ON {_key_join(contract, 'l', 'u')}
LEFT JOIN (SELECT * FROM ending_deletes WHERE _rank = 1) AS e ON {_key_join(contract, 'l', 'e')}
WHERE l._rank = 1"""


def row_expressions(contract: Contract, stored: str | None) -> list[tuple[str, str]]:
    """(silver column, expression) of the row written for a source row ``s``.

    ``stored`` is the alias of the stored row (a MERGE ``WHEN MATCHED``), or None for a key the
    table does not hold (``WHEN NOT MATCHED``). Mirrors steps 3a/3b of ``merge_changes``:
    an upsert takes its own values, keeps the first ``created_at``, clears ``deleted_at``; a delete
    keeps the most recent values known (the batch's last upsert, else the stored row, else the
    ending delete's own), is dated by the delete that ended the row's life and, on a row already
    deleted with no upsert in between, moves only the watermark.
    """
    is_delete = "s._op = 'delete'"
    stays_deleted = f"({is_delete} AND {stored}.deleted_at IS NOT NULL AND NOT s._has_prior)" if stored else None
    out = []
    for c in contract.column_names:
        q = quote(c)
        fallback = f"{stored}.{q}" if stored else f"s.{quote('_end_' + c)}"
        out.append((c, f"CASE WHEN NOT ({is_delete}) THEN s.{q} WHEN s._has_prior THEN s.{quote('_prior_' + c)} ELSE {fallback} END"))
    if stored:
        out.append(("created_at", f"coalesce({stored}.created_at, s._first_upsert_ts)"))
        out.append((
            "updated_at",
            f"CASE WHEN NOT ({is_delete}) THEN s._change_ts WHEN {stays_deleted} THEN {stored}.updated_at ELSE s._end_ts END",
        ))
        out.append((
            "deleted_at",
            f"CASE WHEN NOT ({is_delete}) THEN CAST(NULL AS TIMESTAMP) WHEN {stays_deleted} THEN {stored}.deleted_at "
            "ELSE s._end_ts END",
        ))
    else:
        out.append(("created_at", "s._first_upsert_ts"))
        out.append(("updated_at", f"CASE WHEN {is_delete} THEN s._end_ts ELSE s._change_ts END"))
        out.append(("deleted_at", f"CASE WHEN {is_delete} THEN s._end_ts ELSE CAST(NULL AS TIMESTAMP) END"))
    out += [(c, f"s.{c}") for c in WATERMARK_COLUMNS]
    return out


def merge_into_sql(contract: Contract, target: str, source: str) -> str:
    """Iceberg ``MERGE INTO`` applying the merge source to the silver table.

    The ``newer`` guard repeats the source's stale filter so that a source computed against an
    older snapshot can never move a row backwards.
    """
    matched = ",\n        ".join(f"{quote(c)} = {e}" for c, e in row_expressions(contract, "t"))
    inserted = row_expressions(contract, None)
    return f"""MERGE INTO {target} AS t
USING {source} AS s
ON {_key_join(contract, 't', 's')}
WHEN MATCHED AND {newer_sql('s', 't')} THEN UPDATE SET
        {matched}
WHEN NOT MATCHED THEN INSERT ({', '.join(quote(c) for c, _ in inserted)})
    VALUES ({', '.join(e for _, e in inserted)})"""


def merged_table_sql(contract: Contract, target: str, source: str) -> str:
    """The complete silver table after the MERGE, as a query over plain tables (Parquet mode):
    stored rows the MERGE leaves alone, rows it updates, rows it inserts."""
    columns = [quote(c) for c, _ in silver_columns(contract)]
    typed = dict(silver_columns(contract))

    def select(exprs: list[tuple[str, str]]) -> str:
        return ", ".join(f"CAST({e} AS {typed[c]}) AS {quote(c)}" for c, e in exprs)

    return f"""SELECT {', '.join('t.' + c for c in columns)} FROM {target} AS t
LEFT ANTI JOIN {source} AS s ON {_key_join(contract, 't', 's')} AND {newer_sql('s', 't')}
UNION ALL
SELECT {select(row_expressions(contract, 't'))} FROM {target} AS t
JOIN {source} AS s ON {_key_join(contract, 't', 's')} AND {newer_sql('s', 't')}
UNION ALL
SELECT {select(row_expressions(contract, None))} FROM {source} AS s
LEFT ANTI JOIN {target} AS t ON {_key_join(contract, 't', 's')}"""


def outcome_counts_sql(contract: Contract, changes: str, fresh: str, source: str, target: str) -> str:
    """One row with the count of change rows per outcome (``transform.silver.OUTCOMES``), computed
    against the target *before* the MERGE."""
    k = quote(contract.primary_key[0])
    upsert, delete = "s._op <> 'delete'", "s._op = 'delete'"
    return f"""SELECT
    (SELECT count(*) FROM {changes}) - (SELECT count(*) FROM {fresh}) AS stale_ignored,
    (SELECT count(*) FROM {fresh}) - count(*) AS superseded,
    count_if({upsert} AND t.{k} IS NULL) AS inserted,
    count_if({upsert} AND t.{k} IS NOT NULL AND t.deleted_at IS NULL) AS updated,
    count_if({upsert} AND t.deleted_at IS NOT NULL) AS revived,
    count_if({delete} AND NOT (t.deleted_at IS NOT NULL AND NOT s._has_prior)
             AND (s._has_prior OR t.{k} IS NOT NULL)) AS deleted,
    count_if({delete} AND t.{k} IS NULL AND NOT s._has_prior) AS tombstoned,
    count_if({delete} AND t.deleted_at IS NOT NULL AND NOT s._has_prior) AS unchanged
FROM {source} AS s
LEFT JOIN {target} AS t ON {_key_join(contract, 't', 's')}"""
