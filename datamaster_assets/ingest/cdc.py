"""CDC change files (gzip JSON lines, one change per line) in either form:

* the AWS DMS envelope: ``{"data": {<row>}, "metadata": {"operation", "timestamp",
  "record-type", "schema-name", "table-name", "transaction-id", ...}}``
* router-flattened: the row's columns at the top level plus ``operation`` and change metadata
  (``timestamp``, ``transaction-id``, ...).

``record-type: control`` lines are skipped and counted. A column absent from a line loads as
null: DMS writes full row images and omits null columns, so absent and null mean the same here.
A delete may carry only the primary key. A line without an operation is a full-row ``load``.

Each chunk goes through pyarrow's JSON reader with an explicit schema (fast path); a chunk it
refuses (a line that is not JSON, a wrong type, invalid UTF-8, blank lines) is re-read line by
line so only the offending lines are rejected.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from datamaster_assets.contracts import Contract
from datamaster_assets.ingest.batch import ParsedBatch, Reject
from datamaster_assets.ingest.csv_reader import contract_columns_schema
from datamaster_assets.ingest.stream import Chunk, is_utf8
from datamaster_assets.ingest.values import (
    TIMESTAMP_US_UTC,
    ValueRejected,
    build_bronze_array,
    converter_for,
    iso_timestamp,
    line_numbers,
    source_type,
    to_bronze_column,
    to_int64,
)

# Change metadata: in ``metadata`` for the envelope, at the top level when flattened.
# Sequence fields order changes across the whole source, because silver compares them across
# files. DMS's ``transaction-record-id`` is "the record offset within a transaction" (it restarts in
# every transaction), so it is not one: within a file, the line order already follows it.
SEQUENCE_FIELDS = ("change_seq", "seq")
METADATA_FIELDS = pa.schema(
    [
        ("operation", pa.string()),
        ("timestamp", TIMESTAMP_US_UTC),
        ("record-type", pa.string()),
    ]
    + [(name, pa.int64()) for name in SEQUENCE_FIELDS]
)
KNOWN_METADATA_KEYS = {
    "operation", "timestamp", "record-type", "schema-name", "table-name", "transaction-id",
    "transaction-record-id", "partition-key-type", "partition-key-value", "prev-transaction-id",
    "prev-transaction-record-id", "commit-timestamp", "stream-position", "seq", "change_seq",
}
SAMPLE_LINES = 20
ENVELOPE_KEYS = ("data", "metadata")
# What a chunk's lines must all start and end with to take the fast path (see parse_fast). Then
# every newline sits in "}\n{", which JSON allows only between top-level values, so no object
# spans two lines. A blank line, or blanks around a line, send the chunk line by line.
LINE_FRAME = b"{}"


class _Repeated(dict):
    """A JSON object in which some names appear more than once (``json`` keeps the last value)."""

    __slots__ = ("repeated",)


def _object(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    out = _Repeated(obj)
    seen: set[str] = set()
    out.repeated = {name for name, _ in pairs if name in seen or seen.add(name)}
    return out


def _repeated(obj: Any, names: Iterable[str]) -> str | None:
    """The first of ``names`` that appears more than once in ``obj``, if any."""
    if isinstance(obj, _Repeated):
        return next((name for name in names if name in obj.repeated), None)
    return None


def _is_envelope(obj: Any) -> bool:
    return isinstance(obj, dict) and any(isinstance(obj.get(key), dict) for key in ENVELOPE_KEYS)


class CdcReader:
    def __init__(self, contract: Contract):
        self.contract = contract
        self.extra_fields: set[str] = set()
        row_fields = [pa.field(c.name, source_type(c)) for c in contract.columns]
        self._envelope_schema = pa.schema(
            [pa.field("data", pa.struct(row_fields)), pa.field("metadata", pa.struct(list(METADATA_FIELDS)))]
        )
        # In the flattened form, "data"/"metadata" keys mean an envelope line mixed in. They are
        # declared as empty structs so the reader flags them (non-null) at no cost when absent;
        # searching the text for them cost more than parsing a flattened file's metadata.
        self._envelope_markers = [name for name in ENVELOPE_KEYS if name not in contract.column_names]
        self._flat_schema = pa.schema(
            row_fields
            + [f for f in METADATA_FIELDS if f.name not in contract.column_names]
            + [pa.field(name, pa.struct([])) for name in self._envelope_markers]
        )
        self._read_options = pajson.ReadOptions(use_threads=False, block_size=1 << 20)
        self._converters = [(c, converter_for(c, empty_is_null=False)) for c in contract.columns]
        self._names = set(contract.column_names)

    # -- form detection and extra-field reporting ------------------------------------------
    def _sample(self, chunk: Chunk) -> bool | None:
        """Envelope (True), flattened (False) or unknown (None), from the chunk's first lines;
        also collects field names the contract does not know."""
        form = None
        end = 0
        for _ in range(SAMPLE_LINES):
            nxt = chunk.data.find(b"\n", end)
            raw = chunk.data[end:] if nxt < 0 else chunk.data[end:nxt]
            end = nxt + 1
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                envelope = _is_envelope(obj)
                form = envelope if form is None else form
                self._note_extra(obj, envelope)
            if nxt < 0:
                break
        return form

    def _note_extra(self, obj: dict, envelope: bool) -> None:
        if envelope:
            meta = obj.get("metadata")
            if isinstance(meta, dict) and meta.get("record-type") == "control":
                return
            row = obj.get("data") if isinstance(obj.get("data"), dict) else {}
            keys = set(row)
        else:
            if obj.get("record-type") == "control":
                return
            keys = set(obj) - KNOWN_METADATA_KEYS
        self.extra_fields.update(keys - self._names)

    # -- parsing -------------------------------------------------------------------------------
    def parse(self, chunk: Chunk) -> ParsedBatch:
        form = self._sample(chunk)
        batch = self.parse_fast(chunk, form) if form is not None else None
        return batch or self.parse_slow(chunk)

    def parse_fast(self, chunk: Chunk, envelope: bool) -> ParsedBatch | None:
        if not envelope and len(self._envelope_markers) < len(ENVELOPE_KEYS):
            if b'"data"' in chunk.data or b'"metadata"' in chunk.data:
                return None  # a contract column is named like an envelope key: sort it out line by line
        if not is_utf8(chunk.data):
            return None  # pyarrow would not look at bytes in fields it ignores
        schema = self._envelope_schema if envelope else self._flat_schema
        try:
            parsed = pajson.read_json(
                pa.BufferReader(chunk.data),
                read_options=self._read_options,
                parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
            return None
        if parsed.num_rows != chunk.line_count or not chunk.lines_framed:
            # pyarrow skips blank lines, reads two objects on one line as two rows and an object
            # split over two lines as one, so rows match lines only when the counts agree and no
            # object can span lines (LINE_FRAME)
            return None
        if not envelope and any(parsed.column(name).null_count < parsed.num_rows for name in self._envelope_markers):
            return None  # envelope lines mixed into a flattened chunk: sort them out line by line
        parsed = parsed.combine_chunks()
        if envelope:
            data = parsed.column("data").chunk(0) if parsed.num_rows else pa.array([], schema.field("data").type)
            meta = parsed.column("metadata").chunk(0) if parsed.num_rows else pa.array([], schema.field("metadata").type)
            row = {name: pc.struct_field(data, name) for name in self._names}
            info = {f.name: pc.struct_field(meta, f.name) for f in METADATA_FIELDS}
            row_missing = pc.is_null(data)
        else:
            row = {name: parsed.column(name).combine_chunks() for name in self._names}
            info = {f.name: (parsed.column(f.name).combine_chunks() if f.name in parsed.column_names
                             else pa.nulls(parsed.num_rows, f.type)) for f in METADATA_FIELDS}
            row_missing = None
        lines = line_numbers(chunk.first_line, parsed.num_rows)
        control = pc.fill_null(pc.equal(info["record-type"], "control"), False)
        if row_missing is not None and pc.any(pc.and_(row_missing, pc.invert(control))).as_py():
            return None  # a data line without "data" (or another form mixed in): sort it out line by line
        n_control = pc.sum(control).as_py() or 0
        keep = pc.invert(control) if n_control else None

        def kept(arr: pa.Array) -> pa.Array:
            return arr if keep is None else pc.filter(arr, keep)

        typed = {}
        for col in self.contract.columns:
            values, unrepresentable = to_bronze_column(col, kept(row[col.name]))
            if unrepresentable is not None:
                return None
            typed[col.name] = values
        n = parsed.num_rows - n_control
        seq = pc.coalesce(*[info[name] for name in SEQUENCE_FIELDS])
        return ParsedBatch(
            chunk,
            pa.Table.from_arrays([typed[c.name] for c in self.contract.columns], schema=contract_columns_schema(self.contract)),
            kept(lines),
            ops=pc.fill_null(pc.utf8_lower(kept(info["operation"])), "load"),
            change_ts=kept(info["timestamp"]),
            change_seq=kept(seq),
            control_records=n_control,
        )

    def parse_slow(self, chunk: Chunk) -> ParsedBatch:
        columns: dict[str, list] = {c.name: [] for c in self.contract.columns}
        lines: list[int] = []
        ops: list[str] = []
        stamps: list[Any] = []
        seqs: list[int | None] = []
        rejects: list[Reject] = []
        control = 0
        for offset, raw in enumerate(chunk.lines()):
            line = chunk.first_line + offset
            if not raw.strip():
                continue
            try:
                # decoded strictly: json.loads(bytes) would take UTF-16/32 by its byte pattern and
                # encoded surrogates (b"\xed\xa0\x80") through "surrogatepass". A leading BOM is
                # skipped, as json.loads(bytes) and pyarrow skip it.
                obj = json.loads(bytes(raw).decode("utf-8").removeprefix("\ufeff"), object_pairs_hook=_object)
            except UnicodeDecodeError as exc:
                rejects.append(Reject(line, raw, None, f"invalid UTF-8 at byte {exc.start}"))
                continue
            except ValueError as exc:
                rejects.append(Reject(line, raw, None, f"not JSON: {exc}"))
                continue
            if not isinstance(obj, dict):
                rejects.append(Reject(line, raw, None, f"not a JSON object but {type(obj).__name__}"))
                continue
            envelope = _is_envelope(obj)
            if envelope:
                row = obj.get("data") if isinstance(obj.get("data"), dict) else {}
                meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
                wrong = next((k for k in ENVELOPE_KEYS if obj.get(k) is not None and not isinstance(obj[k], dict)), None)
                if wrong:
                    rejects.append(Reject(line, raw, wrong, f"{wrong}: not a JSON object but {type(obj[wrong]).__name__}"))
                    continue
                repeated = (_repeated(obj, ENVELOPE_KEYS) or _repeated(row, self.contract.column_names)
                            or _repeated(meta, METADATA_FIELDS.names))
            else:
                row, meta = obj, obj
                repeated = _repeated(obj, self._flat_schema.names)
            if repeated:
                # the fast reader refuses such a line too: which value is meant is not knowable
                rejects.append(Reject(line, raw, repeated, f"{repeated}: given more than once in one object"))
                continue
            if meta.get("record-type") == "control":
                control += 1
                continue
            self._note_extra(obj, envelope)
            values = []
            name = "timestamp"
            try:
                stamp = meta.get("timestamp")
                stamp = None if stamp in (None, "") else iso_timestamp(stamp)
                name = "sequence"
                seq = next((v for v in (meta.get(f) for f in SEQUENCE_FIELDS) if v is not None), None)
                seq = None if seq is None else to_int64(seq)
                for col, convert in self._converters:
                    name = col.name
                    values.append(convert(row.get(col.name)))
            except (ValueRejected, ValueError, TypeError) as exc:
                rejects.append(Reject(line, raw, name, f"{name}: {exc}"))
                continue
            op = meta.get("operation")
            ops.append("load" if op is None else str(op).lower())
            stamps.append(stamp)
            seqs.append(seq)
            for (col, _), value in zip(self._converters, values):
                columns[col.name].append(value)
            lines.append(line)
        n = len(lines)
        typed = [build_bronze_array(c, columns[c.name]) for c in self.contract.columns]
        return ParsedBatch(
            chunk,
            pa.Table.from_arrays(typed, schema=contract_columns_schema(self.contract)),
            pa.array(lines, pa.int64()),
            ops=pa.array(ops, pa.string()),
            change_ts=pa.array(stamps, TIMESTAMP_US_UTC),
            change_seq=pa.array(seqs, pa.int64()),
            rejects=rejects,
            control_records=control,
            fast=False,
        )
