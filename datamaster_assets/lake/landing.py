"""Landing raw files and registering them in the ledger.

``register_new_objects`` is the one function that turns objects under ``raw/`` into ledger items:
the raw-landing sensor calls it every tick, the S3-notification Lambda calls
``register_object_keys`` for the keys in its event. Registration is idempotent, so both may see
the same object.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from datamaster_assets.contracts import table_names
from datamaster_assets.lake.ledger import Layer, Ledger, LedgerItem, Registration
from datamaster_assets.lake.objectstore import ObjectInfo, ObjectStore
from datamaster_assets.settings import Settings

RAW_PREFIX = "raw/"
# Compressed bytes per record, measured on the seeded review files (gzip CSV ~20.5, DMS-envelope
# JSON lines ~43), used to route a file before anyone has read it.
BYTES_PER_RECORD = {"csv": 20.5, "json": 43.0}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._=-]+")
_LANDING_STAMP = re.compile(r"^(\d{8}T\d{12})Z-")
# Names that sort in landing order: ours and Firehose's (_LANDING_STAMP), and a producer's own
# "<yyyymmdd>T<time>…" names; only these move the landing cursor (advances_cursor).
_TIME_ORDERED_NAME = re.compile(r"^\d{8}T\d")
# File modification times lag the clock (coarse kernel timestamps) or are rounded (2 s on FAT): a
# file counts as unchanged since its registration only if it was last modified this much before.
MTIME_SLACK = timedelta(seconds=2)


def file_format_of(key: str) -> str:
    """csv | json from the key's suffix; 'unknown' for anything else (the worker quarantines it)."""
    name = key.rsplit("/", 1)[-1].lower()
    if name.endswith((".csv.gz", ".csv")):
        return "csv"
    if name.endswith((".json.gz", ".jsonl.gz", ".json", ".jsonl")):
        return "json"
    return "unknown"


def table_of(key: str) -> str:
    """raw/<table>/... -> <table>."""
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != RAW_PREFIX.rstrip("/"):
        raise ValueError(f"raw object key {key!r} is not of the form raw/<table>/<name>")
    return parts[1]


def estimate_records(file_format: str, size: int) -> int:
    return int(size / BYTES_PER_RECORD.get(file_format, BYTES_PER_RECORD["json"]))


def compute_target_for(settings: Settings, estimated_records: int) -> str:
    if settings.env != "aws":
        return "inprocess"
    return "lambda" if estimated_records <= settings.lambda_max_records else "ecs"


def raw_key_for(table: str, filename: str, landed_at: datetime) -> str:
    """Landing key: a UTC timestamp prefix keeps keys in landing order, which the sensor's cursor relies on."""
    stamp = landed_at.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{RAW_PREFIX}{table}/{stamp}-{_SAFE_NAME.sub('_', filename)}"


def landed_at_of(key: str, fallback: datetime) -> datetime:
    """When a raw object landed: the timestamp ``raw_key_for`` put in its name, else ``fallback``
    (e.g. the object's last-modified time). Batch extracts carry no change time of their own, so
    their rows are "as of" this moment."""
    match = _LANDING_STAMP.match(key.rsplit("/", 1)[-1])
    if not match:
        return fallback
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%S%f").replace(tzinfo=timezone.utc)


