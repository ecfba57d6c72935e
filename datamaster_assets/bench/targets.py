"""The issue's speed targets, evaluated against a report's measurements (pure: dicts in, dicts out).

Absolute targets hold for the full-size data set only; at other sizes they are still shown but
marked as not applicable. Ratio targets compare two measurements taken side by side in one run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

MB_IN_MIB = 1e6 / 2**20  # the issue states memory in MB (10**6 bytes); reports use MiB


@dataclass(frozen=True)
class Target:
    key: str
    description: str
    limit: float
    unit: str  # "s", "MiB" or "x" (a ratio)
    at_most: bool  # True: measured <= limit passes; False: measured >= limit passes
    absolute: bool  # only meaningful at full size
    measure: Callable[[Callable[[str, str], float | None]], float | None]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


TARGETS: tuple[Target, ...] = (
    Target("bronze_csv_wall", "bronze CSV, 1.59 M rows: wall time", 1.2, "s", True, True,
           lambda get: get("bronze_csv", "median_s")),
    Target("bronze_csv_rss", "bronze CSV: peak RSS (256 MB)", 256 * MB_IN_MIB, "MiB", True, True,
           lambda get: get("bronze_csv", "median_rss_mib")),
    Target("bronze_csv_vs_floor", "bronze CSV / gzip -dc floor", 1.7, "x", True, False,
           lambda get: _ratio(get("bronze_csv", "median_s"), get("bronze_csv.floor_gzip", "median_s"))),
    Target("bronze_csv_vs_pyarrow", "bronze CSV / plain pyarrow conversion (must be < 1)", 1.0, "x", True, False,
           lambda get: _ratio(get("bronze_csv", "median_s"), get("bronze_csv.ref_pyarrow", "median_s"))),
    Target("bronze_memory_flat", "bronze peak RSS, 10x larger file / 1x (memory must not grow)", 1.1, "x", True, False,
           lambda get: _ratio(get("bronze_csv_x10", "median_rss_mib"), get("bronze_csv", "median_rss_mib"))),
    Target("bronze_jsonl_wall", "bronze CDC JSON lines, 1.59 M rows: wall time", 2.5, "s", True, True,
           lambda get: get("bronze_jsonl", "median_s")),
    Target("silver_initial_wall", "silver initial load of 1.59 M reviews: wall time", 4.0, "s", True, True,
           lambda get: get("silver_initial", "median_s")),
    Target("silver_merge_wall", "silver merge of 100 k changes into 1.59 M rows: wall time", 3.0, "s", True, True,
           lambda get: get("silver_merge", "median_s")),
    Target("silver_merge_vs_upsert", "pyiceberg Table.upsert / silver merge", 5.0, "x", False, False,
           lambda get: _ratio(get("silver_merge.ref_iceberg_upsert", "median_s"), get("silver_merge", "median_s"))),
    Target("gold_wall", "review_flat + 5 gold marts: wall time", 3.0, "s", True, True,
           lambda get: get("gold", "median_s")),
    Target("e2e_wall", "end to end `datamaster run` at full size: wall time", 30.0, "s", True, True,
           lambda get: get("e2e", "median_s")),
    Target("bronze_csv_vs_spark", "pyspark local / bronze CSV", 10.0, "x", False, False,
           lambda get: _ratio(get("bronze_csv.ref_spark", "median_s"), get("bronze_csv", "median_s"))),
    Target("bronze_jsonl_vs_spark", "pyspark local / bronze JSON lines", 10.0, "x", False, False,
           lambda get: _ratio(get("bronze_jsonl.ref_spark", "median_s"), get("bronze_jsonl", "median_s"))),
    Target("gold_vs_spark", "pyspark local / gold", 10.0, "x", False, False,
           lambda get: _ratio(get("gold.ref_spark", "median_s"), get("gold", "median_s"))),
)


def _getter(measurements: list[dict]) -> Callable[[str, str], float | None]:
    by_name = {m["name"]: m for m in measurements}

    def get(name: str, stat: str) -> float | None:
        m = by_name.get(name)
        if m is None or not m.get("summary"):
            return None
        return m["summary"][stat]

    return get


def evaluate_targets(measurements: list[dict], *, full_size: bool) -> list[dict]:
    """One row per target: measured value, limit and status (pass | MISS | not measured | n/a)."""
    get = _getter(measurements)
    rows = []
    for t in TARGETS:
        value = t.measure(get)
        if value is None:
            status = "not measured"
        elif t.absolute and not full_size:
            status = "n/a (not full size)"
        else:
            ok = value <= t.limit if t.at_most else value >= t.limit
            status = "pass" if ok else "MISS"
        rows.append({
            "key": t.key,
            "description": t.description,
            "limit": round(t.limit, 3),
            "comparison": "<=" if t.at_most else ">=",
            "unit": t.unit,
            "measured": None if value is None else round(value, 3),
            "status": status,
        })
    return rows
