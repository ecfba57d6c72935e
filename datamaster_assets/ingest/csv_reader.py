"""Batch CSV extracts: header check against the contract, then each chunk parsed either by the
typed pyarrow reader (fast path) or, if that refuses the chunk, line by line (slow path) so only
the offending rows are rejected.

Every record must sit on one line (no newlines inside quoted values): that is what lets a chunk
be parsed on its own and a row be traced back to its line. Blank lines are skipped, not counted.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from datamaster_assets.contracts import Column, Contract
from datamaster_assets.ingest.batch import ParsedBatch, Reject
from datamaster_assets.ingest.errors import BadInputError
from datamaster_assets.ingest.stream import Chunk, is_utf8
from datamaster_assets.ingest.values import (
    ValueRejected,
    build_bronze_array,
    converter_for,
    line_numbers,
    source_type,
    to_bronze_column,
)

UTF8_BOM = b"\xef\xbb\xbf"


@dataclass
class CsvLayout:
    header: list[str]  # column names as the file has them, in file order
    present: list[Column]  # contract columns found in the header
    missing_nullable: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    def notes(self) -> list[str]:
        out = []
        if self.extra:
            out.append(f"extra columns ignored: {', '.join(name or '(unnamed)' for name in self.extra)}")
        if self.missing_nullable:
            out.append(f"nullable columns missing from the file, loaded as null: {', '.join(self.missing_nullable)}")
        return out


BARE_CR = "the line holds a bare CR (\\r, classic Mac line ends?): only LF or CRLF line ends are supported"


def split_header(first: Chunk, contract: Contract, source_key: str) -> tuple[CsvLayout, Chunk]:
    """Read the header line off the first chunk; check it against the contract.

    Missing required columns make the whole file bad input; missing nullable columns are loaded
    as null; extra columns are ignored. Both are reported in the layout's notes.
    """
    end = first.data.find(b"\n")
    raw_header = first.data if end < 0 else first.data[:end]
    raw_header = raw_header.removeprefix(UTF8_BOM).rstrip(b"\r")
    try:
        text = raw_header.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputError(source_key, f"header is not valid UTF-8 (byte {exc.start})", line=1) from exc
    if not text.strip():
        raise BadInputError(source_key, "first line is empty, expected a CSV header", line=1)
    try:
        header = [name.strip() for name in next(csv.reader([text], strict=True))]
    except csv.Error as exc:
        hint = f"; {BARE_CR}" if "\r" in text else ""  # csv's own text suggests a Python open mode
        raise BadInputError(source_key, f"header is not valid CSV: {exc}{hint}", line=1) from exc
    # A contract column named twice is ambiguous; a repeated column the contract ignores (Excel's
    # trailing empty ",," columns, two "comment" columns) is just an extra column.
    dupes = sorted({n for n in header if header.count(n) > 1 and n in set(contract.column_names)})
    if dupes:
        raise BadInputError(source_key, f"duplicate header columns {dupes}", line=1)
    names = set(header)
    missing = [c for c in contract.columns if c.name not in names]
    required = [c.name for c in missing if not c.nullable]
    if required:
        raise BadInputError(
            source_key,
            f"required columns missing from the header: {', '.join(required)} (header: {', '.join(header)})",
            line=1,
            field=required[0],
        )
    layout = CsvLayout(
        header=header,
        present=[c for c in contract.columns if c.name in names],
        missing_nullable=[c.name for c in missing],
        extra=list(dict.fromkeys(n for n in header if n not in set(contract.column_names))),
    )
    rest = b"" if end < 0 else first.data[end + 1 :]
    return layout, Chunk(rest, first.first_line + 1, max(first.line_count - 1, 0))


def contract_columns_schema(contract: Contract) -> pa.Schema:
    """The contract columns as bronze carries them: bronze types, all nullable."""
    return pa.schema([pa.field(c.name, c.arrow_type) for c in contract.columns])


def _may_hold_blank_lines(parsed: pa.Table) -> bool:
    """With ``ignore_empty_lines=False`` a blank line parses as a row of nulls. A column without
    nulls rules that out in O(1), which is cheaper than scanning the text for empty lines."""
    if parsed.num_columns == 0:
        return parsed.num_rows > 0
    if any(column.null_count == 0 for column in parsed.columns):
        return False
    all_null = pc.is_null(parsed.column(0))
    for column in parsed.columns[1:]:
        all_null = pc.and_(all_null, pc.is_null(column))
    return bool(pc.any(all_null).as_py())


_HEX_INTEGER = re.compile(rb"0[xX][0-9a-fA-F]")
_TEXT_AFTER_CLOSING_QUOTE = re.compile(rb'[^,\n]"[^,"\r\n]')


def _pyarrow_would_be_lenient(data: bytes | bytearray) -> bool:
    """Text pyarrow's CSV reader takes where the row-by-row parser refuses it: hexadecimal integers
    ("0x10" read as 16) and text after a closing quote ('"4"5' read as 45). The memchr tests keep
    this free for files without an x or a quote; a false alarm only costs the slow path."""
    if (b"x" in data or b"X" in data) and _HEX_INTEGER.search(data):
        return True
    return b'"' in data and _TEXT_AFTER_CLOSING_QUOTE.search(data) is not None


def _ends_inside_quotes(data: bytes | bytearray) -> bool:
    """Whether the chunk's last line leaves a quote open. pyarrow takes the end of the buffer as
    the closing quote and loads the row, where the row-by-row parser refuses it ("unexpected end of
    data"); so a quoted newline split by a chunk boundary, or an unclosed quote on a file's last
    line, would load or not depending on the chunking. (An unclosed quote on an earlier line
    swallows the lines after it and is caught by the row count.) A literal quote in an unquoted
    field is a false alarm that only costs the slow path."""
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    start = data.rfind(b"\n", 0, end) + 1
    return data.count(b'"', start, end) % 2 == 1


def _assemble(contract: Contract, n: int, typed: dict[str, pa.Array]) -> pa.Table:
    arrays = [typed[c.name] if c.name in typed else pa.nulls(n, c.arrow_type) for c in contract.columns]
    return pa.Table.from_arrays(arrays, schema=contract_columns_schema(contract))


class CsvReader:
    def __init__(self, contract: Contract, layout: CsvLayout):
        self.contract = contract
        self.layout = layout
        self._read_options = pacsv.ReadOptions(column_names=layout.header, use_threads=True, block_size=1 << 20)
        self._parse_options = pacsv.ParseOptions(ignore_empty_lines=False)
        self._convert_options = pacsv.ConvertOptions(
            column_types={c.name: source_type(c) for c in layout.present},
            include_columns=[c.name for c in layout.present],
            null_values=[""],
            strings_can_be_null=True,
        )
        positions = {name: i for i, name in enumerate(layout.header)}
        self._plan = [(c, positions[c.name], converter_for(c, empty_is_null=True)) for c in layout.present]

    def parse(self, chunk: Chunk) -> ParsedBatch:
        return self.parse_fast(chunk) or self.parse_slow(chunk)

    def parse_fast(self, chunk: Chunk) -> ParsedBatch | None:
        data = chunk.data
        if not data or data[:1] in (b"\n", b"\r"):
            return None  # blank lines: the slow path skips them and keeps line numbers right
        if not is_utf8(data) or _pyarrow_would_be_lenient(data) or _ends_inside_quotes(data):
            return None
        try:
            parsed = pacsv.read_csv(
                pa.py_buffer(data),
                read_options=self._read_options,
                parse_options=self._parse_options,
                convert_options=self._convert_options,
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
            return None
        n = parsed.num_rows
        if n != chunk.line_count or _may_hold_blank_lines(parsed):
            return None
        typed = {}
        for col in self.layout.present:
            values, unrepresentable = to_bronze_column(col, parsed.column(col.name))
            if unrepresentable is not None:
                return None
            typed[col.name] = values
        return ParsedBatch(chunk, _assemble(self.contract, n, typed), line_numbers(chunk.first_line, n))

    def parse_slow(self, chunk: Chunk) -> ParsedBatch:
        width = len(self.layout.header)
        values: dict[str, list] = {c.name: [] for c in self.layout.present}
        lines: list[int] = []
        rejects: list[Reject] = []
        for offset, raw in enumerate(chunk.lines()):
            line = chunk.first_line + offset
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                rejects.append(Reject(line, raw, None, f"invalid UTF-8 at byte {exc.start}"))
                continue
            try:
                fields = next(csv.reader([text], strict=True))
            except csv.Error as exc:
                reason = BARE_CR if "\r" in text else exc
                rejects.append(Reject(line, raw, None, f"malformed CSV: {reason}"))
                continue
            if len(fields) != width:
                rejects.append(Reject(line, raw, None, f"expected {width} fields, found {len(fields)}"))
                continue
            row = []
            try:
                for col, pos, convert in self._plan:
                    row.append(convert(fields[pos]))
            except ValueRejected as exc:
                rejects.append(Reject(line, raw, col.name, f"{col.name}: {exc}"))
                continue
            for (col, _, _), value in zip(self._plan, row):
                values[col.name].append(value)
            lines.append(line)
        n = len(lines)
        typed = {c.name: build_bronze_array(c, values[c.name]) for c in self.layout.present}
        return ParsedBatch(
            chunk, _assemble(self.contract, n, typed), pa.array(lines, pa.int64()), rejects=rejects, fast=False
        )
