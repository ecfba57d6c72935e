"""The silver worker end to end on the local lake: SQLite ledger, SqlCatalog, file warehouse."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.exceptions import CommitFailedException

from datamaster_assets.contracts import get_contract
from datamaster_assets.lake.catalog import build_catalog, load_or_create_table, read_table
from datamaster_assets.lake.factory import Lake, open_lake
from datamaster_assets.lake.ledger import Registration, Status
from datamaster_assets.settings import Settings
from datamaster_assets.workers.silver import apply_pending_silver, commit_merge, silver_schema
from tests.benchmarks.silver_data import bronze_table
from tests.unit.iceberg_files_on_disk import data_files_on_disk, data_files_referenced

BREWERY = get_contract("brewery")


@pytest.fixture
def lake(dm_home: Path) -> Lake:
    return open_lake(Settings.from_env())


def land_bronze(lake: Lake, name: str, table: pa.Table, table_name: str = "brewery") -> str:
    """Write a bronze Parquet file and register its silver ledger item, as the bronze worker does."""
    key = f"bronze/{table_name}/year=2026/month=01/day=01/{name}.parquet"
    path = lake.store.local_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    info = lake.store.head(key)
    lake.ledger.register(Registration("silver", table_name, key, info.etag, "parquet", info.size))
    return key


def brewery_state(lake: Lake) -> dict[int, tuple]:
    table = read_table(lake, "silver", "brewery")
    return {r["brewery_id"]: (r["brewery_name"], r["deleted_at"] is not None) for r in table.to_pylist()}


def items_by_key(lake: Lake) -> dict[str, object]:
    return {i.object_key: i for i in lake.ledger.items(layer="silver")}


def test_apply_merges_files_commits_once_and_completes_items(lake: Lake):
    assert read_table(lake, "silver", "brewery") is None
    k1 = land_bronze(lake, "f1", bronze_table("brewery", [
        {"op": "load", "t": 1, "brewery_id": 1, "brewery_name": "One"},
        {"op": "load", "t": 1, "brewery_id": 2, "brewery_name": "Two"},
    ], source_key="raw/brewery/20260101T000000Z-load.csv.gz"))
    k2 = land_bronze(lake, "f2", bronze_table("brewery", [
        {"op": "update", "t": 2, "brewery_id": 1, "brewery_name": "One v2"},
        {"op": "delete", "t": 3, "brewery_id": 2},
        {"op": "insert", "t": 4, "brewery_id": 3, "brewery_name": "Three"},
    ], source_key="raw/brewery/20260102T000000Z-cdc.json.gz"))

    result = apply_pending_silver(lake, "brewery", owner="test")

    assert brewery_state(lake) == {1: ("One v2", False), 2: ("Two", True), 3: ("Three", False)}
    assert (result.files_applied, result.files_failed, result.committed) == (2, 0, True)
    assert result.live_rows == 2 and result.total_rows == 3
    iceberg = lake.catalog.load_table("silver.brewery")
    assert len(iceberg.history()) == 1  # one transaction for both files (a first write: an append)
    assert result.snapshot_id == iceberg.current_snapshot().snapshot_id
    assert iceberg.schema().identifier_field_names() == {"brewery_id"}
    assert iceberg.spec().is_unpartitioned()

    items = items_by_key(lake)
    assert items[k1].status is Status.SUCCESS and items[k2].status is Status.SUCCESS
    assert items[k1].record_count == 2 and items[k2].record_count == 3
    assert items[k1].output_key == "silver.brewery"
    assert items[k1].stats["inserted"] == 0 and items[k1].stats["superseded"] == 2  # both overtaken by f2
    assert {k: items[k2].stats[k] for k in ("inserted", "deleted", "superseded")} == \
        {"inserted": 2, "deleted": 1, "superseded": 0}  # 1 and 3 end inserted, 2 ends deleted
    assert items[k2].stats["snapshot_id"] == result.snapshot_id

    md = result.metadata
    assert md["dagster/row_count"] == 2 and md["files_applied"] == 2 and md["snapshot_id"] == str(result.snapshot_id)
    assert md["inserted"] == 2 and md["deleted"] == 1 and md["superseded"] == 2
    assert "| inserted | 2 |" in md["preview"] and "One v2" in md["preview"]
    assert all(isinstance(v, (int, float, str, bool)) for v in md.values())

    idle = apply_pending_silver(lake, "brewery", owner="test")  # nothing pending: describes the table
    assert (idle.files_applied, idle.committed, idle.live_rows, idle.total_rows) == (0, False, 2, 3)
    assert idle.snapshot_id == result.snapshot_id and idle.metadata["dagster/row_count"] == 2


def test_second_run_overwrites_in_one_snapshot_and_a_duplicated_file_changes_nothing(lake: Lake):
    changes = bronze_table("brewery", [{"op": "insert", "t": 1, "brewery_id": i, "brewery_name": f"b{i}"}
                                       for i in range(1, 4)])
    land_bronze(lake, "first", changes)
    apply_pending_silver(lake, "brewery", owner="test")
    land_bronze(lake, "update", bronze_table("brewery", [{"op": "update", "t": 2, "brewery_id": 2, "brewery_name": "x"}]))
    second = apply_pending_silver(lake, "brewery", owner="test")
    assert second.counts["updated"] == 1 and second.committed
    table = lake.catalog.load_table("silver.brewery")
    snapshots = len(table.snapshots())

    dup = land_bronze(lake, "copy-of-first", changes)  # the same content under another key
    again = apply_pending_silver(lake, "brewery", owner="test")
    assert again.files_applied == 1 and not again.committed and again.counts["stale_ignored"] == 3
    assert len(lake.catalog.load_table("silver.brewery").snapshots()) == snapshots
    assert again.snapshot_id == second.snapshot_id
    assert brewery_state(lake) == {1: ("b1", False), 2: ("x", False), 3: ("b3", False)}
    assert items_by_key(lake)[dup].stats["stale_ignored"] == 3


def test_source_keys_are_read_as_dictionaries_and_stored_as_plain_strings(lake: Lake, caplog):
    land_bronze(lake, "first", bronze_table("brewery", [
        {"op": "insert", "t": 1, "brewery_id": i, "brewery_name": f"b{i}"} for i in (1, 2)], source_key="raw/a.json.gz"))
    apply_pending_silver(lake, "brewery", owner="test")
    with caplog.at_level("WARNING"):
        outcome, stored = commit_merge(lake.catalog, "silver.brewery", BREWERY, bronze_table("brewery", [
            {"op": "update", "t": 2, "brewery_id": 2, "brewery_name": "y"}], source_key="raw/b.json.gz"))
    assert outcome.committed and stored["_source_key"].type == pa.dictionary(pa.int32(), pa.string())
    assert "dictionary" not in caplog.text  # pyiceberg's notice for every file read so is not passed on
    # Readers that know nothing of the merge see the Iceberg type, plain strings, in the data file too.
    (task,) = lake.catalog.load_table("silver.brewery").scan().plan_files()
    assert pq.read_table(task.file.file_path.removeprefix("file://")).schema.field("_source_key").type == pa.string()
    stored_keys = read_table(lake, "silver", "brewery").select(["brewery_id", "_source_key"]).to_pylist()
    assert stored_keys == [{"brewery_id": 1, "_source_key": "raw/a.json.gz"}, {"brewery_id": 2, "_source_key": "raw/b.json.gz"}]


def test_preview_shows_rows_this_merge_wrote(lake: Lake):
    land_bronze(lake, "load", bronze_table("brewery", [
        {"op": "load", "t": 1, "brewery_id": i, "brewery_name": f"b{i}"} for i in range(1, 21)]))
    apply_pending_silver(lake, "brewery", owner="test")
    land_bronze(lake, "update", bronze_table("brewery", [{"op": "update", "t": 2, "brewery_id": 3, "brewery_name": "three"}]))
    preview = apply_pending_silver(lake, "brewery", owner="test").metadata["preview"]
    assert "| updated | 1 |" in preview
    rows = [line for line in preview.splitlines() if line.startswith("| ") and "brewery_name" not in line
            and "outcome" not in line and "---" not in line and "updated" not in line]
    assert len(rows) == 1 and "| 3 | three |" in rows[0]  # the stored table ends with key 20; that row was not written


def test_unreadable_file_fails_alone_and_names_the_file(lake: Lake):
    good = land_bronze(lake, "good", bronze_table("brewery", [{"op": "insert", "t": 1, "brewery_id": 1,
                                                               "brewery_name": "ok"}]))
    corrupt = "bronze/brewery/year=2026/month=01/day=01/corrupt.parquet"
    lake.store.put_bytes(corrupt, b"not parquet at all")
    lake.ledger.register(Registration("silver", "brewery", corrupt, "c0ffee", "parquet", 18))
    invalid = land_bronze(lake, "invalid", bronze_table("brewery", [
        {"op": "insert", "t": 1, "brewery_id": None, "brewery_name": "no key", "line": 12}]))
    mistyped = bronze_table("brewery", [{"op": "insert", "t": 1, "brewery_id": 2, "brewery_name": "int _op"}])
    mistyped = land_bronze(lake, "mistyped", mistyped.set_column(
        mistyped.schema.get_field_index("_op"), "_op", pa.array([1], pa.int64())))

    result = apply_pending_silver(lake, "brewery", owner="test")

    assert result.files_applied == 1 and result.files_failed == 3
    assert brewery_state(lake) == {1: ("ok", False)}
    items = items_by_key(lake)
    assert items[good].status is Status.SUCCESS
    assert items[corrupt].status is Status.QUARANTINED and corrupt in items[corrupt].error_message
    assert items[invalid].status is Status.QUARANTINED
    assert items[invalid].error_message == (
        f"bronze file {invalid}: 1 row(s) with null brewery_id (first at _source_line 12)")
    assert any(corrupt in f for f in result.failures)
    assert items[mistyped].status is Status.QUARANTINED
    assert items[mistyped].error_message.startswith(f"bronze file {mistyped}: columns do not match the brewery contract")


def test_missing_object_is_a_retryable_error(lake: Lake):
    key = "bronze/brewery/year=2026/month=01/day=01/vanished.parquet"
    lake.ledger.register(Registration("silver", "brewery", key, "abc", "parquet", 10))
    result = apply_pending_silver(lake, "brewery", owner="test")
    item = items_by_key(lake)[key]
    assert result.files_failed == 1 and item.status is Status.ERROR and key in item.error_message


class CrashAfterCommit:
    """A ledger whose process 'dies' when it tries to record success (after the Iceberg commit)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def complete(self, *args, **kwargs):
        raise KeyboardInterrupt("simulated crash between the Iceberg commit and the ledger update")


