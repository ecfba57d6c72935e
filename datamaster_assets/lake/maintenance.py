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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable

from pyiceberg.table.refs import SnapshotRefType


@dataclass(frozen=True)
class RetentionPolicy:
    max_age: timedelta = timedelta(days=7)  # snapshots younger than this are kept
    retain_last: int = 5  # the newest snapshots of the current history kept whatever their age

    def __post_init__(self) -> None:
        if self.retain_last < 1:
            raise ValueError("retain_last must be at least 1: the current snapshot is always kept")
        if self.max_age < timedelta(0):
            raise ValueError("max_age must not be negative")


@dataclass
class ExpiryResult:
    table: str
    snapshots_before: int
    expired: list[int] = field(default_factory=list)
    files_deleted: int = 0
    bytes_deleted: int = 0
    delete_failures: list[str] = field(default_factory=list)  # "path: reason"
    dry_run: bool = False

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
                 dry_run: bool = False) -> ExpiryResult:
    """Expire ``table``'s snapshots as ``policy`` says (never those in ``keep``) and delete the files
    only they reached. ``dry_run``: report what would be expired and deleted, change nothing.
    Raises CommitFailedException when the metadata commit fails; nothing is deleted then."""
    metadata = table.metadata
    result = ExpiryResult(".".join(table.name()), snapshots_before=len(metadata.snapshots), dry_run=dry_run)
    expired = snapshots_to_expire(metadata, now, policy, keep)
    if not expired:
        return result
    cache: dict = {}
    before = _reachable(table.io, metadata, [s.snapshot_id for s in metadata.snapshots], cache)
    if dry_run:
        remaining = [s.snapshot_id for s in metadata.snapshots if s.snapshot_id not in expired]
        orphaned = set(before.sizes) - set(_reachable(table.io, metadata, remaining, cache).sizes)
        result.expired = expired
        result.files_deleted = len(orphaned)
        result.bytes_deleted = sum(before.sizes[p] for p in orphaned)
        return result

    table.maintenance.expire_snapshots().by_ids(expired).commit()
    table.refresh()  # whatever another writer committed meanwhile stays reachable below
    still_present = {s.snapshot_id for s in table.metadata.snapshots}
    result.expired = [s for s in expired if s not in still_present]
    after = _reachable(table.io, table.metadata, still_present, cache)
    for path in sorted(set(before.sizes) - set(after.sizes)):
        try:
            table.io.delete(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            result.delete_failures.append(f"{path}: {exc}")
            continue
        result.files_deleted += 1
        result.bytes_deleted += before.sizes[path]
    return result
