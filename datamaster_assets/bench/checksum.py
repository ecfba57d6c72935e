"""Order-independent content checksums, so a benchmark can prove its outputs are right.

A checksum covers the named columns of every row, normalised first (integers as int64, floats
rounded to 9 decimals, timestamps as epoch microseconds, text as text) so the same content gives
the same value whichever engine wrote it and in whatever row order. Row hashes are summed modulo
2**64 rather than xor-ed, so a duplicated row changes the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

FLOAT_DECIMALS = 9


@dataclass(frozen=True)
class Checksum:
    rows: int
    digest: str  # 16 hex digits

    def as_dict(self) -> dict:
        return {"rows": self.rows, "digest": self.digest}


def _normalised(column: pa.ChunkedArray) -> pa.ChunkedArray:
    t = column.type
    if pa.types.is_timestamp(t):
        return pc.cast(pc.cast(column, pa.timestamp("us", tz=t.tz)), pa.int64())
    if pa.types.is_integer(t):
        return pc.cast(column, pa.int64())
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pc.round(pc.cast(column, pa.float64()), FLOAT_DECIMALS)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return pc.cast(column, pa.string())
    raise TypeError(f"cannot checksum a column of type {t}")


def normalise(table: pa.Table, columns: Sequence[str]) -> pa.Table:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise KeyError(f"columns {missing} not in the table (has {table.column_names})")
    return pa.table({c: _normalised(table.column(c)) for c in columns})


def content_checksum(table: pa.Table, columns: Sequence[str]) -> Checksum:
    """Row count and an order-independent digest of ``columns``."""
    if not columns:
        raise ValueError("name at least one column to checksum")
    data = normalise(table, columns)
    con = duckdb.connect()
    try:
        con.register("t", data)
        row_hash = "hash(" + ", ".join(f'"{c}"' for c in columns) + ")"
        rows, total = con.execute(
            f"SELECT count(*), coalesce(sum({row_hash}::HUGEINT), 0) % 18446744073709551616 FROM t"
        ).fetchone()
    finally:
        con.close()
    return Checksum(rows=int(rows), digest=f"{int(total):016x}")
