from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from datamaster_assets.lake.batching import plan_batches
from datamaster_assets.lake.landing import (
    LandingCursor,
    compute_target_for,
    file_format_of,
    land_file,
    raw_key_for,
    register_new_objects,
    table_of,
)
from datamaster_assets.lake.ledger import LedgerItem, Status
from datamaster_assets.lake.objectstore import LocalObjectStore
from datamaster_assets.lake.sqlite_ledger import SqliteLedger
from datamaster_assets.settings import Settings

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def _item(cid: str, table: str, size: int, minute: int, attempts: int = 0) -> LedgerItem:
    return LedgerItem(
        control_id=cid, layer="bronze", table_name=table, object_key=f"raw/{table}/{cid}.csv.gz",
        checksum=cid, file_format="csv", file_size=size, status=Status.PENDING, attempt_count=attempts,
        compute_target="inprocess", created_at=T0 + timedelta(minutes=minute),
    )


def test_keys_formats_and_tables():
    assert file_format_of("raw/review/a.csv.gz") == "csv"
    assert file_format_of("raw/beer/a.jsonl.gz") == "json"
    assert file_format_of("raw/beer/a.parquet") == "unknown"
    assert table_of("raw/beer/x/y.json.gz") == "beer"
    with pytest.raises(ValueError, match="raw/<table>/<name>"):
        table_of("bronze/beer/x.parquet")
    key = raw_key_for("review", "my reviews.csv.gz", datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc))
    assert key == "raw/review/20260102T030405000006Z-my_reviews.csv.gz"


def test_routing_by_estimated_records():
    aws = Settings(env="aws", lambda_max_records=100_000)
    assert compute_target_for(aws, 100_000) == "lambda"
    assert compute_target_for(aws, 100_001) == "ecs"
    assert compute_target_for(Settings(env="local"), 10**9) == "inprocess"


def test_batches_are_bounded_per_table_and_keys_change_with_attempts():
    items = [_item(f"r{i}", "review", 100, i) for i in range(5)] + [_item("b0", "beer", 10, 0)]
    batches = plan_batches(items, max_files=2, max_bytes=10_000)
    assert [(b.table_name, b.control_ids) for b in batches] == [
        ("beer", ["b0"]), ("review", ["r0", "r1"]), ("review", ["r2", "r3"]), ("review", ["r4"]),
    ]
    by_bytes = plan_batches(items[:5], max_files=50, max_bytes=250)
    assert [len(b.items) for b in by_bytes] == [2, 2, 1]
    again = plan_batches(list(reversed(items)), max_files=2, max_bytes=10_000)
    assert [b.run_key for b in again] == [b.run_key for b in batches]
    retried = plan_batches([_item("b0", "beer", 10, 0, attempts=1)], max_files=2, max_bytes=10_000)
    assert retried[0].run_key != batches[0].run_key

    # registered by one listing (same created_at): landing order (the key), not control-id order
    landed = [replace(_item(cid, "review", 100, 0), object_key=f"raw/review/20261101T00000{n}Z-x.csv.gz")
              for n, cid in enumerate(["z9", "a1", "m5"])]
    assert plan_batches(landed, max_files=1, max_bytes=10_000)[0].control_ids == ["z9"]
    assert [b.control_ids for b in plan_batches(landed, max_files=3, max_bytes=10_000)] == [["z9", "a1", "m5"]]


def _land(store, tmp_path: Path, table: str, name: str, when: datetime, body: bytes = b"x") -> str:
    src = tmp_path / name
    src.write_bytes(body + name.encode())
    return land_file(store, table, src, when).key


def test_landing_registers_each_object_once_and_the_cursor_only_moves_forward(tmp_path):
    settings = Settings(home=tmp_path / "home", landing_reconcile_every=0, landing_page_size=2)
    store = LocalObjectStore(settings.objects_dir)
    ledger = SqliteLedger(settings.ledger_path)
    for i in range(3):
        _land(store, tmp_path, "review", f"r{i}.csv.gz", T0 + timedelta(seconds=i))
    _land(store, tmp_path, "beer", "b0.json.gz", T0)

    first = register_new_objects(settings, store, ledger, LandingCursor())
    assert sorted(i.object_key.split("-", 1)[1] for i in first.registered) == ["b0.json.gz", "r0.csv.gz", "r1.csv.gz"]
    second = register_new_objects(settings, store, ledger, first.cursor)
    assert [i.object_key.split("-", 1)[1] for i in second.registered] == ["r2.csv.gz"]
    third = register_new_objects(settings, store, ledger, second.cursor)
    assert third.registered == [] and third.already_known == 0  # nothing re-listed
    assert sum(ledger.counts().values()) == 4


