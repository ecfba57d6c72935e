"""Data for the demo, the tests and the benchmarks (docs/data.md).

``seed_raw`` lands the real dimensions as DMS CDC files, generated reviews as gzip CSV extracts
and, optionally, a deterministic change scenario whose expected silver state it returns. The
``write_*`` functions produce single benchmark files.
"""

from datamaster_assets.seed.landing import (
    DEFAULT_DEMO_REVIEWS,
    SeededFile,
    SeedSummary,
    TableSeed,
    seed_raw,
)
from datamaster_assets.seed.review_files import write_review_change_file, write_reviews_jsonl
from datamaster_assets.seed.reviews import FULL_SIZE_REVIEWS, REVIEW_COLUMNS, generate_reviews, write_reviews_csv
from datamaster_assets.seed.scenario import ChangeFile, ChangeScenario, ExpectedRow, TableScenario

__all__ = [
    "DEFAULT_DEMO_REVIEWS",
    "FULL_SIZE_REVIEWS",
    "REVIEW_COLUMNS",
    "ChangeFile",
    "ChangeScenario",
    "ExpectedRow",
    "SeedSummary",
    "SeededFile",
    "TableScenario",
    "TableSeed",
    "generate_reviews",
    "seed_raw",
    "write_review_change_file",
    "write_reviews_csv",
    "write_reviews_jsonl",
]
