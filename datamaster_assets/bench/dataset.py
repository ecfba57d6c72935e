"""The benchmark's input files, generated once per (size, seed) into a cache directory.

Files: the reviews as one gzip CSV extract and as one gzip CDC JSON-lines full load (``load``
changes, DMS envelope), a change file against them (updates of existing reviews and inserts of new
ones, later than the load), and the CSV repeated ten times (one header, ten copies of the rows, as
concatenated gzip members) for the memory-scaling check. The manifest
records, next to each file's size and sha256, the expected row counts and content checksums of
silver after the initial load and after the merge, computed straight from the generator's rows and
from parsing the change file with pyarrow, independently of the code under test.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from datamaster_assets.bench.checksum import content_checksum
from datamaster_assets.contracts import get_contract
from datamaster_assets.seed import write_review_change_file, write_reviews_csv, write_reviews_jsonl
from datamaster_assets.seed.review_files import DEFAULT_CHANGE_TS
from datamaster_assets.seed.reviews import FULL_SIZE_REVIEWS, generate_reviews

DATASET_VERSION = 2
FULL_SIZE_CHANGES = 100_000  # half updates, half inserts (the merge benchmark)
CHANGES_TS = datetime(2024, 1, 2, tzinfo=timezone.utc)  # a day after the full load's changes
CSV_NAME = "review.csv.gz"
JSONL_NAME = "review.jsonl.gz"
CHANGES_NAME = "review-changes.jsonl.gz"
X10_CSV_NAME = "review-x10.csv.gz"
X10_COPIES = 10


def review_columns() -> list[str]:
    return get_contract("review").column_names


def change_counts(reviews: int) -> tuple[int, int]:
    """(updates, inserts): 50,000 + 50,000 at full size, the same share of the table otherwise."""
    half = max(1, round(reviews * (FULL_SIZE_CHANGES // 2) / FULL_SIZE_REVIEWS))
    return min(half, reviews), half


def typed_reviews(rows: pa.Table) -> pa.Table:
    """Generator/JSON rows in the review contract's types (review_time: epoch seconds -> UTC timestamp)."""
    schema = get_contract("review").arrow_schema
    columns = []
    for field in schema:
        column = rows.column(field.name)
        if pa.types.is_timestamp(field.type):
            column = pc.cast(pc.multiply(pc.cast(column, pa.int64()), 1_000_000), pa.int64()).cast(field.type)
        columns.append(pc.cast(column, field.type))
    return pa.table(columns, schema=schema)


def read_change_rows(path: Path) -> pa.Table:
    """The row images of a DMS-envelope change file, parsed with pyarrow's own JSON reader."""
    raw = pajson.read_json(path)
    data = raw.column("data").combine_chunks()
    return pa.table({name: data.field(name) for name in review_columns()})


@dataclass(frozen=True)
class BenchDataset:
    directory: Path
    reviews: int
    seed: int
    updates: int
    inserts: int
    manifest: dict

    @property
    def csv(self) -> Path:
        return self.directory / CSV_NAME

    @property
    def jsonl(self) -> Path:
        return self.directory / JSONL_NAME

    @property
    def changes(self) -> Path:
        return self.directory / CHANGES_NAME

    @property
    def x10_csv(self) -> Path:
        return self.directory / X10_CSV_NAME

    def expected(self, name: str) -> dict:
        """{"rows": .., "digest": ..} for 'base', 'merged' or 'x10'."""
        return self.manifest["expected"][name]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_repeated_csv(source: Path, target: Path, copies: int) -> None:
    """``source``'s header and ``copies`` copies of its rows: the original gzip member followed by
    ``copies - 1`` members of the rows alone (a multi-member gzip file, as ``cat a.gz b.gz`` makes)."""
    from isal import igzip

    from datamaster_assets.seed.gzipio import gzip_writer

    with igzip.open(source, "rb") as f:
        text = f.read()
    body = target.with_name(target.name + ".body")
    with gzip_writer(body) as gz:
        gz.write(memoryview(text)[text.index(b"\n") + 1:])
    with open(target, "wb") as out:
        out.write(source.read_bytes())
        rows = body.read_bytes()
        for _ in range(copies - 1):
            out.write(rows)
    body.unlink()


def repeated_checksum(checksum: dict, copies: int) -> dict:
    """The content checksum of ``copies`` copies of the same rows (row hashes add up mod 2**64)."""
    return {"rows": checksum["rows"] * copies, "digest": f"{(int(checksum['digest'], 16) * copies) % 2**64:016x}"}


def _generate(directory: Path, reviews: int, seed: int) -> dict:
    started = time.perf_counter()
    updates, inserts = change_counts(reviews)
    write_reviews_csv(directory / CSV_NAME, reviews, seed)
    write_reviews_jsonl(directory / JSONL_NAME, reviews, seed, envelope=True, change_ts=DEFAULT_CHANGE_TS)
    write_review_change_file(directory / CHANGES_NAME, base_reviews=reviews, updates=updates, inserts=inserts,
                             seed=seed, change_ts=CHANGES_TS, envelope=True)
    write_repeated_csv(directory / CSV_NAME, directory / X10_CSV_NAME, X10_COPIES)

    columns = review_columns()
    base = typed_reviews(generate_reviews(reviews, seed))
    changed = typed_reviews(read_change_rows(directory / CHANGES_NAME))
    untouched = base.filter(pc.invert(pc.is_in(base["review_id"], value_set=changed["review_id"])))
    merged = pa.concat_tables([untouched, changed])
    base_checksum = content_checksum(base, columns).as_dict()
    files = {
        name: {"bytes": (directory / name).stat().st_size, "sha256": _sha256(directory / name)}
        for name in (CSV_NAME, JSONL_NAME, CHANGES_NAME, X10_CSV_NAME)
    }
    return {
        "version": DATASET_VERSION,
        "reviews": reviews,
        "seed": seed,
        "updates": updates,
        "inserts": inserts,
        "files": files,
        "expected": {
            "base": base_checksum,
            "merged": content_checksum(merged, columns).as_dict(),
            "x10": repeated_checksum(base_checksum, X10_COPIES),
        },
        "generated_in_s": round(time.perf_counter() - started, 2),
    }


def ensure_dataset(cache_dir: Path, reviews: int, seed: int) -> tuple[BenchDataset, bool]:
    """The cached data set for (reviews, seed), generating it first if needed; (dataset, generated)."""
    if reviews < 1:
        raise ValueError(f"reviews must be at least 1, got {reviews}")
    directory = Path(cache_dir) / f"reviews-{reviews}-seed-{seed}-v{DATASET_VERSION}"
    manifest_path = directory / "manifest.json"
    generated = False
    if not manifest_path.is_file():
        tmp = directory.with_name(directory.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        manifest = _generate(tmp, reviews, seed)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)  # all files or none: an interrupted generation leaves no half cache
        generated = True
    manifest = json.loads(manifest_path.read_text())
    return BenchDataset(directory, reviews, seed, manifest["updates"], manifest["inserts"], manifest), generated
