"""`datamaster demo` / `make demo`: seed once, run raw -> gold, say what happened and what to try next."""

from __future__ import annotations

import time
from typing import Callable

from datamaster_assets.contracts import table_names
from datamaster_assets.lake.factory import open_lake
from datamaster_assets.lake.landing import RAW_PREFIX
from datamaster_assets.settings import Settings

BUSIEST_MONTH_TOP_BEERS = """
WITH busiest AS (  -- the month with the most reviews (state_by_review_volume counts every review)
  SELECT review_year, review_month FROM gold.state_by_review_volume
  GROUP BY 1, 2 ORDER BY sum(total_reviews) DESC, 1, 2 LIMIT 1)
SELECT g.review_year AS year, g.review_month AS month, g.beer_name, g.beer_style,
       round(g.avg_rating, 2) AS avg_rating, g.total_reviews
FROM gold.top_beers_by_rating g JOIN busiest USING (review_year, review_month)
ORDER BY g.avg_rating DESC, g.total_reviews DESC, g.beer_id LIMIT 5
"""


LOCAL_NEXT_STEPS = (
    "Next:\n"
    "  make dev                                   # Dagster UI on this lake: graph, sensors, checks, runs\n"
    "  .venv/bin/datamaster status                # ledger: files per table and status\n"
    "  .venv/bin/datamaster query \"SELECT * FROM gold.top_drinkers ORDER BY total_reviews DESC LIMIT 10\"\n"
    "  .venv/bin/datamaster land FILE.csv.gz --table review && .venv/bin/datamaster run   # your own file"
)


def run_demo(
    settings: Settings,
    *,
    reviews: int | None,
    echo: Callable[[str], None] = print,
    next_steps: str = LOCAL_NEXT_STEPS,
) -> int:
    from datamaster_assets.defs.ops.runner import run_pipeline
    from datamaster_assets.seed import DEFAULT_DEMO_REVIEWS, seed_raw
    from datamaster_assets.transform.query import format_table, run_query

    lake = open_lake(settings)
    echo(f"DATAMASTER_ENV={settings.env}  DATAMASTER_HOME={settings.home}")
    if lake.raw.list_after(RAW_PREFIX, None, 1):
        echo("Raw landing area already seeded: processing what is pending "
             "(rm -rf the DATAMASTER_HOME above for a fresh start"
             + (f"; --reviews {reviews:,} applies only to a fresh one)." if reviews else ")."))
    else:
        started = time.perf_counter()
        summary = seed_raw(lake, reviews=reviews or DEFAULT_DEMO_REVIEWS, changes=True)
        echo(f"Seeded sample data in {time.perf_counter() - started:.1f}s:\n{summary.describe()}")

    started = time.perf_counter()
    report = run_pipeline(settings, log_level="WARNING")
    elapsed = time.perf_counter() - started
    echo(f"\nRan raw -> gold in {elapsed:.1f}s (Dagster run {report.run_id}, "
         f"{report.newly_registered} raw file(s) registered).")

    meta = report.materializations
    echo("\nBronze (typed, masked Parquet):")
    echo(f"  {'table':<10}{'files':>7}{'accepted':>12}{'rejected':>10}  parquet")
    for table in table_names():
        m = meta.get(f"bronze/{table}", {})
        echo(f"  {table:<10}{m.get('files_processed', 0):>7}{m.get('dagster/row_count', 0):>12,}"
             f"{m.get('records_rejected', 0):>10,}  {lake.store.uri(f'bronze/{table}')}")
    echo("\nSilver and gold (Iceberg) rows:")
    for asset, m in sorted(meta.items()):
        if asset.startswith(("silver/", "gold/")):
            echo(f"  {asset:<36}{m.get('dagster/row_count', 0):>12,}")

    try:
        top = run_query(lake, BUSIEST_MONTH_TOP_BEERS)
        echo("\nTop 5 beers of the busiest month (gold.top_beers_by_rating):")
        echo(format_table(top, "table"))
    except Exception as exc:  # the demo still reports the run's outcome below
        echo(f"\n(could not query gold.top_beers_by_rating: {exc})")

    if report.failures:
        echo("\nProblems:")
        for failure in report.failures:
            echo(f"  - {failure}")
    echo("\n" + next_steps)
    return 0 if report.ok else 1
