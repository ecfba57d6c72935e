"""CDC change lines exactly as AWS DMS -> Kinesis -> Firehose writes them (gzip JSON lines).

Two shapes, one change per line:

* DMS envelope: ``{"data": {row}, "metadata": {"timestamp", "record-type", "operation",
  "partition-key-type", "schema-name", "table-name", "transaction-id"}}``. Null columns are left
  out of ``data``, as DMS does by default (``IncludeNullAndEmpty`` false).
* router-flattened: the row's columns plus ``operation``, ``timestamp`` and ``transaction-id`` at
  the top level.

``encode_change_lines`` handles any rows (Python, for the small dimension and scenario files);
``encode_numeric_change_lines`` builds the same bytes with Arrow compute for large all-numeric
tables (reviews), so benchmark inputs of millions of lines take seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_NAME = "dm"
OPERATIONS = ("load", "insert", "update", "delete")
# Changes per source transaction in the generated files.
TXN_SIZE = 25
# 0.0 .. 5.0 in steps of 0.5, written the way the source prints numeric(2,1).
SCORE_TEXT = tuple(f"{i / 2:.1f}" for i in range(11))

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc) - _EPOCH


def iso_utc(ts: datetime) -> str:
    """2012-01-31T10:00:00.000123Z: DMS's ISO-8601 UTC timestamp with microseconds."""
    if ts.tzinfo is None:
        raise ValueError(f"timestamp {ts!r} has no time zone; pass an aware (UTC) datetime")
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def to_epoch_us(ts: datetime) -> int:
    return (ts - _EPOCH) // _US


def from_epoch_us(us: int) -> datetime:
    return _EPOCH + us * _US


@dataclass(frozen=True)
class Change:
    """One data change: the row image, the operation and when the source committed it."""

    table: str
    operation: str
    row: Mapping[str, Any]
    timestamp_us: int
    transaction_id: int

    def __post_init__(self) -> None:
        if self.operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, got {self.operation!r}")


def _metadata(table: str, operation: str, timestamp: str, transaction_id: int) -> dict[str, Any]:
    return {
        "timestamp": timestamp,
        "record-type": "data",
        "operation": operation,
        "partition-key-type": "primary-key",
        "schema-name": SCHEMA_NAME,
        "table-name": table,
        "transaction-id": transaction_id,
    }


def _dumps(doc: Any) -> str:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def encode_change(change: Change, *, envelope: bool) -> str:
    data = {k: v for k, v in change.row.items() if v is not None}
    timestamp = iso_utc(from_epoch_us(change.timestamp_us))
    if envelope:
        return _dumps({"data": data, "metadata": _metadata(change.table, change.operation, timestamp, change.transaction_id)})
    return _dumps({**data, "operation": change.operation, "timestamp": timestamp, "transaction-id": change.transaction_id})


_DMS_TYPES = {pa.int64(): "INT8", pa.float64(): "REAL8", pa.string(): "STRING"}


def create_table_control_line(table: str, schema: pa.Schema, primary_key: Sequence[str], timestamp_us: int) -> str:
    """The control record DMS emits before a table's first change (``IncludeControlDetails``)."""
    table_def = {
        "columns": {f.name: {"type": _DMS_TYPES[f.type], "nullable": f.name not in primary_key} for f in schema},
        "primary-key": list(primary_key),
    }
    metadata = {
        "timestamp": iso_utc(from_epoch_us(timestamp_us)),
        "record-type": "control",
        "operation": "create-table",
        "partition-key-type": "task-id",
        "schema-name": SCHEMA_NAME,
        "table-name": table,
    }
    return _dumps({"control": {"table-def": table_def}, "metadata": metadata})


def encode_change_lines(changes: Iterable[Change], *, envelope: bool) -> list[str]:
    return [encode_change(c, envelope=envelope) for c in changes]


# ---- vectorised path for large numeric tables ----------------------------------------------

_TWO_DIGITS = pa.array([f"{i:02d}" for i in range(60)])
_US_PER_DAY = 86_400_000_000


