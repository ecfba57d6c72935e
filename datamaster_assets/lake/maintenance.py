"""Iceberg table maintenance: expire old snapshots and delete the files only they referenced.

Every silver merge rewrites its table (copy-on-write) and every gold refresh replaces months, so
each commit leaves the previous files behind for time travel. Without expiry a daily merge of
silver.review keeps one more full copy of the table every day, for ever.

``expire_table`` follows Iceberg's own expiry (``ExpireSnapshots`` in the Java library):

1. choose the snapshots to expire (``snapshots_to_expire``, a pure function of the metadata):
   older than the policy's age, not among the last ``retain_last`` snapshots of the current
   history, not the head of a branch or tag, not one the caller must keep;
2. commit their removal from the table metadata (pyiceberg's ``expire_snapshots``);
3. delete the files that the expired snapshots reached and the table's remaining snapshots do not:
   manifest lists, manifests, data and delete files. Which files remain reachable is read from
   the metadata *after* the commit, so a writer that committed meanwhile keeps its files.

A failed commit deletes nothing. A file that cannot be deleted is reported and left; a file
already gone (an earlier run interrupted after its commit) is not an error. Readers still
scanning an expired snapshot could lose files under them: that is what the age limit is for.

``remove_orphan_files`` (Spark's ``remove_orphan_files`` procedure) deletes what expiry never
sees: files under the table's location that no metadata refers to, left by a writer that died
between writing and committing. It lists the location first and reads the metadata after, so a
file committed meanwhile counts as referenced; a file written but not committed yet is protected
by the age limit (``RetentionPolicy.orphan_min_age``, 3 days like Spark's default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Iterable

from pyarrow.fs import FileSelector, FileType
from pyiceberg.table.refs import SnapshotRefType


@dataclass(frozen=True)
class RetentionPolicy:
    max_age: timedelta = timedelta(days=7)  # snapshots younger than this are kept
    retain_last: int = 5  # the newest snapshots of the current history kept whatever their age
    orphan_min_age: timedelta = timedelta(days=3)  # unreferenced files younger than this may be a write in progress

    def __post_init__(self) -> None:
        if self.retain_last < 1:
            raise ValueError("retain_last must be at least 1: the current snapshot is always kept")
        if self.max_age < timedelta(0):
            raise ValueError("max_age must not be negative")
        if self.orphan_min_age < timedelta(hours=1):
            raise ValueError("orphan_min_age must be at least an hour: a younger file may belong to a running write")


@dataclass
class DeletedFiles:
    """What a maintenance step deleted from one table (would delete, when ``dry_run``)."""

    table: str
    files_deleted: int = 0
    bytes_deleted: int = 0
    delete_failures: list[str] = field(default_factory=list)  # "path: reason"
    dry_run: bool = False

    def delete(self, delete_file: Callable[[str], None], files: Iterable[tuple[str, int]]) -> None:
        """Delete (path, size) files with ``delete_file`` and count them; nothing in a dry run. A
        file already gone is skipped (an earlier run may have been interrupted after deleting it);
        any other failure is recorded and the file left."""
        for path, size in files:
            if not self.dry_run:
                try:
                    delete_file(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    self.delete_failures.append(f"{path}: {exc}")
                    continue
            self.files_deleted += 1
            self.bytes_deleted += size


@dataclass
class ExpiryResult(DeletedFiles):
    snapshots_before: int = 0
    expired: list[int] = field(default_factory=list)

    @property
    def metadata(self) -> dict[str, object]:
        return {
            "snapshots_before": self.snapshots_before,
            "snapshots_expired": len(self.expired),
            "files_deleted": self.files_deleted,
            "bytes_deleted": self.bytes_deleted,
            "delete_failures": len(self.delete_failures),
            "dry_run": self.dry_run,
        }


def _protected_ids(metadata) -> set[int]:
    return {
        ref.snapshot_id
        for ref in metadata.refs.values()
        if ref.snapshot_ref_type in (SnapshotRefType.BRANCH, SnapshotRefType.TAG)
    }


def current_history(metadata) -> list[int]:
    """The current snapshot and its ancestors, newest first."""
    out: list[int] = []
    snapshot = metadata.current_snapshot()
    while snapshot is not None:
        out.append(snapshot.snapshot_id)
        parent = snapshot.parent_snapshot_id
        snapshot = metadata.snapshot_by_id(parent) if parent is not None else None
    return out


def snapshots_to_expire(metadata, now: datetime, policy: RetentionPolicy, keep: Iterable[int] = ()) -> list[int]:
    """Ids of the snapshots the policy expires, oldest first."""
    cutoff_ms = int((now - policy.max_age).timestamp() * 1000)
    kept = set(current_history(metadata)[: policy.retain_last]) | _protected_ids(metadata) | set(keep)
    old = [s for s in metadata.snapshots if s.timestamp_ms < cutoff_ms and s.snapshot_id not in kept]
    return [s.snapshot_id for s in sorted(old, key=lambda s: (s.timestamp_ms, s.snapshot_id))]


@dataclass
class _Reachable:
    """Files reachable from a set of snapshots, with their sizes where the metadata records them."""

    sizes: dict[str, int] = field(default_factory=dict)

    def add(self, path: str, size: int | None) -> None:
        self.sizes.setdefault(path, size or 0)


def _reachable(io, metadata, snapshot_ids: Iterable[int], manifest_cache: dict) -> _Reachable:
    out = _Reachable()
    for snapshot_id in snapshot_ids:
        snapshot = metadata.snapshot_by_id(snapshot_id)
        if snapshot is None:
            continue
        out.add(snapshot.manifest_list, None)
        for manifest in snapshot.manifests(io):
            out.add(manifest.manifest_path, manifest.manifest_length)
            entries = manifest_cache.get(manifest.manifest_path)
            if entries is None:
                # Live entries only: a file a snapshot records as deleted is not needed by it.
                entries = [(e.data_file.file_path, e.data_file.file_size_in_bytes)
                           for e in manifest.fetch_manifest_entry(io, discard_deleted=True)]
                manifest_cache[manifest.manifest_path] = entries
            for path, size in entries:
                out.add(path, size)
    return out


def expire_table(table, *, now: datetime, policy: RetentionPolicy, keep: Iterable[int] = (),
                 dry_run: bool = False, manifest_cache: dict | None = None) -> ExpiryResult:
    """Expire ``table``'s snapshots as ``policy`` says (never those in ``keep``) and delete the files
    only they reached. ``dry_run``: report what would be expired and deleted, change nothing.
    Raises CommitFailedException when the metadata commit fails; nothing is deleted then.
    ``manifest_cache``: manifest entries already read (manifests never change), shared with
    ``remove_orphan_files`` on the same table so each manifest is read once."""
    metadata = table.metadata
    result = ExpiryResult(".".join(table.name()), snapshots_before=len(metadata.snapshots), dry_run=dry_run)
    expired = snapshots_to_expire(metadata, now, policy, keep)
    if not expired:
        return result
    cache = {} if manifest_cache is None else manifest_cache
    before = _reachable(table.io, metadata, [s.snapshot_id for s in metadata.snapshots], cache)
    if dry_run:
        remaining = [s.snapshot_id for s in metadata.snapshots if s.snapshot_id not in expired]
        after = _reachable(table.io, metadata, remaining, cache)
        result.expired = expired
    else:
        table.maintenance.expire_snapshots().by_ids(expired).commit()
        table.refresh()  # whatever another writer committed meanwhile stays reachable below
        still_present = {s.snapshot_id for s in table.metadata.snapshots}
        result.expired = [s for s in expired if s not in still_present]
        after = _reachable(table.io, table.metadata, still_present, cache)
    result.delete(table.io.delete, [(p, before.sizes[p]) for p in sorted(set(before.sizes) - set(after.sizes))])
    return result


# ---- orphan files ------------------------------------------------------------------------------


@dataclass
class OrphanResult(DeletedFiles):
    too_recent: int = 0  # unreferenced, but younger than the age limit: left alone

    @property
    def metadata(self) -> dict[str, object]:
        return {
            "orphan_files_deleted": self.files_deleted,
            "orphan_bytes_deleted": self.bytes_deleted,
            "orphan_files_too_recent": self.too_recent,
            "orphan_delete_failures": len(self.delete_failures),
        }


def referenced_files(table, manifest_cache: dict | None = None) -> set[str]:
    """Every file the table's metadata refers to: the current and logged metadata files, and for
    every snapshot its manifest list, manifests, data and delete files, plus statistics files."""
    metadata = table.metadata
    snapshot_ids = [s.snapshot_id for s in metadata.snapshots]
    files = set(_reachable(table.io, metadata, snapshot_ids, {} if manifest_cache is None else manifest_cache).sizes)
    files.add(table.metadata_location)
    files.update(entry.metadata_file for entry in metadata.metadata_log)
    files.update(f.statistics_path for f in metadata.statistics)
    files.update(f.statistics_path for f in metadata.partition_statistics)
    return files


def find_orphans(listed: Iterable[tuple[str, datetime, int]], referenced: set[str], root: str,
                 older_than: datetime) -> tuple[list[tuple[str, int]], int]:
    """(path, size) of the listed files under ``root`` that ``referenced`` lacks and that were last
    modified before ``older_than``, and how many unreferenced files are younger. Paths are
    compared without their scheme. Only paths below ``root/`` count: a table whose name extends
    this one's (``review`` and ``review_flat``) is never touched."""
    prefix = root.rstrip("/") + "/"
    orphans, recent = [], 0
    for path, modified, size in listed:
        if not path.startswith(prefix) or path in referenced:
            continue
        if modified >= older_than:
            recent += 1
        else:
            orphans.append((path, size))
    return sorted(orphans), recent


def remove_orphan_files(table, *, now: datetime, policy: RetentionPolicy, dry_run: bool = False,
                        manifest_cache: dict | None = None) -> OrphanResult:
    """Delete the files under ``table``'s location that no metadata refers to and that are older
    than ``policy.orphan_min_age``. ``dry_run``: only count them. Needs pyiceberg's pyarrow FileIO
    (what the lake uses locally and on S3) to list the location."""
    io = table.io
    result = OrphanResult(".".join(table.name()), dry_run=dry_run)
    scheme, netloc, root = io.parse_location(table.location(), io.properties)
    fs = io.fs_by_scheme(scheme, netloc)
    listed = [(info.path, info.mtime, info.size or 0)
              for info in fs.get_file_info(FileSelector(root, recursive=True, allow_not_found=True))
              if info.type == FileType.File]
    table.refresh()  # after listing: whatever was committed meanwhile is referenced
    referenced = {io.parse_location(path, io.properties)[2] for path in referenced_files(table, manifest_cache)}
    orphans, result.too_recent = find_orphans(listed, referenced, root, now - policy.orphan_min_age)
    result.delete(fs.delete_file, orphans)
    return result