def test_crash_between_commit_and_ledger_update_is_harmless(lake: Lake):
    k1 = land_bronze(lake, "a", bronze_table("brewery", [
        {"op": "insert", "t": 1, "brewery_id": 1, "brewery_name": "A"},
        {"op": "insert", "t": 1, "brewery_id": 2, "brewery_name": "B"},
        {"op": "delete", "t": 2, "brewery_id": 2},
    ]))
    crashing = Lake(settings=lake.settings, raw=lake.raw, store=lake.store, ledger=CrashAfterCommit(lake.ledger))
    with pytest.raises(KeyboardInterrupt):
        apply_pending_silver(crashing, "brewery", owner="worker-1")

    committed = lake.catalog.load_table("silver.brewery")
    snapshot_id = committed.current_snapshot().snapshot_id
    before = read_table(lake, "silver", "brewery").sort_by("brewery_id")
    assert items_by_key(lake)[k1].status is Status.RUNNING  # the ledger never heard of the commit

    # Within the lease nobody can take it; after expiry another worker re-applies it.
    assert apply_pending_silver(lake, "brewery", owner="worker-2").files_applied == 0
    later = datetime.now(timezone.utc) + timedelta(seconds=lake.settings.lease_seconds + 1)
    result = apply_pending_silver(lake, "brewery", owner="worker-2", now=later)

    assert result.files_applied == 1 and not result.committed
    assert result.counts["stale_ignored"] == 3
    assert lake.catalog.load_table("silver.brewery").current_snapshot().snapshot_id == snapshot_id
    assert read_table(lake, "silver", "brewery").sort_by("brewery_id").equals(before)
    item = items_by_key(lake)[k1]
    assert item.status is Status.SUCCESS and item.attempt_count == 2 and item.lease_owner == "worker-2"