def iso_utc_array(timestamps_us: np.ndarray) -> pa.Array:
    """``iso_utc`` for an int64 array of epoch microseconds, built from lookups (Arrow's strftime is slow)."""
    us = np.asarray(timestamps_us, dtype=np.int64)
    days, in_day = np.divmod(us, _US_PER_DAY)
    unique_days, day_index = np.unique(days, return_inverse=True)
    day_text = pa.array([str(d) for d in unique_days.astype("datetime64[D]")]).take(pa.array(day_index))
    seconds, micros = np.divmod(in_day, 1_000_000)
    hours, rest = np.divmod(seconds, 3600)
    minutes, secs = np.divmod(rest, 60)
    micro_text = pc.utf8_lpad(pc.cast(pa.array(micros), pa.string()), width=6, padding="0")
    return pc.binary_join_element_wise(
        day_text, "T",
        _TWO_DIGITS.take(pa.array(hours)), ":",
        _TWO_DIGITS.take(pa.array(minutes)), ":",
        _TWO_DIGITS.take(pa.array(secs)), ".",
        micro_text, "Z",
        "",
    )


def _column_text(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if column.null_count:
        raise ValueError("encode_numeric_change_lines needs columns without nulls")
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.string())
    if pa.types.is_floating(column.type):
        halves = column.to_numpy() * 2
        index = np.rint(halves).astype(np.int64)
        if not np.array_equal(index, halves) or index.min() < 0 or index.max() > 10:
            raise ValueError("float columns must be scores 0.0..5.0 in steps of 0.5")
        return pa.array(SCORE_TEXT).take(pa.array(index))
    raise ValueError(f"column type {column.type} is not numeric")


def encode_numeric_change_lines(
    table_name: str,
    rows: pa.Table,
    operations: Sequence[str] | np.ndarray,
    timestamps_us: np.ndarray,
    transaction_ids: np.ndarray,
    *,
    envelope: bool,
) -> pa.Array:
    """One JSON line per row (no trailing newline), byte-identical to ``encode_change``."""
    n = rows.num_rows
    if not (len(operations) == len(timestamps_us) == len(transaction_ids) == n):
        raise ValueError("operations, timestamps and transaction ids must have one entry per row")
    ops = pa.array(np.asarray(operations, dtype=object), pa.string())
    ts_text = iso_utc_array(timestamps_us)
    txn_text = pc.cast(pa.array(np.asarray(transaction_ids, dtype=np.int64)), pa.string())
    parts: list[Any] = []
    for i, name in enumerate(rows.column_names):
        parts += [("{" if i == 0 else ",") + _dumps(name) + ":", _column_text(rows.column(name))]
    if envelope:
        head = ['{"data":'] + parts + ['},"metadata":{"timestamp":"', ts_text, '","record-type":"data","operation":"', ops]
        tail = [
            '","partition-key-type":"primary-key","schema-name":' + _dumps(SCHEMA_NAME)
            + ',"table-name":' + _dumps(table_name) + ',"transaction-id":',
            txn_text,
            "}}",
        ]
        pieces = head + tail
    else:
        pieces = parts + [',"operation":"', ops, '","timestamp":"', ts_text, '","transaction-id":', txn_text, "}"]
    if n == 0:
        return pa.array([], pa.string())
    return pc.binary_join_element_wise(*pieces, "")


def write_lines(gz, lines: pa.Array | Sequence[str]) -> int:
    """Write newline-terminated lines to an open binary stream; returns the number of lines."""
    if isinstance(lines, (pa.Array, pa.ChunkedArray)):
        arr = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
        if len(arr):
            # Append the newlines in Arrow and hand the contiguous value buffer to the compressor.
            terminated = pc.binary_join_element_wise(arr, "\n", "")
            offsets = terminated.buffers()[1]
            start, end = np.frombuffer(offsets, dtype=np.int32, count=len(terminated) + 1, offset=terminated.offset * 4)[[0, -1]]
            gz.write(memoryview(terminated.buffers()[2])[start:end])
        return len(arr)
    for line in lines:
        gz.write(line.encode("utf-8"))
        gz.write(b"\n")
    return len(lines)
