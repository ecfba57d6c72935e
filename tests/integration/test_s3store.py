"""S3ObjectStore against a moto server on 127.0.0.1: round trips, listing past a cursor at scale."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import boto3
import pytest

from datamaster_assets.lake.landing import LandingCursor, register_new_objects
from datamaster_assets.lake.objectstore import ObjectStore
from datamaster_assets.lake.s3store import S3ObjectStore
from datamaster_assets.lake.sqlite_ledger import SqliteLedger
from datamaster_assets.settings import Settings

pytestmark = pytest.mark.aws

BUCKET = "dm-test-raw"


class ListCallCounter:
    """Counts list_objects_v2 requests through botocore's event hooks (what reaches the server)."""

    def __init__(self, client):
        self.calls: list[dict] = []
        client.meta.events.register("before-parameter-build.s3.ListObjectsV2", self._record)

    def _record(self, params, **_):
        self.calls.append(dict(params))


@pytest.fixture
def s3(aws_env):
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def store(s3) -> S3ObjectStore:
    return S3ObjectStore(BUCKET, client=s3)


def _put_many(client, keys: list[str], body: bytes = b"x") -> None:
    """Seed objects straight into moto's S3 backend.

    The moto server runs in this process, so this is the same state its HTTP API serves; 3,000
    HTTP PUTs would take ~15 s on this machine. Everything under test still goes over HTTP.
    """
    from moto.backends import get_backend
    from moto.core import DEFAULT_ACCOUNT_ID

    backend = get_backend("s3")[DEFAULT_ACCOUNT_ID]["global"]
    for key in keys:
        backend.put_object(BUCKET, key, body)


def test_is_an_object_store(store):
    assert isinstance(store, ObjectStore)


def test_put_read_head_delete_round_trip(store):
    data = b"review_id,review_overall\n1,4.5\n"
    info = store.put_bytes("raw/review/a.csv", data)
    assert info.key == "raw/review/a.csv"
    assert info.size == len(data)
    assert info.etag == hashlib.md5(data).hexdigest()  # S3's single-part ETag, quotes stripped
    assert info.last_modified.tzinfo is not None

    assert store.read_bytes("raw/review/a.csv") == data
    with store.open_read("raw/review/a.csv") as body:
        assert body.read(10) == data[:10]
        assert body.read() == data[10:]
    assert store.sha256("raw/review/a.csv") == hashlib.sha256(data).hexdigest()
    assert store.head("raw/review/a.csv") == info
    assert store.uri("raw/review/a.csv") == f"s3://{BUCKET}/raw/review/a.csv"
    assert store.local_path("raw/review/a.csv") is None

    store.delete("raw/review/a.csv")
    assert store.head("raw/review/a.csv") is None
    with pytest.raises(FileNotFoundError, match="raw/review/a.csv"):
        store.open_read("raw/review/a.csv")
    store.delete("raw/review/a.csv")  # deleting a missing key is not an error, as locally