def test_periodic_reconcile_catches_keys_that_sort_before_the_cursor(tmp_path):
    settings = Settings(home=tmp_path / "home", landing_reconcile_every=3)
    store = LocalObjectStore(settings.objects_dir)
    ledger = SqliteLedger(settings.ledger_path)
    _land(store, tmp_path, "review", "late.csv.gz", T0 + timedelta(hours=1))
    cursor = register_new_objects(settings, store, ledger, LandingCursor()).cursor  # tick 0: reconcile
    early = _land(store, tmp_path, "review", "early.csv.gz", T0)  # sorts before the cursor
    cursor = register_new_objects(settings, store, ledger, cursor).cursor
    cursor = register_new_objects(settings, store, ledger, cursor).cursor
    assert early not in {i.object_key for i in ledger.items()}  # cursor listings do not see it
    result = register_new_objects(settings, store, ledger, cursor)  # tick 3: reconcile
    assert result.reconciled and [i.object_key for i in result.registered] == [early]


def test_a_listing_hashes_only_files_changed_since_they_were_registered(tmp_path, monkeypatch):
    # the local store lists no checksum; a full listing (every `datamaster run`, every reconcile)
    # used to hash every raw file in the lake again
    import os

    settings = Settings(home=tmp_path / "home", landing_reconcile_every=1)
    store = LocalObjectStore(settings.objects_dir)
    ledger = SqliteLedger(settings.ledger_path)
    keys = [_land(store, tmp_path, "review", f"r{i}.csv.gz", T0 + timedelta(seconds=i)) for i in range(3)]
    assert len(register_new_objects(settings, store, ledger, LandingCursor()).registered) == 3
    an_hour_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).timestamp()
    for key in keys:
        os.utime(store.local_path(key), (an_hour_ago, an_hour_ago))  # landed well before registered
    hashed: list[str] = []
    sha256 = store.sha256
    monkeypatch.setattr(store, "sha256", lambda key: hashed.append(key) or sha256(key))

    again = register_new_objects(settings, store, ledger, LandingCursor())
    assert again.reconciled and again.registered == [] and again.already_known == 3 and hashed == []

    path = store.local_path(keys[1])
    path.write_bytes(path.read_bytes()[::-1])  # replaced in place: same size, new content, new mtime
    changed = register_new_objects(settings, store, ledger, LandingCursor())
    assert hashed == [keys[1]]
    assert [(i.object_key, i.checksum) for i in changed.registered] == [(keys[1], sha256(keys[1]))]


def test_land_rejects_unknown_tables_and_formats(tmp_path):
    store = LocalObjectStore(tmp_path / "objects")
    src = tmp_path / "a.csv.gz"
    src.write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown table 'wine'"):
        land_file(store, "wine", src)
    bad = tmp_path / "a.txt"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"expected a \.csv\.gz"):
        land_file(store, "review", bad)


def test_landing_time_is_read_back_from_the_key():
    from datamaster_assets.lake.landing import landed_at_of

    when = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    assert landed_at_of(raw_key_for("review", "a.csv.gz", when), T0) == when
    assert landed_at_of("raw/review/2026/01/02/firehose-1.json.gz", T0) == T0  # not ours: fallback


def test_files_of_a_bronze_run_in_flight_are_held_while_it_looks_alive():
    from datamaster_assets.defs.bronze import held_by_live_runs

    now = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    lease = 900
    queued = (now - timedelta(seconds=60), {"a", "b"})  # began less than a lease ago
    working = (now - timedelta(hours=2), {"c", "d"})  # long batch, one file leased right now
    dead = (now - timedelta(hours=2), {"e", "f"})  # its worker died: in flight for Dagster for good
    assert held_by_live_runs([queued, working, dead], {"c"}, now, lease) == {"a", "b", "c", "d"}
    assert held_by_live_runs([], {"c"}, now, lease) == set()


def test_a_batch_whose_runs_keep_ending_unclaimed_is_requested_again_less_and_less_often():
    from datamaster_assets.defs.bronze import request_again_delay

    assert [request_again_delay(g) for g in (1, 2, 3, 4)] == [timedelta(0), timedelta(minutes=1),
                                                             timedelta(minutes=2), timedelta(minutes=4)]
    assert request_again_delay(8) == request_again_delay(40) == timedelta(hours=1)


def test_a_sub_folder_key_does_not_hide_later_stamped_files(dm_home, tmp_path, monkeypatch):
    from datamaster_assets.lake.factory import open_lake
    from datamaster_assets.settings import Settings

    monkeypatch.setenv("DATAMASTER_LANDING_RECONCILE_EVERY", "1000")
    settings = Settings.from_env()
    lake = open_lake(settings)
    path = tmp_path / "r.csv.gz"
    path.write_bytes(b"\x1f\x8b not read here")
    land_file(lake.raw, "review", path, datetime(2026, 11, 1, tzinfo=timezone.utc))
    lake.raw.put_file("raw/review/manual/x.csv.gz", path)  # sorts after every stamped key
    cursor = register_new_objects(settings, lake.raw, lake.ledger, LandingCursor(ticks=1)).cursor
    later = land_file(lake.raw, "review", path, datetime(2026, 11, 2, tzinfo=timezone.utc))

    result = register_new_objects(settings, lake.raw, lake.ledger, cursor)
    assert not result.reconciled
    assert [i.object_key for i in result.registered] == [later.key]