class RacingCatalog:
    """Lets a concurrent writer commit right after our worker loaded the table (first load only)."""

    def __init__(self, inner, race):
        self._inner, self._race, self.loads = inner, race, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def load_table(self, identifier):
        table = self._inner.load_table(identifier)
        self.loads += 1
        if self.loads == 1:
            self._race()
        return table


def test_commit_conflict_is_retried_with_a_fresh_merge(lake: Lake):
    catalog = lake.catalog
    commit_merge(catalog, "silver.brewery", BREWERY, bronze_table("brewery", [
        {"op": "insert", "t": 1, "brewery_id": 1, "brewery_name": "A"}]))
    other_writer = build_catalog(lake.settings)
    concurrent = bronze_table("brewery", [{"op": "insert", "t": 5, "brewery_id": 2, "brewery_name": "theirs"}])
    ours = bronze_table("brewery", [{"op": "update", "t": 6, "brewery_id": 1, "brewery_name": "ours"}])

    racing = RacingCatalog(catalog, lambda: commit_merge(other_writer, "silver.brewery", BREWERY, concurrent))
    outcome, stored = commit_merge(racing, "silver.brewery", BREWERY, ours)

    assert outcome.attempts == 2 and outcome.committed
    final = read_table(lake, "silver", "brewery")
    assert {r["brewery_id"]: r["brewery_name"] for r in final.to_pylist()} == {1: "ours", 2: "theirs"}
    assert stored.num_rows == 2
    # Commits: our first append, their overwrite, our retried overwrite (an overwrite is one
    # transaction holding two snapshots: delete + append).
    table = lake.catalog.load_table("silver.brewery")
    # Earlier metadata files: the create, our append, their overwrite; ours is the current one.
    assert len(table.metadata.metadata_log) == 3
    assert len(table.history()) == 5
    # Our first attempt wrote its files before its commit lost: they were deleted, not orphaned.
    on_disk = data_files_on_disk(lake, "silver.brewery")
    assert len(on_disk) == 3  # our first write, theirs, our retry
    assert on_disk == data_files_referenced(lake, "silver.brewery")


