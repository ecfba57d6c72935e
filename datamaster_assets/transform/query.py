"""`datamaster query`: DuckDB SQL over the lake's tables.

Addressable names (case-insensitive): ``silver.<table>`` and ``gold.<mart>`` (Iceberg, read with a
pyiceberg scan into Arrow; DuckDB's iceberg extension would need a download this environment
cannot do) and ``bronze.<table>`` (the bronze Parquet files, Hive-partitioned by ingest day, so
``year``, ``month``, ``day`` columns come along). Only the tables the SQL names are read.

    run_query(open_lake(), "SELECT * FROM gold.top_beers_by_rating WHERE review_year = 2010 LIMIT 5")
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from datamaster_assets.transform.review_flat import arrow_of

if TYPE_CHECKING:
    from datamaster_assets.lake.factory import Lake

LAYERS = ("bronze", "silver", "gold")
FORMATS = ("table", "csv", "json")
# layer.table outside quotes; a quoted "gold"."x" is also accepted.
_REFERENCE = re.compile(r'(?<![\w."])"?(bronze|silver|gold)"?\s*\.\s*"?([A-Za-z_][A-Za-z0-9_]*)"?', re.IGNORECASE)
_STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")


class QueryError(ValueError):
    """The SQL names a table that does not exist, or DuckDB rejected it."""


def referenced_tables(sql: str) -> list[tuple[str, str]]:
    """(layer, table) pairs named in ``sql``, in first-use order, ignoring string literals."""
    stripped = _STRING_LITERAL.sub("''", sql)
    seen: dict[tuple[str, str], None] = {}
    for layer, table in _REFERENCE.findall(stripped):
        seen[(layer.lower(), table.lower())] = None
    return list(seen)


def _iceberg_table(lake: "Lake", layer: str, name: str) -> pa.Table:
    from pyiceberg.exceptions import NoSuchTableError

    from datamaster_assets.lake.catalog import table_identifier

    identifier = table_identifier(lake.settings, layer, name)
    try:
        return lake.catalog.load_table(identifier).scan().to_arrow()
    except NoSuchTableError:
        namespace = identifier.rsplit(".", 1)[0]
        try:
            known = sorted(t[-1] for t in lake.catalog.list_tables(namespace))
        except Exception:  # the namespace itself may not exist yet
            known = []
        raise QueryError(f"{layer}.{name} does not exist (Iceberg {identifier}); known {layer} tables: {known}")


def _hive_values(key: str) -> dict[str, int]:
    out = {}
    for part in key.split("/"):
        name, sep, value = part.partition("=")
        if sep and value.isdigit():
            out[name] = int(value)
    return out


def _bronze_relation(con: duckdb.DuckDBPyConnection, lake: "Lake", name: str, view: str) -> None:
    prefix = f"bronze/{name}/"
    local_root = lake.store.local_path(f"bronze/{name}")
    if local_root is not None:
        first = next(local_root.rglob("*.parquet"), None) if local_root.is_dir() else None
        if first is None:
            raise QueryError(f"bronze.{name}: no Parquet files under {prefix}")
        pattern = str(local_root / "**" / "*.parquet").replace("'", "''")
        # Zero-padded values (month=01) are not auto-cast: type the partition columns explicitly.
        partitions = _hive_values(first.relative_to(local_root).as_posix())
        hive_types = "{" + ", ".join(f"'{c}': 'BIGINT'" for c in partitions) + "}"
        con.execute(
            f"CREATE VIEW {view} AS SELECT * FROM read_parquet('{pattern}', hive_partitioning = true, "
            f"union_by_name = true{', hive_types = ' + hive_types if partitions else ''})"
        )
        return
    # No local path (S3): read each object through the store. DuckDB's httpfs would read s3:// directly
    # but needs an extension download; this branch streams the objects instead.
    pieces = []
    for info in lake.store.iter_all(prefix):
        if not info.key.endswith(".parquet"):
            continue
        with lake.store.open_read(info.key) as fh:
            piece = pq.read_table(pa.BufferReader(fh.read()))
        for column, value in _hive_values(info.key).items():
            if column not in piece.column_names:
                piece = piece.append_column(column, pa.array([value] * piece.num_rows, pa.int64()))
        pieces.append(piece)
    if not pieces:
        raise QueryError(f"bronze.{name}: no Parquet files under {prefix}")
    con.register(f"__bronze__{name}", pa.concat_tables(pieces, promote_options="default"))
    con.execute(f"CREATE VIEW {view} AS SELECT * FROM __bronze__{name}")


def _attach(con: duckdb.DuckDBPyConnection, lake: "Lake", layer: str, name: str) -> None:
    view = f"{layer}.{name}"
    if layer == "bronze":
        _bronze_relation(con, lake, name, view)
    else:
        con.register(f"__{layer}__{name}", _iceberg_table(lake, layer, name))
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM __{layer}__{name}")


def _missing_table_error(exc: duckdb.Error, missing: dict[tuple[str, str], QueryError]) -> QueryError | None:
    """Our explanation of a table DuckDB could not find, if it is one the SQL named and we lacked."""
    if not isinstance(exc, duckdb.CatalogException):
        return None
    message = str(exc).lower()
    return next((error for (_, name), error in missing.items() if f"name {name} does not exist" in message), None)


def run_query(lake: "Lake", sql: str) -> pa.Table:
    """Run DuckDB ``sql`` with the referenced bronze/silver/gold tables attached; the result as Arrow.

    ``layer.name`` text that names no table is only an error if DuckDB needs it as a table: an
    alias called ``gold`` makes ``gold.review_year`` a column, which the pattern cannot tell."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        for layer in LAYERS:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {layer}")
        missing: dict[tuple[str, str], QueryError] = {}
        for layer, name in referenced_tables(sql):
            try:
                _attach(con, lake, layer, name)
            except QueryError as exc:
                missing[(layer, name)] = exc
        try:
            return arrow_of(con.sql(sql)) if sql.strip() else pa.table({})
        except duckdb.Error as exc:
            raise (_missing_table_error(exc, missing) or QueryError(f"query failed: {exc}")) from exc
    finally:
        con.close()


def _plain(value: object) -> object:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e15 else repr(value)
    return str(_plain(value))


def format_table(table: pa.Table, fmt: str = "table") -> str:
    """Render a query result: 'table' (aligned text), 'csv' (header + rows), 'json' (one array of objects)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    rows = table.to_pylist()
    names = table.column_names
    if fmt == "json":
        return json.dumps([{k: _plain(v) for k, v in row.items()} for row in rows], ensure_ascii=False)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(names)
        for row in rows:
            writer.writerow(["" if row[n] is None else _plain(row[n]) for n in names])
        return buffer.getvalue()
    cells = [[_cell(row[n]) for n in names] for row in rows]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in table.schema.types]

    def line(values: list[str]) -> str:
        return " | ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [line(names), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)
