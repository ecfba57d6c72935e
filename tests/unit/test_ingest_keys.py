from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from datamaster_assets.ingest.keys import bronze_key_for, raw_file_stem, rejects_key_for

AT = datetime(2026, 11, 22, 23, 30, tzinfo=timezone.utc)
SUM = "c0ffee"  # the registered content's checksum


def test_keys_are_pure_functions_of_the_raw_item():
    raw = "raw/review/20261122T040501000000Z-reviews.csv.gz"
    assert bronze_key_for("review", raw, AT, SUM) == "bronze/review/year=2026/month=11/day=22/20261122T040501000000Z-reviews.csv.fb028887.parquet"
    assert rejects_key_for("review", raw, AT, SUM) == "rejects/review/year=2026/month=11/day=22/20261122T040501000000Z-reviews.csv.fb028887.jsonl.gz"
    # the day is the UTC day, whatever zone the timestamp is given in
    east = AT.astimezone(timezone(timedelta(hours=5)))
    assert bronze_key_for("review", raw, east, SUM) == bronze_key_for("review", raw, AT, SUM)
    # new content under the same key (registered the same day) is a new item with keys of its own
    assert bronze_key_for("review", raw, AT, "d00d") != bronze_key_for("review", raw, AT, SUM)


@pytest.mark.parametrize("name, stem", [("a.json.gz", "a.json"), ("a.csv.gz", "a.csv"), ("a.jsonl.gz", "a.jsonl"), ("a.gz", "a")])
def test_raw_file_stem(name, stem):
    assert raw_file_stem(f"raw/t/{name}") == stem


@pytest.mark.parametrize("key, stem", [("raw/t/a.csv", "a.csv-"), ("raw/t/x", "x-"), ("raw/t/d/a.csv.gz", "a.csv-"),
                                       ("raw/t//a.csv.gz", "a.csv-"), ("raw/t/a\\b.csv.gz", "a_b.csv-")])
def test_raw_file_stem_of_other_keys_carries_a_hash_of_the_key(key, stem):
    got = raw_file_stem(key)
    assert got.startswith(stem) and len(got) == len(stem) + 12
    assert "\\" not in got and "/" not in got


def test_distinct_raw_keys_never_share_a_bronze_key():
    keys = ["raw/review/a.csv.gz", "raw/review/a.csv", "raw/review/a.json.gz", "raw/review/a.jsonl.gz",
            "raw/review/d1/a.csv.gz", "raw/review/d2/a.csv.gz", "raw/review/a.gz", "raw/review/a",
            "raw/review/a_b.csv.gz", "raw/review/a\\b.csv.gz", "raw/review//a.csv.gz", "raw/review/./a.csv.gz",
            "raw/review/a.csv.GZ", "raw/review/a.csv.Gz"]
    assert len({bronze_key_for("review", k, AT, SUM) for k in keys}) == len(keys)
    assert len({rejects_key_for("review", k, AT, SUM) for k in keys}) == len(keys)


def test_naive_time_refused():
    with pytest.raises(ValueError):
        bronze_key_for("review", "raw/review/a.csv.gz", datetime(2026, 1, 1), SUM)
