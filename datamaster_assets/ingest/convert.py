"""raw file -> one bronze Parquet file (+ a rejects file): the pure-ish core of the bronze worker.

Input is a path or a binary stream; output goes to the two paths given, nothing else is touched.
Per chunk of lines: parse (fast typed path, row-precise slow path for chunks it refuses), check
the contract rules, mask PII, add lineage, append to the Parquet writer. Memory is bounded by the
chunk size (``batch_rows``, at most PARSE_CHUNK_ROWS lines), not by the file size.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datamaster_assets.contracts import BRONZE_LINEAGE, Contract, get_contract
from datamaster_assets.ingest.batch import ParsedBatch, Reject
from datamaster_assets.ingest.cdc import LINE_FRAME as JSON_LINE_FRAME, CdcReader
from datamaster_assets.ingest.csv_reader import CsvReader, split_header
from datamaster_assets.ingest.errors import BadInputError
from datamaster_assets.ingest.masking import PiiDetector, mask_table
from datamaster_assets.ingest.rejects import RejectsWriter
from datamaster_assets.ingest.stream import Chunk, iter_chunks
from datamaster_assets.ingest.validate import check_rules
from datamaster_assets.ingest.values import TIMESTAMP_US_UTC
from datamaster_assets.lake.parquet_encodings import delta_columns, dictionary_columns

DEFAULT_BATCH_ROWS = 256 * 1024
# Chunks are parsed, checked and masked this many at a time (one per core of the 2-vCPU target),
# while inflate and the Parquet writer run on their own threads; results are written in file order.
PARSE_THREADS = 2
# Upper bound on lines per chunk (and so per Parquet row group), whatever ``batch_rows`` asks for.
# Small chunks keep both parse threads busy to the end of the file and let the allocator reuse
# their buffers instead of faulting in fresh pages for each chunk (measured on the 1.59 M-row CSV:
# the same CPU time as 256 Ki-line chunks and ~60 MB less peak RSS; docs/bronze.md).
PARSE_CHUNK_ROWS = 64 * 1024
PARQUET_COMPRESSION = "zstd"


# Lineage strings written as dictionary arrays: a constant per file (or a handful of operations),
# so the writer needs no hashing. The file is written without the Arrow schema blob, so readers see
# the plain bronze schema (string, timestamp[us, UTC], not-null lineage) straight from Parquet types.
DICTIONARY_LINEAGE = ("_source_key", "_control_id", "_op")
DICT_STRING = pa.dictionary(pa.int32(), pa.string())
# Lineage columns are constants, dictionaries or delta-packed sequences: already a few bytes per
# row group, so zstd only costs a compression context per column chunk. Statistics are skipped
# where nobody prunes on them (the per-row ids); the time columns keep theirs. Together: ~15 % less
# writer CPU on the 1.59 M-row CSV for +0.01 MB of file (docs/bronze.md).
LINEAGE_UNCOMPRESSED = frozenset(BRONZE_LINEAGE.names)
LINEAGE_WITHOUT_STATISTICS = frozenset(("_source_key", "_control_id", "_op", "_change_seq", "_source_line"))


def writer_schema(bronze_schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(DICT_STRING) if f.name in DICTIONARY_LINEAGE else f for f in bronze_schema])


class _ParquetOutput:
    """Writes each chunk's table as a row group on a background thread (encoding and compression
    overlap the parsing of the next chunks). The writer is created on the first table, whose
    cardinalities choose the encodings."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = Path(path)
        self.schema = writer_schema(schema)
        self._writer: pq.ParquetWriter | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet")
        self._pending: Future | None = None

    def _open(self, first: pa.Table | None) -> pq.ParquetWriter:
        dictionary = list(dict.fromkeys([*DICTIONARY_LINEAGE, *(dictionary_columns(first) if first is not None else [])]))
        return pq.ParquetWriter(
            self.path,
            self.schema,
            compression={name: "none" if name in LINEAGE_UNCOMPRESSED else PARQUET_COMPRESSION for name in self.schema.names},
            use_dictionary=dictionary,
            column_encoding=delta_columns(self.schema, dictionary),
            write_statistics=[name for name in self.schema.names if name not in LINEAGE_WITHOUT_STATISTICS],
            store_schema=False,
        )

    def _write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = self._open(table)
        self._writer.write_table(table)

    def write(self, table: pa.Table) -> None:
        if self._pending is not None:
            self._pending.result()  # at most one table in flight: memory stays bounded
        self._pending = self._pool.submit(self._write, table)

    def close(self) -> None:
        try:
            if self._pending is not None:
                self._pending.result()
            if self._writer is None:
                self._writer = self._open(None)
        finally:
            self._pool.shutdown(wait=True)
            if self._writer is not None:
                self._writer.close()


