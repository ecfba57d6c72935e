"""Object storage behind one interface: a directory locally, an S3 bucket on AWS.

Keys are '/'-separated strings such as ``raw/review/20261122T040501Z-reviews.csv.gz``. Listing is
lexicographic by key, like S3's ``list_objects_v2``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # local: sha256 of the content; S3: the ETag without quotes
    last_modified: datetime


@runtime_checkable
class ObjectStore(Protocol):
    def put_bytes(self, key: str, data: bytes) -> ObjectInfo: ...

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Upload a local file atomically: readers see the whole object or nothing."""
        ...

    def open_read(self, key: str) -> BinaryIO:
        """A streaming binary reader. Raises FileNotFoundError for a missing key."""
        ...

    def read_bytes(self, key: str) -> bytes: ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def list_after(self, prefix: str, start_after: str | None = None, limit: int = 1000) -> list[ObjectInfo]:
        """Up to ``limit`` objects under ``prefix`` whose key sorts after ``start_after``, in key order."""
        ...

    def iter_all(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def local_path(self, key: str) -> Path | None:
        """A path readable by local engines without a copy (local store), else None."""
        ...

    def uri(self, key: str) -> str:
        """Address for engines that read by URI (file:///... locally, s3://bucket/key on AWS)."""
        ...

    def sha256(self, key: str) -> str:
        """Hex sha256 of the object's content, read in a streaming pass."""
        ...


def sha256_stream(stream: BinaryIO, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: stream.read(chunk), b""):
        h.update(block)
    return h.hexdigest()


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


class LocalObjectStore:
    """Objects as files below ``root``. Writes go to a temp file in the same directory, then rename."""

    def __init__(self, root: Path | str):
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def _info(self, key: str, path: Path) -> ObjectInfo:
        st = path.stat()
        with path.open("rb") as fh:
            etag = sha256_stream(fh)
        return ObjectInfo(key, st.st_size, etag, datetime.fromtimestamp(st.st_mtime, tz=timezone.utc))

    def _atomic_target(self, key: str) -> tuple[Path, Path]:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        os.close(fd)
        return dest, Path(tmp)

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        dest, tmp = self._atomic_target(key)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return self._info(key, dest)

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        dest, tmp = self._atomic_target(key)
        try:
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return self._info(key, dest)

    def open_read(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        return self._info(key, path) if path.is_file() else None

    def _keys_under(self, prefix: str) -> Iterator[str]:
        # Walk only the directories that can hold keys with this prefix, in sorted order.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base_dir if base_dir else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    yield key

    def list_after(self, prefix: str, start_after: str | None = None, limit: int = 1000) -> list[ObjectInfo]:
        keys = sorted(k for k in self._keys_under(prefix) if start_after is None or k > start_after)
        out = []
        for key in keys[:limit]:
            path = self._path(key)
            st = path.stat()
            out.append(ObjectInfo(key, st.st_size, "", datetime.fromtimestamp(st.st_mtime, tz=timezone.utc)))
        return out

    def iter_all(self, prefix: str) -> Iterator[ObjectInfo]:
        start_after = None
        while True:
            page = self.list_after(prefix, start_after, limit=1000)
            if not page:
                return
            yield from page
            start_after = page[-1].key

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def sha256(self, key: str) -> str:
        with self.open_read(key) as fh:
            return sha256_stream(fh)