def test_put_file_small_and_multipart(store, tmp_path: Path, monkeypatch):
    import datamaster_assets.lake.s3store as s3store
    from boto3.s3.transfer import TransferConfig

    small = tmp_path / "small.json.gz"
    small.write_bytes(gzip.compress(b'{"a": 1}\n'))
    assert store.put_file("raw/beer/small.json.gz", small).size == small.stat().st_size

    # Force a multipart upload (threshold 5 MiB, S3's minimum part size) on a 12 MiB file.
    monkeypatch.setattr(s3store, "_TRANSFER", TransferConfig(multipart_threshold=5 * 1024 * 1024,
                                                            multipart_chunksize=5 * 1024 * 1024))
    big = tmp_path / "big.bin"
    payload = bytes(range(256)) * (12 * 1024 * 1024 // 256)
    big.write_bytes(payload)
    info = store.put_file("raw/beer/big.bin", big)
    assert info.size == len(payload)
    assert info.etag.endswith("-3")  # three parts: proof it went up as one multipart object
    assert store.sha256("raw/beer/big.bin") == hashlib.sha256(payload).hexdigest()

    with pytest.raises(FileNotFoundError, match="nope"):
        store.put_file("raw/beer/nope", tmp_path / "nope")


def test_streaming_read_feeds_pyarrow_and_pickles(store):
    import pickle

    import pyarrow as pa
    import pyarrow.csv as pacsv

    rows = "".join(f"{i},{i % 5}.5\n" for i in range(20_000))
    store.put_bytes("raw/review/r.csv.gz", gzip.compress(("review_id,review_overall\n" + rows).encode()))
    with store.open_read("raw/review/r.csv.gz") as body:
        reader = pacsv.open_csv(pa.CompressedInputStream(body, "gzip"))
        n = sum(batch.num_rows for batch in reader)
    assert n == 20_000

    copy = pickle.loads(pickle.dumps(store))
    assert copy.bucket == BUCKET and copy.head("raw/review/r.csv.gz") == store.head("raw/review/r.csv.gz")


def test_keys_are_validated(store):
    for bad in ("", "/raw/x", "raw//x", "raw/../x"):
        with pytest.raises(ValueError, match="invalid object key"):
            store.put_bytes(bad, b"x")


def test_keys_producers_write_stay_readable(s3, store):
    # S3 stores these as they are; our own writes refuse them, but a producer's file must still load
    for key in ("raw/brewery//a.json.gz", "raw/brewery/./b.json.gz", "raw/brewery/c\\d.json.gz"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"payload")
        assert store.head(key).size == 7
        assert store.read_bytes(key) == b"payload"
    assert store.head("raw/brewery//missing.json.gz") is None
    with pytest.raises(ValueError, match="empty object key"):
        store.head("")


def test_missing_bucket_is_a_clear_error(aws_env):
    store = S3ObjectStore("dm-no-such-bucket")
    with pytest.raises(Exception, match="NoSuchBucket"):
        store.put_bytes("raw/x/y.csv", b"1")


def test_list_after_pages_through_thousands_of_keys_without_repeats(s3, store):
    keys = [f"raw/review/{i:05d}.csv.gz" for i in range(3000)]
    _put_many(s3, keys)
    _put_many(s3, ["raw/beer/0.csv.gz", "raw/reviewx/0.csv.gz"])  # outside the prefix
    counter = ListCallCounter(s3)

    seen: list[str] = []
    cursor = None
    while True:
        page = store.list_after("raw/review/", cursor, limit=1000)
        if not page:
            break
        assert len(page) <= 1000
        seen.extend(i.key for i in page)
        cursor = page[-1].key
    assert seen == keys  # in order, no repeats, no misses
    assert len(counter.calls) == 4  # three full pages + the empty one
    assert all(c.get("MaxKeys") == 1000 for c in counter.calls)

    # New keys after the cursor: the next call returns exactly those, in one request.
    new = [f"raw/review/{i:05d}.csv.gz" for i in range(3000, 3007)]
    _put_many(s3, new)
    counter.calls.clear()
    assert [i.key for i in store.list_after("raw/review/", cursor, limit=1000)] == new
    assert len(counter.calls) == 1 and counter.calls[0]["StartAfter"] == cursor


def test_list_after_limit_above_a_page_follows_continuation_tokens(s3, store):
    keys = [f"raw/profile/{i:05d}.csv.gz" for i in range(2500)]
    _put_many(s3, keys)
    counter = ListCallCounter(s3)
    got = store.list_after("raw/profile/", "raw/profile/00099.csv.gz", limit=2200)
    assert [i.key for i in got] == keys[100:2300]
    assert len(counter.calls) == 3
    assert "ContinuationToken" in counter.calls[1]
    assert counter.calls[2]["MaxKeys"] == 200  # never asks for more than the limit
    assert [i.key for i in store.iter_all("raw/profile/")] == keys
    assert store.list_after("raw/profile/", None, limit=0) == []


def test_landing_sensor_advances_its_cursor_over_thousands_of_keys(s3, store, tmp_path: Path):
    settings = Settings(env="aws", home=tmp_path, landing_page_size=1000, landing_reconcile_every=0)
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    keys = [f"raw/review/2026112{i // 1000}T{i:06d}-part.csv.gz" for i in range(2500)]
    _put_many(s3, keys, body=b"0" * 150)
    counter = ListCallCounter(s3)

    cursor = LandingCursor()
    registered: list[str] = []
    calls_per_tick = []
    for _ in range(4):
        before = len(counter.calls)
        result = register_new_objects(settings, store, ledger, cursor, tables=["review"])
        calls_per_tick.append(len(counter.calls) - before)
        registered.extend(item.object_key for item in result.registered)
        assert result.already_known == 0
        cursor = result.cursor
    assert sorted(registered) == keys and len(set(registered)) == 2500
    assert calls_per_tick == [1, 1, 1, 1]  # one bounded page per tick, never a full listing
    assert cursor.last_key["review"] == keys[-1]
    [item] = [i for i in ledger.items(table_name="review") if i.object_key == keys[0]]
    assert item.compute_target == "lambda" and item.file_size == 150
    assert item.checksum == hashlib.md5(b"0" * 150).hexdigest()

    _put_many(s3, ["raw/review/20261130T000000-late.csv.gz"])
    result = register_new_objects(settings, store, ledger, cursor, tables=["review"])
    assert [i.object_key for i in result.registered] == ["raw/review/20261130T000000-late.csv.gz"]


def test_the_bronze_worker_refuses_a_key_overwritten_after_registration(store, tmp_path):
    from datetime import datetime, timezone

    from datamaster_assets.lake.factory import Lake
    from datamaster_assets.lake.ledger import Registration
    from datamaster_assets.workers.bronze import process_bronze_item

    header = b"review_id,brewery_id,beer_id,profile_id,review_overall,review_aroma,review_appearance,review_palate,review_taste,review_time\n"
    settings = Settings(home=tmp_path / "home", pii_key="k")
    lake = Lake(settings=settings, raw=store, store=store, ledger=SqliteLedger(settings.ledger_path))
    key = "raw/review/20261122T040000000000Z-r.csv.gz"
    first = store.put_bytes(key, gzip.compress(header + b"1,1,1,1,4,4,4,4,4,1200000000\n"))
    item, _ = lake.ledger.register(Registration(layer="bronze", table_name="review", object_key=key,
                                                checksum=first.etag, file_format="csv", file_size=first.size))
    store.put_bytes(key, gzip.compress(header + b"2,2,2,2,4,4,4,4,4,1200000000\n"))  # re-sent before it ran
    result = process_bronze_item(lake, item.control_id, owner="w", now=datetime.now(timezone.utc))
    assert result.status == "quarantined" and "content changed after it was registered" in result.error_message
    assert store.list_after("bronze/") == []
