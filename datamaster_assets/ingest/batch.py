"""What a reader hands to the converter for one chunk of the raw file."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from datamaster_assets.ingest.stream import Chunk


@dataclass(frozen=True)
class Reject:
    line: int  # physical 1-based line number in the raw file
    raw: bytes  # the line as it was (without its terminator)
    field: str | None  # the field at fault, None for line-level problems (not JSON, bad UTF-8)
    reason: str


@dataclass
class ParsedBatch:
    """Candidate rows of one chunk, typed to the contract, plus what was dropped on the way.

    ``columns`` holds every contract column in bronze types and contract order (columns absent
    from the source are all null). ``ops``/``change_ts``/``change_seq`` are None when the source
    does not carry them (batch CSV): every row is then a 'load' at the batch time, ordered by line.
    """

    chunk: Chunk
    columns: pa.Table
    lines: pa.Array  # int64 physical line number per row
    ops: pa.Array | None = None
    change_ts: pa.Array | None = None
    change_seq: pa.Array | None = None
    rejects: list[Reject] = field(default_factory=list)
    control_records: int = 0
    fast: bool = True  # False when the row-precise slow path produced it
    _line_cache: list[bytes] | None = None

    def raw_line(self, line: int) -> bytes:
        if self._line_cache is None:
            self._line_cache = self.chunk.lines()
        return self._line_cache[line - self.chunk.first_line]
