"""The bronze worker end to end on a LocalObjectStore + SqliteLedger in tmp_path."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import datetime, timedelta, timezone

import pyarrow.parquet as pq
import pytest

from datamaster_assets.ingest.masking import hmac_hex
from datamaster_assets.lake.factory import Lake
from datamaster_assets.lake.ledger import Registration, Status
from datamaster_assets.lake.objectstore import LocalObjectStore
from datamaster_assets.lake.sqlite_ledger import SqliteLedger
from datamaster_assets.settings import Settings

NOW = datetime(2026, 11, 22, 4, 5, tzinfo=timezone.utc)
HEADER = "review_id,brewery_id,beer_id,profile_id,review_overall,review_aroma,review_appearance,review_palate,review_taste,review_time"


@pytest.fixture
def lake(tmp_path):
    settings = Settings(home=tmp_path / "home", pii_key="worker-test-key", max_attempts=2)
    store = LocalObjectStore(settings.objects_dir)
    return Lake(settings=settings, raw=store, store=store, ledger=SqliteLedger(settings.ledger_path, max_attempts=2))


def land(lake: Lake, table: str, name: str, payload: bytes, fmt: str) -> str:
    key = f"raw/{table}/{name}"
    info = lake.raw.put_bytes(key, payload)
    item, _ = lake.ledger.register(
        Registration(layer="bronze", table_name=table, object_key=key, checksum=info.etag, file_format=fmt, file_size=info.size),
        now=NOW - timedelta(minutes=5),
    )
    return item.control_id


def csv_payload(rows: int, bad_overall_at: int | None = None) -> bytes:
    lines = [HEADER]
    for i in range(1, rows + 1):
        overall = "9" if i == bad_overall_at else "4.5"
        lines.append(f"{i},{i},{i},{i},{overall},4,4,4,4,1073452775")
    return gzip.compress(("\n".join(lines) + "\n").encode())


def test_same_file_name_in_two_sub_folders_keeps_both_files_rows(lake):
    # e.g. a producer that writes raw/review/<date>/part-0000.csv.gz: one bronze key would have
    # overwritten the other with every count still reconciling
    first = land(lake, "review", "2026-11-21/part-0000.csv.gz", csv_payload(3), "csv")
    second = land(lake, "review", "2026-11-22/part-0000.csv.gz", csv_payload(5), "csv")
    outputs = [process_bronze_item_now(lake, cid).output_key for cid in (first, second)]
    assert outputs[0] != outputs[1]
    assert [pq.read_table(lake.store.local_path(key)).num_rows for key in outputs] == [3, 5]
    sources = {pq.read_table(lake.store.local_path(key)).column("_source_key")[0].as_py() for key in outputs}
    assert sources == {"raw/review/2026-11-21/part-0000.csv.gz", "raw/review/2026-11-22/part-0000.csv.gz"}


def test_success_publishes_bronze_rejects_and_pending_silver_item(lake):
    cid = land(lake, "review", "20261122T040000000000Z-r.csv.gz", csv_payload(10, bad_overall_at=4), "csv")
    result = process_bronze_item_now(lake, cid)
    assert result.status == "success"
    assert (result.records_read, result.accepted, result.rejected) == (10, 9, 1)
    content = hashlib.sha256(lake.ledger.get(cid).checksum.encode()).hexdigest()[:8]
    assert result.output_key == f"bronze/review/year=2026/month=11/day=22/20261122T040000000000Z-r.csv.{content}.parquet"
    assert result.rejects_key == f"rejects/review/year=2026/month=11/day=22/20261122T040000000000Z-r.csv.{content}.jsonl.gz"
    table = pq.read_table(lake.store.local_path(result.output_key))
    assert table.num_rows == 9 and 4 not in table.column("review_id").to_pylist()
    rejected = [json.loads(x) for x in gzip.decompress(lake.store.read_bytes(result.rejects_key)).splitlines()]
    assert [(r["line"], r["field"]) for r in rejected] == [(5, "review_overall")]

    item = lake.ledger.get(cid)
    assert item.status == Status.SUCCESS
    assert (item.record_count, item.rejected_count, item.output_key) == (10, 1, result.output_key)
    assert item.stats["accepted"] == 9 and item.stats["rejects_key"] == result.rejects_key

    silver = lake.ledger.get(result.silver_control_id)
    assert silver.layer == "silver" and silver.status == Status.PENDING
    assert (silver.object_key, silver.checksum, silver.file_format, silver.record_count) == (
        result.output_key, item.checksum, "parquet", 9)
    assert silver.file_size == lake.store.head(result.output_key).size
    assert result.metadata["dagster/row_count"] == 9 and result.metadata["rejected"] == 1


def process_bronze_item_now(lake, cid, owner="w1"):
    from datamaster_assets.workers.bronze import process_bronze_item

    return process_bronze_item(lake, cid, owner=owner, now=NOW)


def test_bad_file_is_quarantined_while_another_succeeds(lake):
    bad = land(lake, "review", "bad.csv.gz", b"this is not gzip", "csv")
    good = land(lake, "profile", "p.json.gz", gzip.compress(json.dumps(
        {"data": {"profile_id": 1, "profile_name": "ann", "email": "ann@example.org"},
         "metadata": {"operation": "insert", "timestamp": "2012-01-01T00:00:00Z", "record-type": "data"}}).encode()), "json")
    results = [process_bronze_item_now(lake, cid) for cid in (bad, good)]
    assert [r.status for r in results] == ["quarantined", "success"]
    assert "raw/review/bad.csv.gz" in results[0].error_message and "not a gzip file" in results[0].error_message
    item = lake.ledger.get(bad)
    assert item.status == Status.QUARANTINED and item.attempt_count == 1
    assert "not a gzip file" in item.error_message
    table = pq.read_table(lake.store.local_path(results[1].output_key))
    assert table.column("email").to_pylist() == [hmac_hex(b"worker-test-key", "ann") + "@example.org"]
    assert results[1].rejects_key is None


def test_missing_raw_object_is_retried_then_quarantined(lake):
    cid = land(lake, "review", "gone.csv.gz", csv_payload(2), "csv")
    lake.raw.delete("raw/review/gone.csv.gz")
    first = process_bronze_item_now(lake, cid)
    assert first.status == "error" and "not found" in first.error_message
    second = process_bronze_item_now(lake, cid)
    assert second.status == "quarantined"  # max_attempts=2


def test_rerun_maps_to_same_outputs_and_claim_lost_is_skipped(lake):
    cid = land(lake, "review", "r.csv.gz", csv_payload(3), "csv")
    first = process_bronze_item_now(lake, cid)
    again = process_bronze_item_now(lake, cid)  # already success: not claimable
    assert again.status == "skipped" and again.table == "review"
    lake.ledger.requeue([cid], statuses=[Status.SUCCESS])
    rerun = process_bronze_item_now(lake, cid)
    assert rerun.status == "success"
    assert (rerun.output_key, rerun.silver_control_id) == (first.output_key, first.silver_control_id)
    assert len([i for i in lake.ledger.items(layer="silver")]) == 1


def test_unknown_format_is_quarantined(lake):
    cid = land(lake, "review", "r.parquet", b"PAR1", "unknown")
    result = process_bronze_item_now(lake, cid)
    assert result.status == "quarantined" and "unknown file format" in result.error_message


class _StreamOnlyStore(LocalObjectStore):
    """A store without local paths, like S3: the worker must stream open_read()."""

    def local_path(self, key):
        return None


def test_worker_streams_when_no_local_path(tmp_path):
    settings = Settings(home=tmp_path / "home", pii_key="k")
    raw = _StreamOnlyStore(settings.objects_dir)
    lake = Lake(settings=settings, raw=raw, store=LocalObjectStore(tmp_path / "lake"), ledger=SqliteLedger(settings.ledger_path))
    cid = land(lake, "review", "s.csv.gz", csv_payload(5), "csv")
    result = process_bronze_item_now(lake, cid)
    assert result.status == "success" and result.accepted == 5
    assert pq.read_table(lake.store.local_path(result.output_key)).num_rows == 5


def test_lease_lost_during_conversion_is_skipped_and_not_completed(lake, monkeypatch):
    from datamaster_assets.lake.ledger import LeaseLost

    cid = land(lake, "review", "long.csv.gz", csv_payload(50), "csv")
    lake.settings = Settings(home=lake.settings.home, pii_key="k", bronze_batch_rows=10)
    import itertools

    from datamaster_assets.workers import bronze

    clock = itertools.count(0, 1000)  # every chunk looks like 1000 s later: renewal is due
    monkeypatch.setattr(bronze, "_clock", lambda: next(clock))

    def lost(*args, **kwargs):
        raise LeaseLost("taken over by w2")

    monkeypatch.setattr(lake.ledger, "renew", lost)
    result = process_bronze_item_now(lake, cid)
    assert result.status == "skipped" and "taken over by w2" in result.error_message
    assert lake.ledger.get(cid).status == Status.RUNNING  # left to the lease holder
    assert lake.ledger.items(layer="silver") == []


def test_a_killed_workers_scratch_dir_is_removed_by_the_next_item(lake, tmp_path, monkeypatch):
    # a worker SIGKILLed mid-conversion (OOM, Lambda timeout) leaves its scratch dir with an owner
    # file nobody holds a lock on; in a warm Lambda those would fill /tmp
    import tempfile

    from datamaster_assets.lake.scratch import OWNER_FILE
    from datamaster_assets.workers.bronze import SCRATCH_PREFIX

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    abandoned = tmp_path / "scratch" / f"{SCRATCH_PREFIX}killed"
    abandoned.mkdir()
    (abandoned / OWNER_FILE).write_text("")
    (abandoned / "out.parquet").write_bytes(b"x" * 4096)

    cid = land(lake, "review", "20261122T040000000000Z-r.csv.gz", csv_payload(3), "csv")
    assert process_bronze_item_now(lake, cid).status == "success"
    assert list((tmp_path / "scratch").iterdir()) == []


def test_a_raw_key_overwritten_before_its_item_ran_is_quarantined_not_converted_as_that_item(lake):
    # the item stands for the content it registered; converting the new content under it would
    # record the old content as done while its rows never reach silver
    cid = land(lake, "review", "20261122T040000000000Z-r.csv.gz", csv_payload(3), "csv")
    key = lake.ledger.get(cid).object_key
    lake.raw.put_bytes(key, csv_payload(5))  # a producer re-sends the file under the same key
    result = process_bronze_item_now(lake, cid)
    assert result.status == "quarantined"
    assert "content changed after it was registered" in result.error_message and key in result.error_message
    assert list(lake.store.iter_all("bronze/")) == []  # nothing published for it


def test_new_content_under_a_key_processed_the_same_day_gets_a_bronze_file_of_its_own(lake):
    first = land(lake, "review", "20261122T040000000000Z-r.csv.gz", csv_payload(3), "csv")
    one = process_bronze_item_now(lake, first)
    key = lake.ledger.get(first).object_key
    info = lake.raw.put_bytes(key, csv_payload(5))
    second, created = lake.ledger.register(
        Registration(layer="bronze", table_name="review", object_key=key, checksum=info.etag, file_format="csv",
                     file_size=info.size), now=NOW - timedelta(minutes=1))
    assert created
    two = process_bronze_item_now(lake, second.control_id)
    assert one.status == two.status == "success" and one.output_key != two.output_key
    assert [pq.read_table(lake.store.local_path(k)).num_rows for k in (one.output_key, two.output_key)] == [3, 5]
