"""Snapshot expiry: which snapshots go (pure), which files are deleted, what must survive."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.table.refs import SnapshotRefType

from datamaster_assets.lake.catalog import load_or_create_table, table_identifier
from datamaster_assets.lake.factory import open_lake
from datamaster_assets.lake.iceberg_files import commit_replacement, write_data_files
from datamaster_assets.lake.maintenance import (
    RetentionPolicy,
    current_history,
    expire_table,
    find_orphans,
    remove_orphan_files,
    snapshots_to_expire,
)
from datamaster_assets.settings import Settings
from datamaster_assets.workers.gold import build_review_flat_table, refresh_gold, review_flat_history_in_use
from datamaster_assets.workers.maintenance import maintain_lake
from tests.unit.gold_data import review_rows, silver_set, write_silver

DAY_MS = 86_400_000
NOW = datetime(2024, 6, 30, tzinfo=timezone.utc)
LATER = datetime.now(timezone.utc) + timedelta(days=30)  # every snapshot written by a test is old then


# ---- choosing snapshots (pure) ------------------------------------------------------------------


def fake_metadata(days_old: list[int], refs: dict[int, SnapshotRefType] | None = None):
    """Snapshots 1..n, each the parent of the next, snapshot i taken days_old[i-1] days before NOW;
    the last one is current (the head of main)."""
    now_ms = int(NOW.timestamp() * 1000)
    snapshots = [SimpleNamespace(snapshot_id=i, parent_snapshot_id=i - 1 if i > 1 else None,
                                 timestamp_ms=now_ms - age * DAY_MS) for i, age in enumerate(days_old, start=1)]
    by_id = {s.snapshot_id: s for s in snapshots}
    heads = {"main": SimpleNamespace(snapshot_id=len(snapshots), snapshot_ref_type=SnapshotRefType.BRANCH)}
    for sid, kind in (refs or {}).items():
        heads[f"ref-{sid}"] = SimpleNamespace(snapshot_id=sid, snapshot_ref_type=kind)
    return SimpleNamespace(snapshots=snapshots, refs=heads, current_snapshot=lambda: snapshots[-1],
                           snapshot_by_id=by_id.get)


def test_old_snapshots_beyond_the_newest_ones_expire():
    metadata = fake_metadata([30, 20, 10, 8, 6, 1])
    assert current_history(metadata) == [6, 5, 4, 3, 2, 1]
    policy = RetentionPolicy(max_age=timedelta(days=7), retain_last=2)
    assert snapshots_to_expire(metadata, NOW, policy) == [1, 2, 3, 4]
    # The newest snapshots are kept whatever their age.
    assert snapshots_to_expire(metadata, NOW, RetentionPolicy(timedelta(days=7), retain_last=5)) == [1]
    # Younger than the age limit: kept.
    assert snapshots_to_expire(metadata, NOW, RetentionPolicy(timedelta(days=15), retain_last=1)) == [1, 2]


def test_tags_branches_and_snapshots_in_use_are_kept():
    metadata = fake_metadata([30, 20, 10, 8], refs={1: SnapshotRefType.TAG, 2: SnapshotRefType.BRANCH})
    policy = RetentionPolicy(max_age=timedelta(days=1), retain_last=1)
    assert snapshots_to_expire(metadata, NOW, policy) == [3]
    assert snapshots_to_expire(metadata, NOW, policy, keep={3}) == []


def test_the_policy_always_keeps_the_current_snapshot():
    with pytest.raises(ValueError, match="retain_last"):
        RetentionPolicy(retain_last=0)
    with pytest.raises(ValueError, match="max_age"):
        RetentionPolicy(max_age=timedelta(days=-1))


# ---- expiring a real table ----------------------------------------------------------------------


@pytest.fixture
def lake(tmp_path: Path):
    return open_lake(Settings(home=tmp_path / "home"))


def rewrite(table, rows: pa.Table) -> None:
    """A copy-on-write rewrite of the whole table, as a silver merge commits it."""
    commit_replacement(table, write_data_files(table.metadata, table.io, rows), AlwaysTrue(), {})
    table.refresh()


def versions(n: int) -> list[pa.Table]:
    return [pa.table({"k": pa.array([1, 2, 3], pa.int64()), "v": pa.array([f"v{i}"] * 3)}) for i in range(n)]


def live_files(table) -> set[str]:
    return {f["file_path"].removeprefix("file://") for f in table.inspect.files().to_pylist()}


def all_data_files(table) -> set[str]:
    root = Path(table.location().removeprefix("file://")) / "data"
    return {str(p) for p in root.rglob("*.parquet")}


def test_expiry_deletes_only_what_expired_snapshots_reached(lake):
    table = load_or_create_table(lake.catalog, "silver.t", versions(1)[0].schema)
    for rows in versions(4):
        rewrite(table, rows)
    snapshots = len(table.metadata.snapshots)  # a rewrite commits a delete and an append snapshot
    assert snapshots >= 7
    current = live_files(table)
    assert len(all_data_files(table)) == 4
    manifest_lists = {s.manifest_list.removeprefix("file://") for s in table.metadata.snapshots}

    policy = RetentionPolicy(max_age=timedelta(0), retain_last=2)
    planned = expire_table(table, now=LATER, policy=policy, dry_run=True)
    assert len(planned.expired) == snapshots - 2 and planned.files_deleted > 3
    assert len(table.metadata.snapshots) == snapshots and len(all_data_files(table)) == 4  # dry run: no change

    done = expire_table(table, now=LATER, policy=policy)
    assert sorted(done.expired) == sorted(planned.expired)
    assert done.files_deleted == planned.files_deleted and done.bytes_deleted == planned.bytes_deleted > 0
    assert not done.delete_failures
    table = lake.catalog.load_table("silver.t")
    assert len(table.metadata.snapshots) == 2
    assert all_data_files(table) == current  # the three older versions' data files are gone
    kept_lists = {s.manifest_list.removeprefix("file://") for s in table.metadata.snapshots}
    assert all(Path(p).exists() == (p in kept_lists) for p in manifest_lists)
    assert table.scan().to_arrow().column("v").to_pylist() == ["v3"] * 3

    again = expire_table(table, now=LATER, policy=policy)
    assert again.expired == [] and again.files_deleted == 0


def test_a_failed_commit_deletes_nothing(lake, monkeypatch):
    from pyiceberg.table.update.snapshot import ExpireSnapshots

    table = load_or_create_table(lake.catalog, "silver.t", versions(1)[0].schema)
    for rows in versions(3):
        rewrite(table, rows)
    files = all_data_files(table)

    def lose_race(self):
        raise CommitFailedException("another writer committed first")

    monkeypatch.setattr(ExpireSnapshots, "commit", lose_race)
    with pytest.raises(CommitFailedException):
        expire_table(table, now=LATER, policy=RetentionPolicy(timedelta(0), retain_last=1))
    assert all_data_files(table) == files
    assert len(lake.catalog.load_table("silver.t").metadata.snapshots) == len(table.metadata.snapshots) > 1


def test_a_file_that_cannot_be_deleted_is_reported_and_the_rest_go(lake, monkeypatch):
    table = load_or_create_table(lake.catalog, "silver.t", versions(1)[0].schema)
    for rows in versions(3):
        rewrite(table, rows)
    old_data = sorted(all_data_files(table) - live_files(table))
    stuck = old_data[0]
    io_class = type(table.io)
    real_delete = io_class.delete

    def delete(self, path):
        if str(path).removeprefix("file://") == stuck:
            raise PermissionError("read-only")
        real_delete(self, path)

    monkeypatch.setattr(io_class, "delete", delete)
    result = expire_table(table, now=LATER, policy=RetentionPolicy(timedelta(0), retain_last=1))
    assert len(result.delete_failures) == 1 and "read-only" in result.delete_failures[0]
    assert all_data_files(table) == live_files(table) | {stuck}


# ---- the whole lake: gold's history is kept ----------------------------------------------------


def test_maintain_lake_keeps_the_review_flat_history_gold_still_needs(lake):
    write_silver(lake, silver_set())
    build_review_flat_table(lake)
    refresh_gold(lake)
    # Two more review_flat builds that gold has not caught up with yet.
    for score in (1.0, 2.0):
        rows = [dict(r, review_overall=score) if r["review_id"] == 1 else r for r in review_rows()]
        write_silver(lake, silver_set(rows))
        build_review_flat_table(lake)
    flat = lake.catalog.load_table(table_identifier(lake.settings, "silver", "review_flat"))
    in_use = review_flat_history_in_use(lake)
    assert in_use == set(current_history(flat.metadata)[:3])  # current, previous, the one gold was built from

    report = maintain_lake(lake, now=LATER, policy=RetentionPolicy(timedelta(0), retain_last=1))
    assert report.ok, report.failures
    flat = lake.catalog.load_table(table_identifier(lake.settings, "silver", "review_flat"))
    assert {s.snapshot_id for s in flat.metadata.snapshots} >= in_use
    review = lake.catalog.load_table(table_identifier(lake.settings, "silver", "review"))
    assert len(review.metadata.snapshots) == 1  # silver tables keep only the newest
    assert report.metadata["snapshots_expired"] > 0 and report.metadata["files_deleted"] > 0

    result = refresh_gold(lake)
    assert {m.status for m in result.marts.values()} <= {"refreshed", "up-to-date"}  # incremental, no rebuild
    assert result.marts["top_beers_by_rating"].affected_months  # the changed review's month was recomputed


def test_lake_tables_prune_their_old_metadata_files(lake):
    table = load_or_create_table(lake.catalog, "silver.t", versions(1)[0].schema)
    for rows in versions(25):
        rewrite(table, rows)
    metadata_dir = Path(table.location().removeprefix("file://")) / "metadata"
    kept = list(metadata_dir.glob("*.metadata.json"))
    assert len(kept) == 21  # the current one and the 20 before it (LAKE_TABLE_PROPERTIES)
    assert lake.catalog.load_table("silver.t").scan().to_arrow().column("v").to_pylist() == ["v24"] * 3


def test_maintain_lake_reports_a_table_it_could_not_maintain_and_goes_on(lake, monkeypatch):
    from pyiceberg.table.update.snapshot import ExpireSnapshots

    for _ in range(2):
        write_silver(lake, silver_set())
    real_commit = ExpireSnapshots.commit
    calls = []

    def commit(self):  # the first table's expiry loses a race; the others go through
        calls.append(1)
        if len(calls) == 1:
            raise CommitFailedException("another writer committed first")
        return real_commit(self)

    monkeypatch.setattr(ExpireSnapshots, "commit", commit)
    report = maintain_lake(lake, now=LATER, policy=RetentionPolicy(timedelta(0), retain_last=1))
    assert not report.ok and report.metadata["failures"] == 1
    ((failed, reason),) = report.failures.items()
    assert failed not in report.tables and "another writer committed first, nothing deleted" in reason
    assert report.problems == [reason] and reason.startswith(f"silver.{failed[1]}: ")
    assert len(calls) == 4 and all(r.expired for r in report.tables.values())  # the other three silver tables


def test_maintain_lake_goes_on_when_another_maintenance_run_expired_a_table_first(lake, monkeypatch):
    for _ in range(2):
        write_silver(lake, silver_set())
    policy = RetentionPolicy(timedelta(0), retain_last=1)
    stale = lake.catalog.load_table("silver.beer")  # this run loaded it; another run then expires it
    expire_table(lake.catalog.load_table("silver.beer"), now=LATER, policy=policy)
    real_load = lake.catalog.load_table
    monkeypatch.setattr(lake.catalog, "load_table", lambda ident: stale if ident == "silver.beer" else real_load(ident))
    report = maintain_lake(lake, now=LATER, policy=policy)
    assert list(report.failures) == [("silver", "beer")] and "nothing deleted" in report.failures[("silver", "beer")]
    assert report.tables[("silver", "review")].expired  # the tables after it are still maintained
    assert real_load("silver.beer").scan().to_arrow().num_rows > 0


# ---- orphan files -------------------------------------------------------------------------------


def test_find_orphans_keeps_referenced_young_and_foreign_files():
    old, young = NOW - timedelta(days=10), NOW - timedelta(hours=2)
    listed = [("/w/t/data/a.parquet", old, 10), ("/w/t/data/b.parquet", old, 20), ("/w/t/metadata/m.avro", old, 5),
              ("/w/t/data/new.parquet", young, 30), ("/w/t_flat/data/x.parquet", old, 40)]
    orphans, recent = find_orphans(listed, {"/w/t/data/a.parquet"}, "/w/t", NOW - timedelta(days=3))
    assert orphans == [("/w/t/data/b.parquet", 20), ("/w/t/metadata/m.avro", 5)]
    assert recent == 1  # new.parquet may belong to a write in progress; t_flat is another table


def test_orphan_files_go_referenced_files_and_recent_writes_stay(lake):
    table = load_or_create_table(lake.catalog, "silver.t", versions(1)[0].schema)
    for rows in versions(2):
        rewrite(table, rows)
    # review_flat-like neighbour whose name extends this table's: must never be touched.
    neighbour = load_or_create_table(lake.catalog, "silver.t_flat", versions(1)[0].schema)
    rewrite(neighbour, versions(1)[0])
    root = Path(table.location().removeprefix("file://"))
    crashed = root / "data" / "00000-0-crashed-writer.parquet"  # written, never committed
    crashed.write_bytes(b"x" * 123)
    stale_manifest = root / "metadata" / "lost-attempt-m0.avro"
    stale_manifest.write_bytes(b"y" * 7)
    in_progress = root / "data" / "00000-0-writing-now.parquet"
    in_progress.write_bytes(b"z" * 50)
    ancient = (datetime.now(timezone.utc) - timedelta(days=10)).timestamp()
    for path in (crashed, stale_manifest):
        os.utime(path, (ancient, ancient))
    before = {str(p) for p in root.rglob("*") if p.is_file()}
    neighbour_files = {str(p) for p in Path(neighbour.location().removeprefix("file://")).rglob("*") if p.is_file()}
    policy = RetentionPolicy(orphan_min_age=timedelta(days=3))
    now = datetime.now(timezone.utc)

    planned = remove_orphan_files(table, now=now, policy=policy, dry_run=True)
    assert (planned.files_deleted, planned.bytes_deleted, planned.too_recent) == (2, 130, 1)
    assert {str(p) for p in root.rglob("*") if p.is_file()} == before

    done = remove_orphan_files(table, now=now, policy=policy)
    assert (done.files_deleted, done.bytes_deleted, done.too_recent) == (2, 130, 1)
    assert {str(p) for p in root.rglob("*") if p.is_file()} == before - {str(crashed), str(stale_manifest)}
    assert {str(p) for p in Path(neighbour.location().removeprefix("file://")).rglob("*") if p.is_file()} == neighbour_files
    # Every file the table refers to is still there: time travel to the first version still reads.
    table = lake.catalog.load_table("silver.t")
    oldest_data = next(s for s in table.metadata.snapshots if int(s.summary["total-records"]) > 0)
    assert table.scan(snapshot_id=oldest_data.snapshot_id).to_arrow().column("v").to_pylist() == ["v0"] * 3
    assert table.scan().to_arrow().column("v").to_pylist() == ["v1"] * 3
    assert remove_orphan_files(table, now=now, policy=policy).files_deleted == 0


def test_maintain_lake_reports_orphans_per_table(lake):
    table = load_or_create_table(lake.catalog, table_identifier(lake.settings, "silver", "brewery"),
                                 versions(1)[0].schema)
    rewrite(table, versions(1)[0])
    stray = Path(table.location().removeprefix("file://")) / "data" / "stray.parquet"
    stray.write_bytes(b"s" * 11)
    ancient = (datetime.now(timezone.utc) - timedelta(days=30)).timestamp()
    os.utime(stray, (ancient, ancient))
    report = maintain_lake(lake)
    orphans = report.orphans[("silver", "brewery")]
    assert orphans.files_deleted == 1 and not stray.exists()
    assert report.metadata["orphan_files_deleted"] == 1 and report.ok


def test_maintain_lake_reads_each_manifest_once_for_expiry_and_orphans(lake, monkeypatch):
    from collections import Counter

    from pyiceberg.manifest import ManifestFile

    table = load_or_create_table(lake.catalog, table_identifier(lake.settings, "silver", "brewery"),
                                 versions(1)[0].schema)
    for rows in versions(3):
        rewrite(table, rows)
    reads: Counter = Counter()
    fetch = ManifestFile.fetch_manifest_entry

    def counting(self, io, discard_deleted=True):
        reads[self.manifest_path] += 1
        return fetch(self, io, discard_deleted=discard_deleted)

    monkeypatch.setattr(ManifestFile, "fetch_manifest_entry", counting)
    report = maintain_lake(lake, policy=RetentionPolicy(max_age=timedelta(0), retain_last=1), now=LATER)
    assert report.ok and report.tables[("silver", "brewery")].expired
    assert reads and set(reads.values()) == {1}
