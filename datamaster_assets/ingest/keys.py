"""Where bronze and rejects objects live: pure functions of the raw object (DESIGN section 5).

A retried or duplicated run computes the same keys and overwrites, never duplicates.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone


def raw_file_stem(raw_key: str) -> str:
    """raw/review/20261122T040501Z-reviews.csv.gz -> 20261122T040501Z-reviews.csv

    Distinct raw keys give distinct stems: two raw files sharing one would publish to one bronze
    key, and the first one's rows would be lost without any count noticing. A gzip file directly
    under raw/<table>/ keeps its name without ``.gz`` (unique, since its key is; the format stays
    in it, so ``x.csv.gz`` and ``x.json.gz`` differ). Any other key (one in a sub-folder, or not
    gzipped, like ``x.csv`` next to ``x.csv.gz``) also gets a short hash of the whole key."""
    name = raw_key.rsplit("/", 1)[-1]
    gzipped = name.lower().endswith(".gz") and len(name) > 3
    stem = name[:-3] if gzipped else name
    if gzipped and raw_key.count("/") == 2 and "\\" not in name:
        return stem
    digest = hashlib.sha256(raw_key.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    readable = stem.replace("\\", "_")  # S3 allows a backslash in a key; the object keys written here do not
    return f"{readable}-{digest}"


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
