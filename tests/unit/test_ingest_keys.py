from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from datamaster_assets.ingest.keys import bronze_key_for, raw_file_stem, rejects_key_for

AT = datetime(2026, 11, 22, 23, 30, tzinfo=timezone.utc)


def test_keys_are_pure_functions_of_the_raw_item():
    raw = "raw/review/20261122T040501000000Z-reviews.csv.gz"
    assert bronze_key_for("review", raw, AT) == "bronze/review/year=2026/month=11/day=22/20261122T040501000000Z-reviews.parquet"
    assert rejects_key_for("review", raw, AT) == "rejects/review/year=2026/month=11/day=22/20261122T040501000000Z-reviews.jsonl.gz"
    # the day is the UTC day, whatever zone the timestamp is given in
    east = AT.astimezone(timezone(timedelta(hours=5)))
    assert bronze_key_for("review", raw, east) == bronze_key_for("review", raw, AT)


@pytest.mark.parametrize("name, stem", [("a.json.gz", "a"), ("a.jsonl.gz", "a"), ("a.csv", "a"), ("a.b.gz", "a.b"), ("x", "x")])
def test_raw_file_stem(name, stem):
    assert raw_file_stem(f"raw/t/{name}") == stem


def test_naive_time_refused():
    with pytest.raises(ValueError):
        bronze_key_for("review", "raw/review/a.csv.gz", datetime(2026, 1, 1))