@dataclass
class BronzeOutcome:
    source_key: str
    table: str
    file_format: str
    records_read: int  # data records the parsers produced; control records and blank lines excluded
    accepted: int
    rejected: int
    control_records: int
    notes: list[str] = field(default_factory=list)
    parquet_bytes: int = 0
    rejects_bytes: int = 0  # 0: no rejects file was written
    batches: int = 0
    slow_batches: int = 0  # chunks the fast reader refused and that were re-read line by line
    duration_ms: int = 0

    @property
    def rejects_written(self) -> bool:
        return self.rejects_bytes > 0

    def as_dict(self) -> dict:
        return asdict(self)


def _utc(ts: datetime, name: str) -> datetime:
    if ts.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return ts.astimezone(timezone.utc)


NO_SEQUENCE = pa.scalar(0, pa.int64())  # _change_seq of a row whose source gives no sequence


class _Lineage:
    """Appends the BRONZE_LINEAGE columns to accepted rows."""

    def __init__(self, source_key: str, control_id: str, ingested_at: datetime, batch_change_ts: datetime):
        self.source_key = pa.scalar(source_key, pa.string())
        self.control_id = pa.scalar(control_id, pa.string())
        self.ingested_at = pa.scalar(_utc(ingested_at, "ingested_at"), TIMESTAMP_US_UTC)
        self.batch_change_ts = pa.scalar(_utc(batch_change_ts, "batch_change_ts"), TIMESTAMP_US_UTC)

    @staticmethod
    def _constant(value: pa.Scalar, n: int) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(pa.repeat(pa.scalar(0, pa.int32()), n), pa.array([value.as_py()], pa.string()))

    @staticmethod
    def _sequence(n: int, change_seq: pa.Array | None) -> pa.Array:
        """The source's own sequence where a line has one, else NO_SEQUENCE. Never the line number:
        silver compares sequences across files, where line 6 of an earlier file would beat line 1
        of a later one at the same change time; with NO_SEQUENCE such ties go to (file, line)."""
        if change_seq is None:
            return pa.repeat(NO_SEQUENCE, n)
        return change_seq if not change_seq.null_count else pc.coalesce(change_seq, NO_SEQUENCE)

    def columns(self, n: int, lines: pa.Array, ops, change_ts, change_seq) -> list[pa.Array]:
        """The lineage columns of ``n`` accepted rows; rows without a change time get the batch time."""
        if change_ts is None:
            change_ts = pa.repeat(self.batch_change_ts, n)
        elif change_ts.null_count:
            change_ts = pc.coalesce(change_ts, self.batch_change_ts)
        return [
            self._constant(self.source_key, n),
            self._constant(self.control_id, n),
            pa.repeat(self.ingested_at, n),
            self._constant(pa.scalar("load"), n) if ops is None else pc.dictionary_encode(ops),
            change_ts,
            self._sequence(n, change_seq),
            lines,
        ]


def _take(arr: pa.Array | None, keep: pa.Array) -> pa.Array | None:
    return None if arr is None else pc.filter(arr, keep)


