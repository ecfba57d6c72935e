"""build_review_flat_table / refresh_gold on a real local Iceberg catalog (SqlCatalog + file warehouse)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datamaster_assets.lake.catalog import table_identifier
from datamaster_assets.lake.factory import open_lake
from datamaster_assets.settings import Settings
from datamaster_assets.transform.gold import MARTS, check_totals_reconcile, compute_marts
from datamaster_assets.workers.gold import (
    GoldInputMissing,
    build_review_flat_table,
    decode_months,
    encode_months,
    refresh_gold,
)
from tests.unit.gold_data import review_rows, silver_set, utc, write_silver
from tests.unit.iceberg_files_on_disk import data_files_on_disk, data_files_referenced

NOW = datetime(2024, 3, 1, tzinfo=timezone.utc)
ALL_MONTHS = [(2010, 1), (2010, 2), (2011, 7)]


@pytest.fixture
def lake(tmp_path: Path):
    return open_lake(Settings(home=tmp_path / "home"))


def gold(lake, name: str) -> pa.Table:
    table = lake.catalog.load_table(table_identifier(lake.settings, "gold", name)).scan().to_arrow()
    return table.sort_by([(c, "ascending") for c in ("review_year", "review_month", *MARTS[name].grain)])


def snapshot_ids(lake) -> dict[str, int]:
    return {
        name: lake.catalog.load_table(table_identifier(lake.settings, "gold", name)).current_snapshot().snapshot_id
        for name in MARTS
    }


def expected_gold(tables: dict[str, pa.Table]) -> dict[str, list[dict]]:
    from datamaster_assets.transform.review_flat import build_review_flat

    flat = build_review_flat(tables["review"], tables["beer"], tables["brewery"], tables["profile"])
    out = {}
    for name, table in compute_marts(flat).items():
        out[name] = table.sort_by([(c, "ascending") for c in ("review_year", "review_month", *MARTS[name].grain)]).to_pylist()
    return out


def with_review(rows: list[dict], review_id: int, **changes) -> list[dict]:
    return [dict(r, **changes) if r["review_id"] == review_id else r for r in rows]


def build_and_refresh(lake, rows):
    tables = silver_set(rows)
    write_silver(lake, tables)
    flat = build_review_flat_table(lake, now=NOW)
    return tables, flat, refresh_gold(lake, now=NOW)


def assert_gold_matches(lake, tables):
    expected = expected_gold(tables)
    for name in MARTS:
        assert gold(lake, name).to_pylist() == expected[name], name


def test_first_build_writes_everything(lake):
    tables, flat, result = build_and_refresh(lake, review_rows())
    assert flat.written and flat.affected_months == ALL_MONTHS
    assert flat.row_count == len(review_rows()) - 1  # one deleted review
    assert flat.metadata["dagster/row_count"] == flat.row_count
    assert set(result.marts) == set(MARTS)
    for name, mart in result.marts.items():
        assert mart.status == "rebuilt"
        assert mart.source_snapshot_id == flat.snapshot_id
        assert mart.metadata["dagster/row_count"] == mart.row_count == len(gold(lake, name))
    assert "Alpha IPA" in result.marts["top_beers_by_rating"].metadata["preview"]
    assert_gold_matches(lake, tables)
    # One Parquet file per month partition, holding only that month's rows.
    files = lake.catalog.load_table(table_identifier(lake.settings, "gold", "top_drinkers")).inspect.files().to_pylist()
    assert sorted((f["partition"]["review_year"], f["partition"]["review_month"]) for f in files) == ALL_MONTHS
    reconciled = check_totals_reconcile(MARTS["top_beers_by_rating"], gold(lake, "top_beers_by_rating"),
                                        lake.catalog.load_table("silver.review_flat").scan().to_arrow())
    assert reconciled.passed


def test_mart_files_are_snappy_with_bounds_only_on_partition_columns(lake):
    build_and_refresh(lake, review_rows())
    table = lake.catalog.load_table(table_identifier(lake.settings, "gold", "top_drinkers"))
    assert table.properties["write.parquet.compression-codec"] == "snappy"
    schema = table.schema()
    partition_ids = {schema.find_field(name).field_id for name in ("review_year", "review_month")}
    files = table.inspect.files().to_pylist()
    assert files
    for entry in files:
        assert {k for k, _ in entry["lower_bounds"]} == partition_ids
        assert {k for k, _ in entry["upper_bounds"]} == partition_ids
        assert {k for k, _ in entry["value_counts"]} == {f.field_id for f in schema.fields}
        local = entry["file_path"].removeprefix("file://")
        # The partition is in the file name; no directory per month.
        year, month = entry["partition"]["review_year"], entry["partition"]["review_month"]
        assert Path(local).parent.name == "data"
        assert Path(local).name.startswith(f"review_year={year}-review_month={month}-")
        assert {pq.ParquetFile(local).metadata.row_group(0).column(i).compression
                for i in range(len(schema.fields))} == {"SNAPPY"}
    # Partition pruning still works from the manifests alone.
    rows = table.scan(row_filter="review_year = 2010 AND review_month = 2").to_arrow()
    assert set(zip(rows["review_year"].to_pylist(), rows["review_month"].to_pylist())) == {(2010, 2)}


def rank_key(spec, row: dict) -> tuple:
    """A mart row's place in its month: the spec's rank, nulls last, written out in Python (every
    descending rank column is numeric)."""
    return tuple((1, 0) if row[c] is None else (0, -row[c] if d == "descending" else row[c]) for c, d in spec.rank)


def test_each_month_file_holds_its_rows_in_rank_order(lake):
    # The ranking is applied on the writer threads, apart from the query (arrange_mart).
    build_and_refresh(lake, review_rows())
    for name, spec in MARTS.items():
        table = lake.catalog.load_table(table_identifier(lake.settings, "gold", name))
        files = table.inspect.files().to_pylist()
        assert files, name
        for entry in files:
            rows = pq.read_table(entry["file_path"].removeprefix("file://")).to_pylist()
            assert rows, name
            assert {(r["review_year"], r["review_month"]) for r in rows} == {
                (entry["partition"]["review_year"], entry["partition"]["review_month"])}
            ranked = sorted(rows, key=lambda r: rank_key(spec, r))
            assert [r[spec.grain[0]] for r in rows] == [r[spec.grain[0]] for r in ranked], name


def test_running_twice_changes_nothing(lake):
    rows = review_rows()
    build_and_refresh(lake, rows)
    before = {name: gold(lake, name) for name in MARTS}
    ids = snapshot_ids(lake)
    flat_snapshot = lake.catalog.load_table("silver.review_flat").current_snapshot().snapshot_id

    again = build_review_flat_table(lake, now=NOW)
    assert not again.written and again.affected_months == [] and again.snapshot_id == flat_snapshot
    result = refresh_gold(lake, now=NOW)
    assert {m.status for m in result.marts.values()} == {"up-to-date"}
    assert snapshot_ids(lake) == ids
    for name in MARTS:
        assert gold(lake, name).equals(before[name])


def test_score_change_recomputes_only_its_month(lake):
    rows = review_rows()
    build_and_refresh(lake, rows)
    drinkers = lake.catalog.load_table("gold.top_drinkers")
    untouched = {f["file_path"] for f in drinkers.inspect.files().to_pylist() if f["partition"]["review_month"] == 1}

    tables, flat, result = build_and_refresh(lake, with_review(rows, 60, review_overall=0.0))
    assert flat.affected_months == [(2010, 2)]
    assert (flat.rows_changed, flat.rows_added, flat.rows_removed) == (1, 0, 0)
    for mart in result.marts.values():
        assert mart.status == "refreshed" and mart.affected_months == [(2010, 2)]
    assert_gold_matches(lake, tables)
    after = {f["file_path"] for f in drinkers.refresh().inspect.files().to_pylist()}
    assert untouched <= after  # other months' files were not rewritten


def test_moved_review_recomputes_both_months(lake):
    rows = review_rows()
    build_and_refresh(lake, rows)
    tables, flat, result = build_and_refresh(lake, with_review(rows, 60, review_time=utc(2009, 12)))
    assert flat.affected_months == [(2009, 12), (2010, 2)]
    assert result.marts["state_by_review_volume"].affected_months == [(2009, 12), (2010, 2)]
    assert_gold_matches(lake, tables)
    months = {(r["review_year"], r["review_month"]) for r in gold(lake, "top_drinkers").to_pylist()}
    assert months == {(2009, 12), *ALL_MONTHS}


def test_deleting_the_only_review_of_a_month_removes_its_gold_rows(lake):
    rows = review_rows()
    build_and_refresh(lake, rows)
    assert (2011, 7) in {(r["review_year"], r["review_month"]) for r in gold(lake, "top_drinkers").to_pylist()}
    tables, flat, result = build_and_refresh(lake, with_review(rows, len(rows), deleted=True))
    assert flat.affected_months == [(2011, 7)] and flat.rows_removed == 1
    for name in MARTS:
        assert (2011, 7) not in {(r["review_year"], r["review_month"]) for r in gold(lake, name).to_pylist()}
    assert_gold_matches(lake, tables)


def test_review_flat_missing_a_column_is_rewritten_and_its_old_months_recomputed(lake):
    """A review_flat written by an older release (a column short): the rebuild rewrites it all, and
    the months only the old version held are recomputed too."""
    rows = review_rows()
    build_and_refresh(lake, rows)
    flat_table = lake.catalog.load_table(table_identifier(lake.settings, "silver", "review_flat"))
    with flat_table.update_schema() as update:
        update.delete_column("review_taste")
    tables, flat, result = build_and_refresh(lake, with_review(rows, len(rows), deleted=True))
    assert flat.written and flat.affected_months == ALL_MONTHS
    for name in MARTS:
        assert (2011, 7) not in {(r["review_year"], r["review_month"]) for r in gold(lake, name).to_pylist()}
    assert_gold_matches(lake, tables)


def test_a_column_review_flat_no_longer_has_does_not_force_a_rewrite_every_build(lake):
    from pyiceberg.types import StringType

    rows = review_rows()
    build_and_refresh(lake, rows)
    with lake.catalog.load_table(table_identifier(lake.settings, "silver", "review_flat")).update_schema() as update:
        update.add_column("legacy_note", StringType())
    before = snapshot_ids(lake)
    _, flat, result = build_and_refresh(lake, rows)
    assert not flat.written and flat.affected_months == []
    assert {m.status for m in result.marts.values()} == {"up-to-date"} and snapshot_ids(lake) == before


def test_a_duplicated_review_flat_row_from_another_writer_is_repaired(lake):
    rows = review_rows()
    tables, _, _ = build_and_refresh(lake, rows)
    flat_table = lake.catalog.load_table(table_identifier(lake.settings, "silver", "review_flat"))
    flat_table.append(flat_table.scan(row_filter="review_id = 60").to_arrow())  # e.g. a retried append
    flat = build_review_flat_table(lake, now=NOW)
    assert flat.written and flat.rows_removed == 1 and flat.affected_months
    stored = lake.catalog.load_table(table_identifier(lake.settings, "silver", "review_flat")).scan().to_arrow()
    assert stored.num_rows == flat.row_count == len(set(stored["review_id"].to_pylist()))
    refresh_gold(lake, now=NOW)
    assert_gold_matches(lake, tables)


def test_changes_accumulate_until_gold_is_refreshed(lake):
    rows = review_rows()
    build_and_refresh(lake, rows)
    step1 = with_review(rows, 1, review_overall=5.0)
    write_silver(lake, silver_set(step1))
    assert build_review_flat_table(lake, now=NOW).affected_months == [(2010, 1)]
    step2 = with_review(step1, len(rows), review_overall=4.5)
    tables = silver_set(step2)
    write_silver(lake, tables)
    assert build_review_flat_table(lake, now=NOW).affected_months == [(2011, 7)]
    result = refresh_gold(lake, ["top_drinkers"], now=NOW)
    assert list(result.marts) == ["top_drinkers"]
    assert result.marts["top_drinkers"].affected_months == [(2010, 1), (2011, 7)]
    assert gold(lake, "top_drinkers").to_pylist() == expected_gold(tables)["top_drinkers"]


def test_non_gold_change_rewrites_flat_but_not_gold(lake):
    rows = review_rows()
    build_and_refresh(lake, rows)
    ids = snapshot_ids(lake)
    tables, flat, result = build_and_refresh(lake, with_review(rows, 5, review_aroma=1.0))
    assert flat.written and flat.rows_changed == 1 and flat.affected_months == []
    assert {m.status for m in result.marts.values()} == {"up-to-date"}
    assert snapshot_ids(lake) == ids
    # and a later real change is still picked up through the skipped snapshot
    tables, flat, result = build_and_refresh(lake, with_review(with_review(rows, 5, review_aroma=1.0), 1,
                                                                review_overall=0.5))
    assert result.marts["top_drinkers"].affected_months == [(2010, 1)]
    assert_gold_matches(lake, tables)


def test_missing_inputs_are_named(lake):
    with pytest.raises(GoldInputMissing, match="silver.review does not exist"):
        build_review_flat_table(lake)
    with pytest.raises(GoldInputMissing, match="silver.review_flat does not exist"):
        refresh_gold(lake)
    with pytest.raises(KeyError, match="unknown gold mart"):
        refresh_gold(lake, ["top_wines"])


def test_month_encoding_round_trips():
    months = {(2010, 1), (1999, 12), (2011, 7)}
    assert encode_months(months) == "199912,201001,201107"
    assert decode_months(encode_months(months)) == months
    assert decode_months("") == set()


# ---- commits that lose a race with another writer ---------------------------------------------


class RaceBeforeFirstCommit:
    """Stands in for ``commit_replacement`` in workers.gold: before our first commit to ``table_name``
    another writer (``race``) commits to the same table, then ours goes ahead on stale metadata."""

    def __init__(self, monkeypatch, table_name: str, race):
        import datamaster_assets.workers.gold as gold_worker

        self._real = gold_worker.commit_replacement
        self._table_name, self._race = table_name, race
        self.raced = False
        self.calls: list[str] = []
        self._racing = False
        monkeypatch.setattr(gold_worker, "commit_replacement", self)

    def __call__(self, table, files, delete_filter, properties):
        name = table.name()[-1]
        if not self._racing:
            self.calls.append(name)
        if name == self._table_name and not self.raced and not self._racing:
            self._racing = True
            try:
                self._race()  # its commits go straight through (re-entrant call below)
            finally:
                self._racing, self.raced = False, True
        return self._real(table, files, delete_filter, properties)


def other_writer(lake):
    return open_lake(Settings(home=lake.settings.home))  # its own catalog connection


def test_a_mart_commit_that_loses_a_race_is_planned_again(lake, monkeypatch):
    build_and_refresh(lake, review_rows())
    rows = with_review(review_rows(), 3, review_overall=1.0)
    tables = silver_set(rows)
    write_silver(lake, tables)
    flat = build_review_flat_table(lake, now=NOW)
    race = RaceBeforeFirstCommit(monkeypatch, "top_beers_by_rating",
                                 lambda: refresh_gold(other_writer(lake), marts=["top_beers_by_rating"], now=NOW))

    result = refresh_gold(lake, now=NOW)

    assert race.raced
    # Our first commit to the mart lost; planned again, the mart already reflected review_flat's
    # current snapshot (the other writer built it), so there was nothing left to do.
    assert race.calls.count("top_beers_by_rating") == 1
    mart = result.marts["top_beers_by_rating"]
    assert mart.status == "up-to-date" and mart.source_snapshot_id == flat.snapshot_id
    assert all(m.status == "refreshed" for name, m in result.marts.items() if name != "top_beers_by_rating")
    assert_gold_matches(lake, tables)  # every month once: no rows from both writers
    # The losing attempt's month files were deleted, not left behind as orphans.
    identifier = table_identifier(lake.settings, "gold", "top_beers_by_rating")
    assert data_files_on_disk(lake, identifier) == data_files_referenced(lake, identifier)


def test_a_review_flat_build_that_loses_a_race_diffs_against_the_winner(lake, monkeypatch):
    tables, first, _ = build_and_refresh(lake, review_rows())
    rows = with_review(review_rows(), 3, review_overall=1.0)
    tables = silver_set(rows)
    write_silver(lake, tables)
    theirs = {}
    race = RaceBeforeFirstCommit(monkeypatch, "review_flat",
                                 lambda: theirs.setdefault("flat", build_review_flat_table(other_writer(lake), now=NOW)))

    ours = build_review_flat_table(lake, now=NOW)

    assert race.raced and theirs["flat"].written and theirs["flat"].rows_changed == 1
    # Retried against the winner's version, which already holds these rows: nothing to write.
    assert not ours.written and ours.rows_changed == 0
    assert ours.snapshot_id == theirs["flat"].snapshot_id
    identifier = table_identifier(lake.settings, "silver", "review_flat")
    assert data_files_on_disk(lake, identifier) == data_files_referenced(lake, identifier)
    # Gold still learns which month changed: from the winner's snapshot record.
    result = refresh_gold(lake, now=NOW)
    assert {m.status for m in result.marts.values()} == {"refreshed"}
    assert all(m.affected_months == [(2010, 1)] for m in result.marts.values())  # review 3's month
    assert_gold_matches(lake, tables)
