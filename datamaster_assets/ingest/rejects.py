"""The rejects file: gzip JSON lines, one rejected raw line each, written only if there is one."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import IO

from datamaster_assets.ingest.batch import Reject


class RejectsWriter:
    def __init__(self, path: Path, source_key: str, control_id: str):
        self.path = Path(path)
        self.source_key = source_key
        self.control_id = control_id
        self.count = 0
        self._out: IO[str] | None = None

    def write(self, rejects: list[Reject]) -> None:
        if not rejects:
            return
        if self._out is None:
            self._out = gzip.open(self.path, "wt", encoding="utf-8", compresslevel=6)
        for r in sorted(rejects, key=lambda r: r.line):
            record = {
                "source_key": self.source_key,
                "control_id": self.control_id,
                "line": r.line,
                "field": r.field,
                "reason": r.reason,
                # bytes that are not UTF-8 stay visible as \xNN escapes
                "raw": r.raw.decode("utf-8", errors="backslashreplace"),
            }
            self._out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += len(rejects)

    def close(self) -> int:
        """Close the file; its size in bytes (0 when nothing was rejected and no file exists)."""
        if self._out is None:
            return 0
        self._out.close()
        self._out = None
        return self.path.stat().st_size
