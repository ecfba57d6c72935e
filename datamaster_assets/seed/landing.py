"""``seed_raw``: write the demo/test data and land it in raw/ like the real producers would."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Mapping

import pyarrow as pa

from datamaster_assets.lake.factory import Lake
from datamaster_assets.lake.landing import land_file
from datamaster_assets.seed.cdc import Change, create_table_control_line, encode_change_lines, to_epoch_us, write_lines
from datamaster_assets.seed.dims import DIM_KEYS, DIM_TABLES, load_dim
from datamaster_assets.seed.gzipio import gzip_writer
from datamaster_assets.seed.reviews import generate_reviews, write_review_table_csv
from datamaster_assets.seed.scenario import ChangeFile, ChangeScenario, build_change_scenario

DEFAULT_DEMO_REVIEWS = 100_000
REVIEW_FILE_ROWS = 500_000
DIM_FILE_ROWS = 25_000
# Timeline relative to ``now``: the initial load, then the changes, each landed an hour later.
INITIAL_CHANGES_BEFORE_NOW = timedelta(hours=3, minutes=10)
INITIAL_LANDING_BEFORE_NOW = timedelta(hours=3)
CHANGES_BEFORE_NOW = timedelta(hours=2)
CHANGE_LANDING_BEFORE_NOW = timedelta(hours=1)
LANDING_STEP = timedelta(seconds=1)
INITIAL_TRANSACTION_ID = 1


@dataclass(frozen=True)
class SeededFile:
    table: str
    name: str
    key: str
    kind: str  # initial-load | extract | changes | duplicate | out-of-order
    file_format: str  # json | csv
    records: int  # data lines / rows, control lines excluded
    control_records: int
    bytes: int
    landed_at: datetime


@dataclass(frozen=True)
class TableSeed:
    keys: tuple[str, ...]
    records: int
    bytes: int


@dataclass(frozen=True)
class SeedSummary:
    seed: int
    reviews: int
    files: tuple[SeededFile, ...]  # in landing order
    changes: ChangeScenario | None
    seconds: float

    @property
    def tables(self) -> Mapping[str, TableSeed]:
        out: dict[str, TableSeed] = {}
        for f in self.files:
            prev = out.get(f.table, TableSeed((), 0, 0))
            out[f.table] = TableSeed(prev.keys + (f.key,), prev.records + f.records, prev.bytes + f.bytes)
        return out

    def describe(self) -> str:
        """A short human-readable table of what was landed."""
        lines = [f"  {'table':<10}{'files':>7}{'records':>12}{'MB':>9}"]
        for table, t in self.tables.items():
            lines.append(f"  {table:<10}{len(t.keys):>7}{t.records:>12,}{t.bytes / 1e6:>9.2f}")
        if self.changes is not None:
            r = self.changes.tables["review"]
            lines.append(
                f"  change scenario: {len(self.changes.files)} files (1 duplicate, 1 out-of-order); reviews after: "
                f"{r.live_rows:,} live, {r.deleted_rows} soft-deleted"
            )
        lines.append(f"  seed {self.seed}, {self.seconds:.1f}s")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Planned:
    table: str
    name: str
    kind: str
    file_format: str
    records: int
    control_records: int


def _split(total: int, max_rows: int, min_files: int = 1) -> list[tuple[int, int]]:
    files = max(min_files if total >= min_files else 1, math.ceil(total / max_rows))
    size = math.ceil(total / files) if total else 0
    return [(start, min(start + size, total)) for start in range(0, max(total, 1), max(size, 1))][:files]


def write_dim_load_files(directory: Path, table: str, start: datetime, first_transaction_id: int) -> list[tuple[Path, _Planned]]:
    """The DMS full load of one real dimension: ``load`` changes, a create-table control line first."""
    dim = load_dim(table)
    rows = dim.to_pylist()
    t0 = to_epoch_us(start)
    out = []
    for index, (lo, hi) in enumerate(_split(len(rows), DIM_FILE_ROWS), start=1):
        changes = [
            Change(table, "load", rows[i], t0 + i, first_transaction_id + i // 1000) for i in range(lo, hi)
        ]
        control = [create_table_control_line(table, dim.schema, [DIM_KEYS[table]], t0 - 1)] if index == 1 else []
        path = Path(directory) / f"{table}-load-{index:04d}.json.gz"
        with gzip_writer(path) as gz:
            write_lines(gz, control)
            write_lines(gz, encode_change_lines(changes, envelope=True))
        out.append((path, _Planned(table, path.name, "initial-load", "json", hi - lo, len(control))))
    return out


def write_review_extract_files(directory: Path, reviews: pa.Table) -> list[tuple[Path, _Planned]]:
    """The reviews as batch gzip CSV extracts of up to REVIEW_FILE_ROWS rows (at least two files)."""
    parts = _split(reviews.num_rows, REVIEW_FILE_ROWS, min_files=2)
    out = []
    for index, (lo, hi) in enumerate(parts, start=1):
        path = Path(directory) / f"review-extract-{index:04d}-of-{len(parts):04d}.csv.gz"
        write_review_table_csv(path, reviews.slice(lo, hi - lo))
        out.append((path, _Planned("review", path.name, "extract", "csv", hi - lo, 0)))
    return out


def write_change_file(directory: Path, change_file: ChangeFile) -> Path:
    path = Path(directory) / change_file.name
    with gzip_writer(path) as gz:
        write_lines(gz, list(change_file.control_lines))
        write_lines(gz, encode_change_lines(change_file.changes, envelope=change_file.envelope))
    return path


def _utc_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:
        raise ValueError(f"now={now!r} has no time zone; pass an aware datetime (UTC)")
    return now.astimezone(timezone.utc)


def seed_raw(
    lake: Lake,
    *,
    reviews: int = DEFAULT_DEMO_REVIEWS,
    changes: bool = False,
    seed: int = 42,
    now: datetime | None = None,
) -> SeedSummary:
    """Land the real dimensions (DMS full-load CDC files), ``reviews`` generated reviews (gzip CSV
    extracts) and, with ``changes``, the change scenario of docs/data.md, into ``lake.raw``.

    The same (reviews, changes, seed, now) always lands byte-identical files under the same keys.
    """
    started = time.perf_counter()
    now = _utc_now(now)
    if reviews < 0:
        raise ValueError(f"reviews must be >= 0, got {reviews}")
    review_table = generate_reviews(reviews, seed)
    scenario = build_change_scenario(review_table, seed, now - CHANGES_BEFORE_NOW) if changes else None

    landed: list[SeededFile] = []
    with tempfile.TemporaryDirectory(prefix="datamaster-seed-") as tmp:
        directory = Path(tmp)
        landing_at = now - INITIAL_LANDING_BEFORE_NOW

        def land(path: Path, planned: _Planned, landed_at: datetime) -> SeededFile:
            info = land_file(lake.raw, planned.table, path, landed_at)
            return SeededFile(planned.table, planned.name, info.key, planned.kind, planned.file_format,
                              planned.records, planned.control_records, info.size, landed_at)

        initial: list[tuple[Path, _Planned]] = []
        txn = INITIAL_TRANSACTION_ID
        for table in DIM_TABLES:
            initial += write_dim_load_files(directory, table, now - INITIAL_CHANGES_BEFORE_NOW, txn)
            txn += load_dim(table).num_rows // 1000 + 1
        initial += write_review_extract_files(directory, review_table)
        for i, (path, planned) in enumerate(initial):
            landed.append(land(path, planned, landing_at + i * LANDING_STEP))
            path.unlink()

        if scenario is not None:
            landing_at = now - CHANGE_LANDING_BEFORE_NOW
            written: dict[str, Path] = {}
            files: list[ChangeFile] = []
            for i, cf in enumerate(scenario.files):
                if cf.duplicate_of is not None:
                    path = directory / cf.name
                    shutil.copyfile(written[cf.duplicate_of], path)
                else:
                    path = write_change_file(directory, cf)
                written[cf.name] = path
                planned = _Planned(cf.table, cf.name, cf.kind, "json", len(cf.changes), len(cf.control_lines))
                seeded = land(path, planned, landing_at + i * LANDING_STEP)
                landed.append(seeded)
                files.append(replace(cf, key=seeded.key))
            scenario = replace(scenario, files=tuple(files))

    return SeedSummary(seed=seed, reviews=reviews, files=tuple(landed), changes=scenario,
                       seconds=time.perf_counter() - started)
