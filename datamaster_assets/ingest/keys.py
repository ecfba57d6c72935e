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
    gzipped, like ``x.csv`` next to ``x.csv.gz``, or ``x.csv.GZ``) also gets a short hash of the whole key."""
    name = raw_key.rsplit("/", 1)[-1]
    gzipped = name.lower().endswith(".gz") and len(name) > 3
    stem = name[:-3] if gzipped else name
    if gzipped and name.endswith(".gz") and raw_key.count("/") == 2 and "\\" not in name:
        return stem
    digest = hashlib.sha256(raw_key.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    readable = stem.replace("\\", "_")  # S3 allows a backslash in a key; the object keys written here do not
    return f"{readable}-{digest}"


def _day_path(registered_at: datetime) -> str:
    if registered_at.tzinfo is None:
        raise ValueError("registered_at must be timezone-aware")
    day = registered_at.astimezone(timezone.utc)
    return f"year={day:%Y}/month={day:%m}/day={day:%d}"


def _output_stem(raw_key: str, checksum: str) -> str:
    """The raw file's stem and 8 hex digits of the registered content's checksum: the same key with
    new content is a new ledger item, and must not publish over the bronze file of the content
    before it (which silver may not have read yet). A retry of one item keeps its keys."""
    return f"{raw_file_stem(raw_key)}.{hashlib.sha256(checksum.encode('utf-8')).hexdigest()[:8]}"


def bronze_key_for(table: str, raw_key: str, registered_at: datetime, checksum: str) -> str:
    """bronze/<table>/year=YYYY/month=MM/day=DD/<name>.<content>.parquet, the day being the (UTC) day
    the raw file was registered in the ledger, <content> from its registered checksum."""
    return f"bronze/{table}/{_day_path(registered_at)}/{_output_stem(raw_key, checksum)}.parquet"


def rejects_key_for(table: str, raw_key: str, registered_at: datetime, checksum: str) -> str:
    """rejects/<table>/year=YYYY/month=MM/day=DD/<name>.<content>.jsonl.gz"""
    return f"rejects/{table}/{_day_path(registered_at)}/{_output_stem(raw_key, checksum)}.jsonl.gz"