def test_first_writes_racing_on_an_empty_table_do_not_both_land(lake: Lake):
    # pyiceberg 0.12 retries a conflicting commit itself: an append alone would be retried on top
    # of the other writer's first write, storing both merges (every key twice).
    load_or_create_table(lake.catalog, "silver.brewery", silver_schema(BREWERY), BREWERY.primary_key)
    other_writer = build_catalog(lake.settings)
    concurrent = bronze_table("brewery", [{"op": "insert", "t": 5, "brewery_id": 2, "brewery_name": "theirs"}])
    ours = bronze_table("brewery", [{"op": "insert", "t": 6, "brewery_id": 1, "brewery_name": "ours"}])

    racing = RacingCatalog(lake.catalog, lambda: commit_merge(other_writer, "silver.brewery", BREWERY, concurrent))
    outcome, stored = commit_merge(racing, "silver.brewery", BREWERY, ours)

    assert outcome.attempts == 2 and outcome.committed
    final = read_table(lake, "silver", "brewery")
    assert sorted((r["brewery_id"], r["brewery_name"]) for r in final.to_pylist()) == [(1, "ours"), (2, "theirs")]
    assert stored.num_rows == 2


def test_commit_conflicts_give_up_after_the_bounded_attempts(lake: Lake):
    catalog = lake.catalog
    commit_merge(catalog, "silver.brewery", BREWERY, bronze_table("brewery", [
        {"op": "insert", "t": 1, "brewery_id": 1, "brewery_name": "A"}]))
    other_writer = build_catalog(lake.settings)
    counter = iter(range(10, 100))

    def race():
        t = next(counter)
        commit_merge(other_writer, "silver.brewery", BREWERY, bronze_table("brewery", [
            {"op": "update", "t": t, "brewery_id": 1, "brewery_name": f"theirs {t}"}]))

    class AlwaysRacing(RacingCatalog):
        def load_table(self, identifier):
            table = self._inner.load_table(identifier)
            self._race()
            return table

    with pytest.raises(CommitFailedException):
        commit_merge(AlwaysRacing(catalog, race), "silver.brewery", BREWERY, bronze_table("brewery", [
            {"op": "insert", "t": 200, "brewery_id": 9, "brewery_name": "never"}]), attempts=3)
    assert 9 not in {r["brewery_id"] for r in read_table(lake, "silver", "brewery").to_pylist()}