def convert_to_bronze(
    source: Path | BinaryIO,
    *,
    contract: Contract | str,
    file_format: str,
    source_key: str,
    control_id: str,
    ingested_at: datetime,
    batch_change_ts: datetime,
    pii_key: str | bytes,
    parquet_out: Path,
    rejects_out: Path,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    on_batch: Callable[[int], None] | None = None,
) -> BronzeOutcome:
    """Convert one raw file. Raises BadInputError for a file that cannot be processed at all;
    bad rows are written to ``rejects_out`` (only created if there is one) and counted.

    ``batch_change_ts`` is the change time of rows that carry none (batch CSV: the ledger item's
    created_at). ``parquet_out`` always receives a valid file, with zero rows if need be.
    ``on_batch(records_so_far)`` is called after each chunk (the worker renews its lease there;
    an exception it raises aborts the conversion).
    """
    started = time.perf_counter()
    if isinstance(contract, str):
        try:
            contract = get_contract(contract)
        except KeyError as exc:
            raise BadInputError(source_key, f"unknown table {contract!r}") from exc
    if file_format not in ("csv", "json"):
        raise BadInputError(source_key, f"unknown file format {file_format!r}; expected csv or json")
    if file_format not in contract.formats:
        raise BadInputError(
            source_key, f"table {contract.name!r} does not accept {file_format} files (accepts {', '.join(contract.formats)})"
        )
    key = pii_key.encode("utf-8") if isinstance(pii_key, str) else pii_key
    if not key:
        raise ValueError("pii_key must not be empty")
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")

    lineage = _Lineage(source_key, control_id, ingested_at, batch_change_ts)
    detector = PiiDetector(contract)
    rejects = RejectsWriter(rejects_out, source_key, control_id)
    outcome = BronzeOutcome(source_key, contract.name, file_format, 0, 0, 0, 0)
    notes: list[str] = []
    reader: CsvReader | CdcReader | None = CdcReader(contract) if file_format == "json" else None
    saw_line = False
    change_ts_filled = 0
    writer = _ParquetOutput(parquet_out, contract.bronze_schema)
    chunks = iter_chunks(source, source_key, min(batch_rows, PARSE_CHUNK_ROWS),
                         line_frame=JSON_LINE_FRAME if file_format == "json" else None)
    pool = ThreadPoolExecutor(max_workers=PARSE_THREADS, thread_name_prefix="bronze-parse")
    pending: deque[Future[_ChunkResult]] = deque()

    def finish(done: _ChunkResult) -> None:
        """In file order: rejects, PII detection, the Parquet writer, counts, the on_batch hook."""
        nonlocal change_ts_filled
        outcome.batches += 1
        outcome.slow_batches += 0 if done.fast else 1
        outcome.control_records += done.control_records
        outcome.records_read += done.records_parsed
        rejects.write(done.rejects)
        if done.table is not None:
            detector.observe(done.table)
            writer.write(done.table)
            change_ts_filled += done.change_ts_filled
        if on_batch is not None:
            on_batch(outcome.records_read)

    try:
        for chunk in chunks:
            if reader is None:  # CSV: the first line is the header
                layout, chunk = split_header(chunk, contract, source_key)
                reader = CsvReader(contract, layout)
                notes.extend(layout.notes())
                if not chunk.data:
                    continue
            saw_line = True
            pending.append(pool.submit(_process_chunk, reader, chunk, contract, key, lineage, writer.schema))
            if len(pending) >= PARSE_THREADS:  # no chunk waits for a thread: memory stays flat
                finish(pending.popleft().result())
        while pending:
            finish(pending.popleft().result())
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)
        chunks.close()  # stops the inflate thread and closes the source even on error
        writer.close()
        outcome.rejects_bytes = rejects.close()
    if reader is None:
        raise BadInputError(source_key, "no header line: the file decompresses to nothing")
    # Counted where each thing happens, so `accepted + rejected == records_read` is a real check:
    # read = records the parsers produced (rows + parse rejects), accepted = rows in the written
    # file's footer, rejected = lines in the rejects file.
    outcome.accepted = pq.ParquetFile(parquet_out).metadata.num_rows
    outcome.rejected = rejects.count
    if not saw_line:
        notes.append("header only, no data rows" if file_format == "csv" else "no lines in the file")
    if isinstance(reader, CdcReader) and reader.extra_fields:
        notes.append(f"extra fields ignored: {', '.join(sorted(reader.extra_fields))}")
    if change_ts_filled:
        notes.append(f"{change_ts_filled} changes had no metadata timestamp; used the batch time")
    notes.extend(detector.findings())
    outcome.notes = notes
    outcome.parquet_bytes = Path(parquet_out).stat().st_size
    outcome.duration_ms = int((time.perf_counter() - started) * 1000)
    return outcome


@dataclass
class _ChunkResult:
    """One chunk, processed: what to write, in file order, by the converter's main thread."""

    table: pa.Table | None  # accepted rows, masked, with lineage; None if there are none
    rejects: list[Reject]
    control_records: int
    fast: bool
    records_parsed: int  # data records the parser produced: rows plus lines it rejected
    change_ts_filled: int = 0


def _process_chunk(
    reader: CsvReader | CdcReader, chunk: Chunk, contract: Contract, key: bytes, lineage: _Lineage, schema: pa.Schema
) -> _ChunkResult:
    """Parse, check, mask and add lineage to one chunk. Runs on a parse thread: it only reads
    shared state (pyarrow's parsing and compute kernels release the GIL, so chunks overlap)."""
    batch = reader.parse(chunk)
    found, accepted = _apply_rules(contract, batch)
    result = _ChunkResult(None, found, batch.control_records, batch.fast, batch.columns.num_rows + len(batch.rejects))
    if accepted is not None:
        table, lines, ops, change_ts, change_seq = accepted
        table = mask_table(table, contract, key)
        n = table.num_rows
        result.table = pa.Table.from_arrays(table.columns + lineage.columns(n, lines, ops, change_ts, change_seq),
                                            schema=schema)
        result.change_ts_filled = change_ts.null_count if change_ts is not None else 0
    return result


def _apply_rules(contract: Contract, batch: ParsedBatch) -> tuple[list[Reject], tuple | None]:
    """(parse rejects and rule failures of the batch, the accepted rows or None if there are none)."""
    failures = check_rules(contract, batch.columns, batch.ops)
    found = list(batch.rejects)
    if batch.columns.num_rows and failures.reasons:
        lines = batch.lines.to_numpy()
        for idx, (field_name, reason) in failures.reasons.items():
            line = int(lines[idx])
            found.append(Reject(line, batch.raw_line(line), field_name, reason))
    if batch.columns.num_rows == 0 or failures.bad.all():
        return found, None
    if not failures.reasons:
        return found, (batch.columns, batch.lines, batch.ops, batch.change_ts, batch.change_seq)
    keep = pa.array(~failures.bad)
    return found, (
        batch.columns.filter(keep),
        pc.filter(batch.lines, keep),
        _take(batch.ops, keep),
        _take(batch.change_ts, keep),
        _take(batch.change_seq, keep),
    )
