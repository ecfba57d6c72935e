"""The seed data: determinism, shapes, referential integrity and the promised change scenario."""

from __future__ import annotations

import gzip
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from datamaster_assets.lake.factory import Lake
from datamaster_assets.lake.objectstore import LocalObjectStore
from datamaster_assets.seed import (
    DEFAULT_DEMO_REVIEWS,
    FULL_SIZE_REVIEWS,
    REVIEW_COLUMNS,
    generate_reviews,
    seed_raw,
    write_review_change_file,
    write_reviews_csv,
    write_reviews_jsonl,
)
from datamaster_assets.seed.cdc import Change, encode_change, encode_numeric_change_lines, iso_utc, to_epoch_us
from datamaster_assets.seed.dims import load_dim
from datamaster_assets.seed.scenario import build_change_scenario
from datamaster_assets.settings import Settings

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
METADATA_FIELDS = ["timestamp", "record-type", "operation", "partition-key-type", "schema-name", "table-name", "transaction-id"]


def _lake(root: Path) -> Lake:
    store = LocalObjectStore(root / "objects")
    return Lake(settings=Settings(home=root), raw=store, store=store, ledger=None)  # type: ignore[arg-type]


def _lines(store: LocalObjectStore, key: str) -> list[dict]:
    with gzip.open(store.local_path(key), "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("seed")
    lake = _lake(root)
    summary = seed_raw(lake, reviews=5_000, changes=True, seed=7, now=NOW)
    return lake, summary


# ---- determinism ----------------------------------------------------------------------


def _landed_bytes(root: Path, seed: int, now: datetime = NOW) -> dict[str, bytes]:
    lake = _lake(root)
    summary = seed_raw(lake, reviews=2_000, changes=True, seed=seed, now=now)
    return {f.key: lake.raw.read_bytes(f.key) for f in summary.files}


def test_same_seed_lands_byte_identical_files_and_another_seed_differs(tmp_path: Path) -> None:
    first = _landed_bytes(tmp_path / "a", 1)
    again = _landed_bytes(tmp_path / "b", 1)
    assert first == again
    # another seed: other reviews and another change scenario (landing the dims again adds nothing)
    base1, base2 = generate_reviews(2_000, 1), generate_reviews(2_000, 2)
    assert not base1.equals(base2)
    changes1 = build_change_scenario(base1, 1, NOW).tables["review"].expected
    changes2 = build_change_scenario(base2, 2, NOW).tables["review"].expected
    assert set(changes1) != set(changes2)


def test_benchmark_writers_are_deterministic(tmp_path: Path) -> None:
    for name, write in [
        ("r.csv.gz", lambda p, s: write_reviews_csv(p, 3_000, s)),
        ("r.jsonl.gz", lambda p, s: write_reviews_jsonl(p, 3_000, s)),
        ("c.jsonl.gz", lambda p, s: write_review_change_file(p, base_reviews=3_000, updates=200, inserts=100, seed=s,
                                                            change_ts=NOW, envelope=True)),
    ]:
        write(tmp_path / f"1-{name}", 5)
        write(tmp_path / f"2-{name}", 5)
        write(tmp_path / f"3-{name}", 6)
        assert (tmp_path / f"1-{name}").read_bytes() == (tmp_path / f"2-{name}").read_bytes()
        assert (tmp_path / f"1-{name}").read_bytes() != (tmp_path / f"3-{name}").read_bytes()


# ---- initial load -----------------------------------------------------------------------


def test_summary_counts_keys_and_landing_order(seeded) -> None:
    lake, summary = seeded
    tables = summary.tables
    assert tables["brewery"].records == 5_840 + 6
    assert sum(f.records for f in summary.files if f.table == "beer" and f.kind == "initial-load") == 66_055
    assert sum(f.records for f in summary.files if f.table == "profile" and f.kind == "initial-load") == 33_388
    assert sum(f.records for f in summary.files if f.kind == "extract") == 5_000
    assert len([f for f in summary.files if f.table == "beer" and f.kind == "initial-load"]) == 3
    assert len([f for f in summary.files if f.kind == "extract"]) == 2
    for f in summary.files:
        info = lake.raw.head(f.key)
        assert info is not None and info.size == f.bytes
        assert f.key.startswith(f"raw/{f.table}/") and f.key.endswith(f.name)
    for table in tables:
        keys = [f.key for f in summary.files if f.table == table]
        assert keys == sorted(keys), f"{table}: keys must sort in landing order"
    landed = [f.landed_at for f in summary.files]
    assert landed == sorted(landed) and len(set(landed)) == len(landed)
    assert tables["review"].bytes == sum(f.bytes for f in summary.files if f.table == "review")
    text = summary.describe()
    assert "review" in text and "5,048 live, 12 soft-deleted" in text


def test_dimension_files_use_the_dms_envelope_with_control_lines(seeded) -> None:
    lake, summary = seeded
    for f in (f for f in summary.files if f.kind == "initial-load"):
        lines = _lines(lake.raw, f.key)
        control = [line for line in lines if line["metadata"]["record-type"] == "control"]
        data = [line for line in lines if line["metadata"]["record-type"] == "data"]
        assert len(control) == f.control_records and len(data) == f.records
        for line in data:
            assert list(line) == ["data", "metadata"]
            meta = line["metadata"]
            assert list(meta) == METADATA_FIELDS
            assert meta["operation"] == "load" and meta["partition-key-type"] == "primary-key"
            assert meta["schema-name"] == "dm" and meta["table-name"] == f.table
            assert isinstance(meta["transaction-id"], int)
            assert datetime.strptime(meta["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ") < NOW.replace(tzinfo=None)
            assert all(v is not None for v in line["data"].values())
        for line in control:
            assert line["metadata"]["operation"] == "create-table" and "table-def" in line["control"]
    first_of_each = {f.table: f for f in reversed([f for f in summary.files if f.kind == "initial-load"])}
    assert all(f.control_records == 1 for f in first_of_each.values())


def test_dms_omits_null_columns_and_keeps_real_values(seeded) -> None:
    lake, summary = seeded
    beers = [line["data"] for f in summary.files if f.table == "beer" and f.kind == "initial-load" for line in _lines(lake.raw, f.key)
             if line["metadata"]["record-type"] == "data"]
    without_abv = [d for d in beers if "beer_abv" not in d]
    assert len(without_abv) == 17_043
    by_id = {d["beer_id"]: d for d in beers}
    assert by_id[5] == {"beer_id": 5, "brewery_id": 3, "beer_name": "Amber", "beer_style": "Vienna Lager", "beer_abv": 4.5}


def test_reviews_reference_real_dims_and_stay_in_range() -> None:
    reviews = generate_reviews(20_000, 42)
    assert reviews.column_names == list(REVIEW_COLUMNS)
    beer = load_dim("beer")
    beer_brewery = dict(zip(beer.column("beer_id").to_pylist(), beer.column("brewery_id").to_pylist()))
    profiles = set(load_dim("profile").column("profile_id").to_pylist())
    pairs = zip(reviews.column("beer_id").to_pylist(), reviews.column("brewery_id").to_pylist())
    assert all(beer_brewery[b] == br for b, br in pairs)
    assert set(reviews.column("profile_id").to_pylist()) <= profiles
    assert reviews.column("review_id").to_pylist() == list(range(1, 20_001))
    for name in REVIEW_COLUMNS[4:9]:
        scores = reviews.column(name).to_numpy()
        assert scores.min() >= 0.0 and scores.max() <= 5.0 and np.all(scores * 2 == np.rint(scores * 2))
    overall = reviews.column("review_overall").to_numpy()
    assert 3.5 <= overall.mean() <= 4.2 and np.mean((overall >= 3.0) & (overall <= 4.5)) > 0.7
    times = reviews.column("review_time").to_numpy()
    assert times.min() >= int(datetime(1998, 1, 1, tzinfo=timezone.utc).timestamp())
    assert times.max() < int(datetime(2012, 2, 1, tzinfo=timezone.utc).timestamp())
    assert np.mean(times >= datetime(2006, 1, 1, tzinfo=timezone.utc).timestamp()) > 0.6  # skewed to later years


def test_csv_extract_has_the_source_header_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "r.csv.gz"
    assert write_reviews_csv(path, 1_000, 3) == 1_000
    with gzip.open(path, "rt") as fh:
        header, first = fh.readline().strip(), fh.readline().strip()
    assert header == ",".join(REVIEW_COLUMNS)
    assert first.split(",")[4].endswith((".0", ".5"))
    read = pacsv.read_csv(path)
    assert read.equals(generate_reviews(1_000, 3).cast(read.schema))


def test_demo_size_gives_beer_months_at_and_just_under_25_reviews() -> None:
    reviews = generate_reviews(DEFAULT_DEMO_REVIEWS, 42)
    con = duckdb.connect()
    con.register("r", reviews)
    busiest = con.sql(
        """with m as (select beer_id, review_time // 1 as t, strftime(to_timestamp(review_time) at time zone 'UTC', '%Y-%m') ym from r),
                months as (select ym, count(*) n from m group by ym order by n desc limit 3),
                beer_month as (select ym, beer_id, count(*) c from m group by all)
           select ym, count(*) filter (where c >= 25), count(*) filter (where c between 20 and 24)
           from beer_month join months using (ym) group by ym"""
    ).fetchall()
    assert len(busiest) == 3
    assert all(ge25 >= 3 for _, ge25, _ in busiest), busiest
    assert sum(near for _, _, near in busiest) >= 3, busiest


# ---- JSON encoders agree --------------------------------------------------------------------


@pytest.mark.parametrize("envelope", [True, False])
def test_vectorised_and_python_encoders_write_identical_lines(envelope: bool) -> None:
    rows = generate_reviews(500, 9)
    start = to_epoch_us(datetime(2011, 12, 31, 23, 59, 59, 999_990, tzinfo=timezone.utc))
    ts = start + np.arange(500, dtype=np.int64) * 7
    ops = np.array(["insert", "update", "delete", "load"] * 125, dtype=object)
    txn = np.arange(500) // 25 + 10
    fast = encode_numeric_change_lines("review", rows, ops, ts, txn, envelope=envelope).to_pylist()
    slow = [encode_change(Change("review", op, row, int(t), int(x)), envelope=envelope)
            for op, row, t, x in zip(ops, rows.to_pylist(), ts, txn)]
    assert fast == slow
    assert json.loads(fast[-1])["timestamp" if not envelope else "metadata"]  # valid JSON
    assert iso_utc(datetime(2012, 1, 1, tzinfo=timezone.utc)) == "2012-01-01T00:00:00.000000Z"


def test_review_change_file_has_updates_of_existing_and_new_inserts(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    n = write_review_change_file(path, base_reviews=2_000, updates=300, inserts=200, seed=4, change_ts=NOW, envelope=False)
    lines = [json.loads(x) for x in gzip.open(path, "rt")]
    assert n == len(lines) == 500
    updates = [x for x in lines if x["operation"] == "update"]
    inserts = [x for x in lines if x["operation"] == "insert"]
    assert len(updates) == 300 and len({x["review_id"] for x in updates}) == 300
    assert all(1 <= x["review_id"] <= 2_000 for x in updates)
    assert sorted(x["review_id"] for x in inserts) == list(range(2_001, 2_201))
    base = {r["review_id"]: r for r in generate_reviews(2_000, 4).to_pylist()}
    for x in updates:
        before = base[x["review_id"]]
        assert x["beer_id"] == before["beer_id"] and x["review_overall"] != before["review_overall"]
    assert lines[0]["timestamp"] == "2024-05-01T12:00:00.000000Z"
    stamps = [x["timestamp"] for x in lines]
    assert stamps == sorted(stamps)
    assert set(lines[0]) == set(REVIEW_COLUMNS) | {"operation", "timestamp", "transaction-id"}


def test_reviews_jsonl_holds_the_csv_rows(tmp_path: Path) -> None:
    write_reviews_jsonl(tmp_path / "r.jsonl.gz", 800, 11, envelope=True, operation="insert")
    lines = [json.loads(x) for x in gzip.open(tmp_path / "r.jsonl.gz", "rt")]
    assert [x["data"] for x in lines] == generate_reviews(800, 11).to_pylist()
    assert {x["metadata"]["operation"] for x in lines} == {"insert"}
    with pytest.raises(ValueError, match="operation"):
        write_reviews_jsonl(tmp_path / "x.jsonl.gz", 10, 1, operation="delete")


# ---- the change scenario ----------------------------------------------------------------------


def _changes_by_file(lake: Lake, summary) -> dict[str, list[dict]]:
    return {f.key: _lines(lake.raw, f.key) for f in summary.changes.files}


def _flat(line: dict) -> tuple[dict, str, str]:
    if "data" in line:
        return line["data"], line["metadata"]["operation"], line["metadata"]["timestamp"]
    row = {k: v for k, v in line.items() if k not in ("operation", "timestamp", "transaction-id")}
    return row, line["operation"], line["timestamp"]


def test_scenario_files_land_after_the_initial_load_in_both_shapes(seeded) -> None:
    lake, summary = seeded
    initial_last = max(f.landed_at for f in summary.files if f.kind in ("initial-load", "extract"))
    change_files = [f for f in summary.files if f.kind in ("changes", "duplicate", "out-of-order")]
    assert change_files and min(f.landed_at for f in change_files) > initial_last
    lines = _changes_by_file(lake, summary)
    shapes = {"envelope" if "metadata" in line else "flat" for key, ls in lines.items() if "/review/" in key for line in ls}
    assert shapes == {"envelope", "flat"}
    for key, ls in lines.items():
        for line in ls:
            if "metadata" in line and line["metadata"]["record-type"] == "data":
                assert list(line["metadata"]) == METADATA_FIELDS
            elif "metadata" not in line:
                assert list(line)[-3:] == ["operation", "timestamp", "transaction-id"]
    ops = {_flat(l)[1] for ls in lines.values() for l in ls if l.get("metadata", {}).get("record-type") != "control"}
    assert ops == {"insert", "update", "delete", "load"}
    controls = [l for ls in lines.values() for l in ls if l.get("metadata", {}).get("record-type") == "control"]
    assert len(controls) == 1 and controls[0]["metadata"]["table-name"] == "review"
    # every change is newer than the initial load landed
    stamps = [_flat(l)[2] for ls in lines.values() for l in ls if "control" not in l]
    assert min(stamps) > initial_last.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_duplicate_file_repeats_bytes_and_out_of_order_file_is_older(seeded) -> None:
    lake, summary = seeded
    scenario = summary.changes
    ((dup, original),) = scenario.duplicates.items()
    assert dup != original and dup > original
    assert lake.raw.read_bytes(dup) == lake.raw.read_bytes(original)
    (late,) = scenario.out_of_order
    review_files = [f for f in scenario.files if f.table == "review"]
    assert review_files[-1].key == late
    previous = review_files[-2]
    assert review_files[-1].last_change_ts < previous.first_change_ts
    late_stamps = [_flat(l)[2] for l in _lines(lake.raw, late)]
    prev_stamps = [_flat(l)[2] for l in _lines(lake.raw, previous.key)]
    assert max(late_stamps) < min(prev_stamps)


def _replay(lake: Lake, summary, table: str, key_column: str) -> dict[int, tuple[str, dict, str]]:
    """Latest change per key read back from the landed files (independent of the scenario objects)."""
    last: dict[int, tuple[str, dict, str]] = {}
    for f in summary.changes.files:
        if f.table != table:
            continue
        for line in _lines(lake.raw, f.key):
            if line.get("metadata", {}).get("record-type") == "control":
                continue
            row, op, ts = _flat(line)
            key = row[key_column]
            if key not in last or ts > last[key][2]:
                last[key] = (op, row, ts)
    return last


@pytest.mark.parametrize("table,key_column", [("review", "review_id"), ("beer", "beer_id"), ("brewery", "brewery_id"), ("profile", "profile_id")])
def test_expected_state_matches_the_landed_changes(seeded, table: str, key_column: str) -> None:
    lake, summary = seeded
    scenario = summary.changes.tables[table]
    replayed = _replay(lake, summary, table, key_column)
    assert set(replayed) == set(scenario.expected)
    for key, (op, row, ts) in replayed.items():
        expected = scenario.expected[key]
        assert expected.deleted == (op == "delete")
        assert {k: v for k, v in expected.values.items() if v is not None} == row
        assert expected.change_ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ") == ts
    live = {k for k, e in scenario.expected.items() if not e.deleted}
    assert set(scenario.updated) | set(scenario.revived) | set(scenario.updated_after_delete) | set(scenario.inserted) == live
    assert set(scenario.deleted) == {k for k, e in scenario.expected.items() if e.deleted}
    assert scenario.rows == scenario.base_rows + len(scenario.new_keys)
    assert scenario.live_rows == scenario.rows - len(scenario.deleted)


def test_review_scenario_has_every_kind_of_change(seeded) -> None:
    lake, summary = seeded
    s = summary.changes.tables["review"]
    n = 5_000
    assert (len(s.updated), len(s.deleted), len(s.revived), len(s.updated_after_delete)) == (48, 12, 4, 3)
    assert len(s.inserted) == 55 and all(k > n for k in s.inserted)
    assert (s.rows, s.live_rows, s.deleted_rows) == (5_060, 5_048, 12)
    history: dict[int, list[str]] = {}
    for f in summary.changes.files:
        if f.table == "review" and f.kind != "duplicate":
            for c in sorted(f.changes, key=lambda c: c.timestamp_us):
                history.setdefault(c.row["review_id"], []).append((c.timestamp_us, c.operation))
    ordered = {k: [op for _, op in sorted(v)] for k, v in history.items()}
    assert all(ordered[k][0] == "delete" and ordered[k][-1] == "insert" for k in s.revived)
    assert all(ordered[k] == ["delete", "update"] for k in s.updated_after_delete)
    assert all(ordered[k] == ["load", "insert"] for k in s.load_then_insert)
    loaded = [r for f in summary.changes.files for c in f.changes if c.operation == "load" for r in [c.row]]
    for k in s.load_then_insert:
        load_row = next(r for r in loaded if r["review_id"] == k)
        assert s.expected[k].values != load_row and not s.expected[k].deleted
    late = next(f for f in summary.changes.files if f.kind == "out-of-order")
    late_keys = {c.row["review_id"] for c in late.changes}
    assert late_keys == set(s.out_of_order_applied) | set(s.out_of_order_ignored)
    for k in s.out_of_order_ignored:
        assert s.expected[k].change_ts > late.last_change_ts and not s.expected[k].deleted
    for k in s.out_of_order_applied:
        assert s.expected[k].change_ts <= late.last_change_ts


def test_dimension_scenario_deletes_only_unreferenced_rows(seeded) -> None:
    lake, summary = seeded
    tables = summary.changes.tables
    beer, profile, brewery = tables["beer"], tables["profile"], tables["brewery"]
    assert (len(beer.updated), len(beer.deleted), len(beer.revived), len(beer.updated_after_delete), len(beer.inserted)) == (4, 1, 1, 1, 2)
    assert (len(profile.updated), len(profile.deleted), len(profile.inserted)) == (3, 2, 1)
    assert (len(brewery.updated), len(brewery.deleted), len(brewery.inserted)) == (3, 1, 1)
    assert (beer.rows, beer.live_rows) == (66_057, 66_056)
    assert (profile.rows, profile.live_rows) == (33_389, 33_387)
    assert (brewery.rows, brewery.live_rows) == (5_842, 5_841)
    reviews = pa.concat_tables(
        [pacsv.read_csv(lake.raw.local_path(f.key)) for f in summary.files if f.kind == "extract"]
    )
    review_rows = [c.row for f in summary.changes.files if f.table == "review" for c in f.changes]
    used_beers = set(reviews.column("beer_id").to_pylist()) | {r["beer_id"] for r in review_rows}
    used_profiles = set(reviews.column("profile_id").to_pylist()) | {r["profile_id"] for r in review_rows}
    touched_beers = set(beer.deleted) | set(beer.revived) | set(beer.updated_after_delete)
    assert not touched_beers & used_beers
    assert not set(profile.deleted) & used_profiles
    new_beer_breweries = {beer.expected[k].values["brewery_id"] for k in beer.inserted}
    assert new_beer_breweries & set(brewery.inserted)  # a new beer of the new brewery
    assert not set(brewery.deleted) & {r["brewery_id"] for r in load_dim("beer").to_pylist()}


def test_seed_rejects_bad_arguments(tmp_path: Path) -> None:
    lake = _lake(tmp_path)
    with pytest.raises(ValueError, match="time zone"):
        seed_raw(lake, reviews=10, now=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="at least 100"):
        seed_raw(lake, reviews=50, changes=True, now=NOW)
    with pytest.raises(ValueError, match=">= 0"):
        seed_raw(lake, reviews=-1, now=NOW)


@pytest.mark.slow
def test_full_size_reviews_are_generated_and_written_in_seconds(tmp_path: Path) -> None:
    started = time.perf_counter()
    rows = write_reviews_csv(tmp_path / "full.csv.gz", FULL_SIZE_REVIEWS, 42)
    elapsed = time.perf_counter() - started
    assert rows == FULL_SIZE_REVIEWS
    assert elapsed < 30, f"1.59 M reviews took {elapsed:.1f} s"
    (count,) = duckdb.sql(f"select count(*), max(review_id) from read_csv('{tmp_path / 'full.csv.gz'}')").fetchall()
    assert count == (FULL_SIZE_REVIEWS, FULL_SIZE_REVIEWS)


@pytest.mark.slow
def test_change_scenario_still_finds_unreviewed_dims_at_full_size() -> None:
    scenario = build_change_scenario(generate_reviews(FULL_SIZE_REVIEWS, 42), 42, NOW)
    assert len(scenario.tables["profile"].deleted) == 2 and len(scenario.tables["beer"].deleted) == 1
