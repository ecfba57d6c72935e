"""Where bronze and rejects objects live: pure functions of the raw object (DESIGN section 5).

A retried or duplicated run computes the same keys and overwrites, never duplicates.
"""

from __future__ import annotations

from datetime import datetime, timezone

RAW_SUFFIXES = (".csv.gz", ".jsonl.gz", ".json.gz", ".csv", ".jsonl", ".json")


def raw_file_stem(raw_key: str) -> str:
    """raw/review/20261122T040501Z-reviews.csv.gz -> 20261122T040501Z-reviews"""
    name = raw_key.rsplit("/", 1)[-1]
    lower = name.lower()
    for suffix in RAW_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    if lower.endswith(".gz") and len(name) > 3:
        return name[:-3]
    return name


def _day_path(registered_at: datetime) -> str:
    if registered_at.tzinfo is None:
        raise ValueError("registered_at must be timezone-aware")
    day = registered_at.astimezone(timezone.utc)
    return f"year={day:%Y}/month={day:%m}/day={day:%d}"


def bronze_key_for(table: str, raw_key: str, registered_at: datetime) -> str:
    """bronze/<table>/year=YYYY/month=MM/day=DD/<name>.parquet, the day being the (UTC) day the raw
    file was registered in the ledger."""
    return f"bronze/{table}/{_day_path(registered_at)}/{raw_file_stem(raw_key)}.parquet"


def rejects_key_for(table: str, raw_key: str, registered_at: datetime) -> str:
    """rejects/<table>/year=YYYY/month=MM/day=DD/<name>.jsonl.gz"""
    return f"rejects/{table}/{_day_path(registered_at)}/{raw_file_stem(raw_key)}.jsonl.gz"