def test_max_files_limits_the_batch(lake: Lake):
    for i in range(3):
        land_bronze(lake, f"f{i}", bronze_table("brewery", [
            {"op": "insert", "t": i, "brewery_id": i + 1, "brewery_name": str(i)}]))
    first = apply_pending_silver(lake, "brewery", owner="test", max_files=2)
    assert first.files_applied == 2 and first.live_rows == 2
    rest = apply_pending_silver(lake, "brewery", owner="test")
    assert rest.files_applied == 1 and rest.live_rows == 3


def test_failed_commit_releases_the_files_for_a_retry(lake: Lake):
    key = land_bronze(lake, "a", bronze_table("brewery", [{"op": "insert", "t": 1, "brewery_id": 1,
                                                           "brewery_name": "A"}]))

    real = lake.catalog

    class BrokenCatalog:  # up for the schema check before the claims, down for the merge after them
        loads = 0

        def __getattr__(self, name):
            return getattr(real, name)

        def load_table(self, identifier):
            BrokenCatalog.loads += 1
            if BrokenCatalog.loads > 1:
                raise CommitFailedException("catalog unavailable")
            return real.load_table(identifier)

    lake.__dict__["catalog"] = BrokenCatalog()  # Lake.catalog is a cached property
    with pytest.raises(CommitFailedException):
        apply_pending_silver(lake, "brewery", owner="test")
    item = items_by_key(lake)[key]
    assert item.status is Status.ERROR
    assert item.error_message == f"merging bronze file {key} into silver.brewery failed: catalog unavailable"

    del lake.__dict__["catalog"]
    assert apply_pending_silver(lake, "brewery", owner="test").files_applied == 1
    assert brewery_state(lake) == {1: ("A", False)}


def test_a_big_rewrite_is_split_into_key_ordered_files_and_replaces_them_all(lake: Lake, monkeypatch):
    from datamaster_assets.lake import iceberg_files

    monkeypatch.setattr(iceberg_files, "ROWS_PER_FILE_MIN", 10)
    monkeypatch.setattr(iceberg_files.os, "cpu_count", lambda: 2)
    land_bronze(lake, "load", bronze_table("brewery", [{"op": "insert", "t": 1, "brewery_id": i, "brewery_name": f"b{i}"}
                                                       for i in range(40, 0, -1)]))
    apply_pending_silver(lake, "brewery", owner="test")
    land_bronze(lake, "changes", bronze_table("brewery", [{"op": "update", "t": 2, "brewery_id": 7, "brewery_name": "x"},
                                                          {"op": "insert", "t": 2, "brewery_id": 41, "brewery_name": "y"}]))
    result = apply_pending_silver(lake, "brewery", owner="test")
    assert result.counts["updated"] == 1 and result.counts["inserted"] == 1
    files = lake.catalog.load_table("silver.brewery").inspect.files().to_pylist()
    assert len(files) == 2 and sum(f["record_count"] for f in files) == 41  # the first load's files are gone
    ranges = sorted((f["readable_metrics"]["brewery_id"]["lower_bound"], f["readable_metrics"]["brewery_id"]["upper_bound"])
                    for f in files)
    assert ranges == [(1, 20), (21, 41)]  # stored sorted by key: each file holds one key range
    state = brewery_state(lake)
    assert len(state) == 41 and state[7] == ("x", False) and state[41] == ("y", False)


def test_uncommitted_files_that_will_not_delete_are_reported(lake: Lake, caplog):
    from types import SimpleNamespace

    from datamaster_assets.lake.iceberg_files import delete_uncommitted

    class StubbornIO:
        def __init__(self):
            self.deleted = []

        def delete(self, path):
            if path == "s3://bucket/b.parquet":
                raise PermissionError("access denied")
            if path == "s3://bucket/gone.parquet":
                raise FileNotFoundError(path)
            self.deleted.append(path)

    io = StubbornIO()
    files = [SimpleNamespace(file_path=f"s3://bucket/{n}.parquet") for n in ("a", "b", "gone", "c")]
    assert delete_uncommitted(io, files) == ["s3://bucket/b.parquet"]
    assert io.deleted == ["s3://bucket/a.parquet", "s3://bucket/c.parquet"]
    assert "could not delete uncommitted data file s3://bucket/b.parquet: access denied" in caplog.text