def land_file(store: ObjectStore, table: str, path: Path, landed_at: datetime | None = None) -> ObjectInfo:
    """Copy a local file into the raw landing area, as a producer (DMS/Firehose, an export job) would."""
    if table not in table_names():
        raise ValueError(f"unknown table {table!r}; known tables: {', '.join(table_names())}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if file_format_of(path.name) == "unknown":
        raise ValueError(f"{path}: expected a .csv.gz or .json.gz / .jsonl.gz file")
    key = raw_key_for(table, path.name, landed_at or datetime.now(timezone.utc))
    return store.put_file(key, path)


def registration_for(settings: Settings, store: ObjectStore, info: ObjectInfo, checksum: str | None = None) -> Registration:
    fmt = file_format_of(info.key)
    try:
        table = table_of(info.key)
    except ValueError:
        table = "_unknown"
    checksum = checksum or info.etag or store.sha256(info.key)
    estimated = estimate_records(fmt, info.size)
    return Registration(
        layer=Layer.BRONZE.value,
        table_name=table,
        object_key=info.key,
        checksum=checksum,
        file_format=fmt,
        file_size=info.size,
        compute_target=compute_target_for(settings, estimated),
        record_count=estimated,
    )


@dataclass
class LandingCursor:
    """Per-table last key seen, plus a tick counter that schedules the periodic full reconcile."""

    last_key: dict[str, str] = field(default_factory=dict)
    ticks: int = 0

    def serialize(self) -> str:
        return json.dumps({"last_key": self.last_key, "ticks": self.ticks}, sort_keys=True)

    @classmethod
    def parse(cls, raw: str | None) -> "LandingCursor":
        if not raw:
            return cls()
        doc = json.loads(raw)
        return cls(last_key=dict(doc.get("last_key", {})), ticks=int(doc.get("ticks", 0)))


@dataclass
class LandingResult:
    registered: list[LedgerItem]
    already_known: int
    cursor: LandingCursor
    reconciled: bool


def is_folder_marker(key: str) -> bool:
    """The zero-byte ``…/`` object the S3 console's "Create folder" writes: not a file to load."""
    return key.endswith("/")


def advances_cursor(table: str, key: str) -> bool:
    """Whether ``key`` says how far landing has got: only a name directly under raw/<table>/ that
    starts with a date-time stamp (``raw_key_for``, Firehose, _TIME_ORDERED_NAME) does. Any other key (a sub-folder, a folder marker, a
    producer's own name) may sort after every later stamped key, and a cursor on it would hide
    them until the next full reconcile; such keys are listed (and found registered) again instead."""
    name = key[len(f"{RAW_PREFIX}{table}/"):]
    return key.startswith(f"{RAW_PREFIX}{table}/") and "/" not in name and bool(_TIME_ORDERED_NAME.match(name))


def checksums_of_registered(ledger: Ledger, infos: list[ObjectInfo]) -> dict[str, str]:
    """Checksums, from the ledger, of listed objects that carry none (the local store lists no
    ETag) and have not changed since they were registered: same size, last modified before the
    registration. Every listing that reaches such files again (keys the cursor cannot pass, every
    full reconcile, each `datamaster run`) then costs a ledger lookup instead of hashing them."""
    unsigned = {info.key: info for info in infos if not info.etag}
    known: dict[str, str] = {}
    for item in ledger.items_for_keys(Layer.BRONZE.value, unsigned) if unsigned else []:
        info = unsigned[item.object_key]
        if unchanged_since_registration(item, info.size, info.last_modified):
            known[item.object_key] = item.checksum
    return known


def unchanged_since_registration(item: LedgerItem, size: int, last_modified: datetime) -> bool:
    """Whether a local file of ``size`` bytes last modified at ``last_modified`` still holds the
    content ``item`` registered, by size and modification time (MTIME_SLACK)."""
    return item.file_size == size and last_modified < item.created_at - MTIME_SLACK


def register_new_objects(
    settings: Settings,
    store: ObjectStore,
    ledger: Ledger,
    cursor: LandingCursor,
    tables: list[str] | None = None,
) -> LandingResult:
    """List each table's raw prefix past the cursor, register what is new, advance the cursor.

    Every ``settings.landing_reconcile_every`` ticks the whole raw/ area is listed once instead,
    so keys that sort before the cursor (or land under an unknown table) are still registered.
    """
    tables = tables or table_names()
    reconcile = settings.landing_reconcile_every > 0 and cursor.ticks % settings.landing_reconcile_every == 0
    new_cursor = LandingCursor(dict(cursor.last_key), cursor.ticks + 1)
    infos: list[ObjectInfo] = []
    if reconcile:
        infos = list(store.iter_all(RAW_PREFIX))
        for info in infos:
            try:
                t = table_of(info.key)
            except ValueError:
                continue
            if advances_cursor(t, info.key) and info.key > new_cursor.last_key.get(t, ""):
                new_cursor.last_key[t] = info.key
    else:
        for table in tables:
            page = store.list_after(f"{RAW_PREFIX}{table}/", cursor.last_key.get(table), settings.landing_page_size)
            infos.extend(page)
            stamped = [i.key for i in page if advances_cursor(table, i.key)]
            if len(page) >= settings.landing_page_size:  # a full page: move on whatever the keys are
                new_cursor.last_key[table] = page[-1].key
            elif stamped:
                new_cursor.last_key[table] = max(stamped)
    infos = [info for info in infos if not is_folder_marker(info.key)]
    known = checksums_of_registered(ledger, infos)
    regs = [registration_for(settings, store, info, known.get(info.key)) for info in infos]
    results = ledger.register_many(regs)
    registered = [item for item, created in results if created]
    return LandingResult(registered, len(results) - len(registered), new_cursor, reconcile)


def register_object_keys(settings: Settings, store: ObjectStore, ledger: Ledger, keys: list[str]) -> list[LedgerItem]:
    """Register specific keys (S3 notifications). Missing objects are skipped: the event was stale."""
    regs = []
    for key in keys:
        if not key.startswith(RAW_PREFIX):
            continue
        info = store.head(key)
        if info is not None:
            regs.append(registration_for(settings, store, info))
    return [item for item, created in ledger.register_many(regs) if created]
