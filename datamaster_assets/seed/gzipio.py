"""Deterministic, fast gzip output: ISA-L deflate, no file name and a zero mtime in the header,
so the same rows always give byte-identical files whatever the file is called."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from isal import igzip

# ISA-L levels 1-3 differ by <1 % on this data; 2 is the library default.
GZIP_LEVEL = 2


@contextmanager
def gzip_writer(path: Path) -> Iterator[BinaryIO]:
    with open(path, "wb") as raw, igzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as gz:
        yield gz  # type: ignore[misc]
