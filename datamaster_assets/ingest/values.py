"""Column typing from the contract: the types parsers read, and row-by-row conversion for the
slow path (rows of a batch the vectorised reader refused).

A timestamp is read in its source form (epoch seconds as int64, ISO 8601 as a timestamp) and turned
into the bronze type, timestamp[us, UTC], by :func:`to_bronze_column`.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, timezone
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datamaster_assets.contracts import Column

TIMESTAMP_US_UTC = pa.timestamp("us", tz="UTC")
# Epoch seconds the bronze timestamp can hold *and* every reader can turn into a datetime:
# 0001-01-01 .. 9999-12-31T23:59:59 UTC. int64 microseconds reach year ~294,000, but a value past
# year 9999 (epoch milliseconds by mistake: 1255599527000) cannot be a Python datetime, so the rules,
# the rejects' reasons, pyiceberg and DuckDB's Python results would fail on it (OverflowError).
MIN_EPOCH_SECONDS = -62_135_596_800
MAX_EPOCH_SECONDS = 253_402_300_799


class ValueRejected(ValueError):
    """One value cannot be converted to its column's type; the message is the reason."""


def line_numbers(first: int, n: int) -> pa.Array:
    """int64 ``first .. first + n - 1``, wrapping numpy's buffer: ``pa.array(ndarray)`` would import
    numpy.ma on first use (~10 ms of every worker process)."""
    return pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(np.arange(first, first + n, dtype=np.int64))])


def source_type(column: Column) -> pa.DataType:
    """The Arrow type a reader should parse the raw value as."""
    if column.type == "timestamp" and column.source_format == "epoch_seconds":
        return pa.int64()
    return column.arrow_type


def to_bronze_column(column: Column, values: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array | None]:
    """Source-typed values -> bronze-typed values, plus a mask of rows whose value cannot be
    represented (None if all can)."""
    if column.type == "timestamp" and column.source_format == "epoch_seconds":
        low, high = pc.min_max(values).values()
        out_of_range = None
        if low.is_valid and (low.as_py() < MIN_EPOCH_SECONDS or high.as_py() > MAX_EPOCH_SECONDS):
            out_of_range = pc.or_(pc.less(values, MIN_EPOCH_SECONDS), pc.greater(values, MAX_EPOCH_SECONDS))
            values = pc.if_else(out_of_range, None, values)
        micros = pc.multiply(values, 1_000_000)
        return micros.cast(TIMESTAMP_US_UTC), out_of_range
    return values, None


def _fmt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Numbers in text: ASCII digits only, as the typed readers parse them. Python's int()/float() also
# take "1_0", other scripts' digits and surrounding Unicode spaces, which a value could then be
# loaded with or rejected for depending on which path its chunk took.
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE)
_BLANKS = " \t\r\n"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def to_int64(value: Any) -> int:
    if _is_number(value):
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise ValueRejected(f"{_fmt(value)} is not an integer")
        out = int(value)
    elif isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip(_BLANKS)):
        out = int(value.strip(_BLANKS))
    else:
        raise ValueRejected(f"{_fmt(value)} is not an integer")
    if not INT64_MIN <= out <= INT64_MAX:
        raise ValueRejected(f"{_fmt(value)} is out of range for int64")
    return out


def _to_float(value: Any) -> float:
    if _is_number(value):
        try:
            return float(value)
        except OverflowError:  # an integer beyond double range reads as infinity, as pyarrow reads it
            return math.inf if value > 0 else -math.inf
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip(_BLANKS)):
        return float(value.strip(_BLANKS))
    raise ValueRejected(f"{_fmt(value)} is not a number")


def _to_string(value: Any) -> str:
    """Text, or a JSON integer as its decimal digits. Booleans, fractions, objects and arrays are
    refused rather than given a Python spelling ("True", "100.0")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueRejected(f"{_fmt(value)} is not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate ("\\ud800" in JSON) cannot be stored as UTF-8
        raise ValueRejected(f"{_fmt(value)} is not valid Unicode (lone surrogate at character {exc.start})") from None
    return value


_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, str)):
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueRejected(f"{_fmt(value)} is not a boolean")


def _to_date(value: Any) -> date:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueRejected(f"{_fmt(value)} is not an ISO 8601 date")


def _epoch_micros(value: Any) -> int:
    """Epoch seconds (int, float or numeric string) -> integer microseconds."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds: float = value
    else:
        seconds = _to_float(value)
        if not math.isfinite(seconds):
            raise ValueRejected(f"{_fmt(value)} is not a finite epoch time")
    if not MIN_EPOCH_SECONDS <= seconds <= MAX_EPOCH_SECONDS:
        raise ValueRejected(f"{_fmt(value)} is out of range for epoch seconds")
    return value * 1_000_000 if isinstance(seconds, int) else round(seconds * 1_000_000)


def iso_timestamp(value: Any) -> datetime:
    """ISO 8601 text -> aware datetime (naive text is taken as UTC). Raises ValueRejected."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    raise ValueRejected(f"{_fmt(value)} is not an ISO 8601 timestamp")


def _to_int32(value: Any) -> int:
    out = to_int64(value)
    if not -(2**31) <= out < 2**31:
        raise ValueRejected(f"{out} is out of range for int32")
    return out


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "int64": to_int64,
    "int32": _to_int32,
    "float64": _to_float,
    "string": _to_string,
    "bool": _to_bool,
    "date": _to_date,
}


def converter_for(column: Column, *, empty_is_null: bool) -> Callable[[Any], Any]:
    """raw value -> Python value for :func:`build_bronze_array` (None for null).
    Raises ValueRejected with the reason."""
    if column.type == "timestamp":
        base = _epoch_micros if column.source_format == "epoch_seconds" else iso_timestamp
    else:
        base = _CONVERTERS[column.type]

    def convert(value: Any) -> Any:
        if value is None or (empty_is_null and value == ""):
            return None
        return base(value)

    return convert


def build_bronze_array(column: Column, values: list[Any]) -> pa.Array:
    """Values from :func:`converter_for` -> an Arrow array of the column's bronze type."""
    if column.type == "timestamp" and column.source_format == "epoch_seconds":
        return pa.array(values, pa.int64()).cast(TIMESTAMP_US_UTC)
    return pa.array(values, column.arrow_type)
