"""The gold speed-ups keep their guarantees: review_flat handed over in memory only when it is exactly
the table's current snapshot, review_flat split over several files, mart files with correct
partition values and statistics, rank order within a month, isolated DuckDB connections."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from datamaster_assets.lake import iceberg_files
from datamaster_assets.lake.catalog import table_identifier
from datamaster_assets.lake.factory import open_lake
from datamaster_assets.settings import Settings
from datamaster_assets.transform.gold import MARTS, compute_marts
from datamaster_assets.transform.review_flat import build_review_flat, duckdb_connection
from datamaster_assets.workers import gold as worker
from datamaster_assets.workers.gold import (
    PROP_AFFECTED_MONTHS,
    build_review_flat_table,
    encode_months,
    forget_review_flat,
    refresh_gold,
)
from tests.unit.gold_data import review_rows, silver_set, write_silver

NOW = datetime(2024, 3, 1, tzinfo=timezone.utc)


@pytest.fixture
def lake(tmp_path: Path):
    forget_review_flat()
    yield open_lake(Settings(home=tmp_path / "home"))
    forget_review_flat()


def gold_rows(lake, name: str) -> list[dict]:
    table = lake.catalog.load_table(table_identifier(lake.settings, "gold", name)).scan().to_arrow()
    return table.sort_by([(c, "ascending") for c in ("review_year", "review_month", *MARTS[name].grain)]).to_pylist()


def expected_from(flat: pa.Table) -> dict[str, list[dict]]:
    return {
        name: rows.sort_by([(c, "ascending") for c in ("review_year", "review_month", *MARTS[name].grain)]).to_pylist()
        for name, rows in compute_marts(flat).items()
    }


def flat_table(lake):
    return lake.catalog.load_table(table_identifier(lake.settings, "silver", "review_flat"))


def test_refresh_takes_review_flat_from_the_build_in_this_process(lake):
    tables = silver_set()
    write_silver(lake, tables)
    build_review_flat_table(lake, now=NOW)
    result = refresh_gold(lake, now=NOW)
    assert result.metadata["review_flat_from_memory"] is True
    expected = expected_from(build_review_flat(tables["review"], tables["beer"], tables["brewery"], tables["profile"]))
    for name in MARTS:
        assert gold_rows(lake, name) == expected[name], name


def test_refresh_reads_review_flat_back_when_it_was_not_built_here(lake, tmp_path):
    write_silver(lake, silver_set())
    build_review_flat_table(lake, now=NOW)
    forget_review_flat()
    result = refresh_gold(lake, now=NOW)
    assert result.metadata["review_flat_from_memory"] is False
    expected = expected_from(flat_table(lake).scan().to_arrow())
    for name in MARTS:
        assert gold_rows(lake, name) == expected[name], name


def test_review_flat_changed_by_another_writer_is_read_not_taken_from_memory(lake):
    write_silver(lake, silver_set())
    build_review_flat_table(lake, now=NOW)  # leaves its rows in memory
    table = flat_table(lake)
    # Another writer rescores every review of 2010-01 after the build.
    current = table.scan().to_arrow()
    january = pc.and_(pc.equal(current["review_year"], 2010), pc.equal(current["review_month"], 1))
    rescored = current.set_column(
        current.schema.get_field_index("review_overall"), "review_overall",
        pc.if_else(january, pa.scalar(1.0), current["review_overall"]),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table.overwrite(rescored, snapshot_properties={PROP_AFFECTED_MONTHS: encode_months([(2010, 1)])})

    result = refresh_gold(lake, now=NOW)
    assert result.metadata["review_flat_from_memory"] is False
    assert result.review_flat_snapshot_id == flat_table(lake).current_snapshot().snapshot_id
    expected = expected_from(flat_table(lake).scan().to_arrow())
    for name in MARTS:
        assert gold_rows(lake, name) == expected[name], name
    january_beers = [r for r in gold_rows(lake, "top_beers_by_rating") if (r["review_year"], r["review_month"]) == (2010, 1)]
    assert january_beers and all(r["avg_rating"] == 1.0 for r in january_beers)


def test_big_review_flat_is_written_as_one_file_per_core(lake, monkeypatch):
    monkeypatch.setattr(iceberg_files, "ROWS_PER_FILE_MIN", 10)
    monkeypatch.setattr(iceberg_files.os, "cpu_count", lambda: 3)
    tables = silver_set()
    write_silver(lake, tables)
    result = build_review_flat_table(lake, now=NOW)
    files = flat_table(lake).inspect.files().to_pylist()
    assert len(files) == 3
    assert sum(f["record_count"] for f in files) == result.row_count
    stored = flat_table(lake).scan().to_arrow().sort_by("review_id")
    built = build_review_flat(tables["review"], tables["beer"], tables["brewery"], tables["profile"]).sort_by("review_id")
    assert stored.to_pylist() == built.to_pylist()


def test_mart_files_carry_their_month_as_partition_and_bounds(lake):
    write_silver(lake, silver_set(review_rows()))
    build_review_flat_table(lake, now=NOW)
    refresh_gold(lake, now=NOW)
    for name in MARTS:
        table = lake.catalog.load_table(table_identifier(lake.settings, "gold", name))
        rows = gold_rows(lake, name)
        for file in table.inspect.files().to_pylist():
            month = (file["partition"]["review_year"], file["partition"]["review_month"])
            metrics = file["readable_metrics"]
            assert (metrics["review_year"]["lower_bound"], metrics["review_month"]["lower_bound"]) == month
            assert (metrics["review_year"]["upper_bound"], metrics["review_month"]["upper_bound"]) == month
            assert file["record_count"] == sum((r["review_year"], r["review_month"]) == month for r in rows)


def _rank_key(spec, row):
    key = [row["review_year"], row["review_month"]]
    for column, direction in spec.rank:
        value = row[column]
        key.append((value is None, 0 if value is None else (-value if direction == "descending" else value)))
    return key


@pytest.mark.parametrize("mart", sorted(MARTS))
def test_mart_rows_are_in_month_then_rank_order(mart):
    tables = silver_set()
    rows = compute_marts(build_review_flat(tables["review"], tables["beer"], tables["brewery"], tables["profile"]))[mart]
    listed = rows.to_pylist()
    assert len(listed) > 1
    if mart in ("top_styles_by_popularity", "state_by_review_volume"):
        # string grains: descending numbers first, then the name ascending with nulls last
        spec = MARTS[mart]
        keyed = [(r["review_year"], r["review_month"], -r["total_reviews"], r[spec.grain[0]] is None,
                  r[spec.grain[0]] or "") for r in listed]
        assert keyed == sorted(keyed)
    else:
        assert listed == sorted(listed, key=lambda r: _rank_key(MARTS[mart], r))


def test_duckdb_connections_are_isolated_and_utc():
    first, second = duckdb_connection(), duckdb_connection()
    try:
        first.register("only_here", pa.table({"x": [1]}))
        with pytest.raises(Exception, match="only_here"):
            second.execute("SELECT * FROM only_here").fetchall()
        assert second.execute("SELECT current_setting('TimeZone')").fetchone() == ("UTC",)
    finally:
        first.close()
        second.close()


def test_marts_computed_concurrently_are_identical():
    tables = silver_set()
    flat = build_review_flat(tables["review"], tables["beer"], tables["brewery"], tables["profile"])
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: compute_marts(flat), range(4)))
    for other in results[1:]:
        for name in MARTS:
            assert other[name].equals(results[0][name]), name


def test_pending_work_counts_the_same_rows_from_memory_and_from_the_table(lake):
    rows = review_rows()
    write_silver(lake, silver_set(rows))
    build_review_flat_table(lake, now=NOW)
    refresh_gold(lake, now=NOW)
    rescored = [dict(r, review_overall=4.5) if r["review_id"] == rows[0]["review_id"] else r for r in rows]
    write_silver(lake, silver_set(rescored))
    flat = build_review_flat_table(lake, now=NOW)
    assert flat.affected_months
    from_memory = worker.pending_gold_work(lake)
    forget_review_flat()
    from_table = worker.pending_gold_work(lake)
    assert from_memory == from_table
    months, count = from_table
    assert months == set(flat.affected_months)
    expected = flat_table(lake).scan().to_arrow()
    assert count == sum((y, m) in months for y, m in zip(expected["review_year"].to_pylist(),
                                                          expected["review_month"].to_pylist()))
