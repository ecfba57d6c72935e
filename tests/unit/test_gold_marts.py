"""review_flat and the gold marts against an independent DuckDB computation over the silver inputs."""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from datamaster_assets.transform.gold import (
    GOLD_INPUT_COLUMNS,
    MARTS,
    check_ratings_within_bounds,
    check_totals_reconcile,
    compute_marts,
    gold_checks,
    preview_markdown,
)
from datamaster_assets.transform.review_flat import (
    REVIEW_FLAT_BUILT_SCHEMA,
    REVIEW_FLAT_SCHEMA,
    ReviewFlatInputError,
    build_review_flat,
    diff_review_flat,
)
from tests.unit.gold_data import silver_set, silver_table

# Written from the mart definitions in DESIGN section 6, straight from the silver tables (no review_flat).
LIVE = """
    WITH r AS (SELECT * FROM review WHERE deleted_at IS NULL),
    j AS (
        SELECT year(r.review_time) AS y, month(r.review_time) AS m, r.review_overall, r.beer_id, r.brewery_id,
               r.profile_id, b.beer_name, b.beer_style, br.brewery_name, p.profile_name, p.state
        FROM r
        LEFT JOIN beer b ON b.beer_id = r.beer_id AND b.deleted_at IS NULL
        LEFT JOIN brewery br ON br.brewery_id = r.brewery_id AND br.deleted_at IS NULL
        LEFT JOIN profile p ON p.profile_id = r.profile_id AND p.deleted_at IS NULL
    )
"""
EXPECTED = {
    "top_beers_by_rating": LIVE + """SELECT y, m, beer_id, min(beer_name), min(beer_style), avg(review_overall), count(*)
        FROM j GROUP BY y, m, beer_id HAVING count(*) >= 25""",
    "top_breweries_by_rating": LIVE + """SELECT y, m, brewery_id, min(brewery_name), avg(review_overall), count(*)
        FROM j GROUP BY y, m, brewery_id""",
    "top_styles_by_popularity": LIVE + "SELECT y, m, beer_style, count(*), avg(review_overall) FROM j GROUP BY y, m, beer_style",
    "state_by_review_volume": LIVE + "SELECT y, m, state, count(*) FROM j GROUP BY y, m, state",
    "top_drinkers": LIVE + """SELECT y, m, profile_id, min(profile_name), min(state), count(*), avg(review_overall)
        FROM j GROUP BY y, m, profile_id""",
}


def expected_rows(tables: dict[str, pa.Table], mart: str) -> list[tuple]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name, table in tables.items():
        con.register(name, table)
    return sorted(con.execute(EXPECTED[mart]).fetchall(), key=repr)


def rounded(rows: list[tuple]) -> list[tuple]:
    return sorted((tuple(round(v, 9) if isinstance(v, float) else v for v in row) for row in rows), key=repr)


def flat_of(tables: dict[str, pa.Table]) -> pa.Table:
    return build_review_flat(tables["review"], tables["beer"], tables["brewery"], tables["profile"])


@pytest.fixture
def tables() -> dict[str, pa.Table]:
    return silver_set()


def test_review_flat_excludes_deleted_reviews_and_nulls_deleted_dimensions(tables):
    flat = flat_of(tables)
    assert flat.schema == REVIEW_FLAT_BUILT_SCHEMA
    assert flat.cast(REVIEW_FLAT_SCHEMA).schema == REVIEW_FLAT_SCHEMA  # the labels are dictionaries of strings
    live = tables["review"].filter(pc.is_null(tables["review"]["deleted_at"]))
    assert sorted(flat["review_id"].to_pylist()) == sorted(live["review_id"].to_pylist())
    rows = {r["review_id"]: r for r in flat.to_pylist()}
    deleted_beer = [r for r in rows.values() if r["beer_id"] == 4]
    assert len(deleted_beer) == 3
    assert all(r["beer_name"] is None and r["beer_style"] is None and r["brewery_name"] == "Alpha Brewing"
               for r in deleted_beer)
    assert all(r["brewery_name"] is None and r["beer_name"] == "Mystery" for r in rows.values() if r["beer_id"] == 3)
    by_deleted_profile = [r for r in rows.values() if r["profile_id"] == 4]
    assert len(by_deleted_profile) == 1 and by_deleted_profile[0]["profile_name"] is None
    assert by_deleted_profile[0]["state"] is None
    assert {(r["review_year"], r["review_month"]) for r in rows.values()} == {(2010, 1), (2010, 2), (2011, 7)}


def test_review_flat_month_is_the_utc_month():
    from datetime import datetime, timedelta, timezone

    late = datetime(2010, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # 2010-02-01 04:30 UTC
    review = silver_table("review", [{"review_id": 1, "brewery_id": 1, "beer_id": 1, "profile_id": 1,
                                      "review_overall": 4.0, "review_time": late}])
    tables = silver_set()
    flat = build_review_flat(review, tables["beer"], tables["brewery"], tables["profile"])
    assert (flat["review_year"][0].as_py(), flat["review_month"][0].as_py()) == (2010, 2)


@pytest.mark.parametrize("mart", sorted(MARTS))
def test_mart_matches_independent_sql(tables, mart):
    got = compute_marts(flat_of(tables))[mart]
    assert got.schema == MARTS[mart].schema
    assert got.column_names[:2] == ["review_year", "review_month"]
    assert rounded([tuple(r.values()) for r in got.to_pylist()]) == rounded(expected_rows(tables, mart))


def test_top_beers_threshold_and_deleted_reviews(tables):
    beers = compute_marts(flat_of(tables))["top_beers_by_rating"].to_pylist()
    # 2010-01: beer 1 at exactly 25 live reviews is in (its deleted 26th review is not counted), beer 2 at 24 is out.
    assert [(b["review_year"], b["review_month"], b["beer_id"], b["total_reviews"]) for b in beers] == [
        (2010, 1, 1, 25),
        (2010, 2, 1, 26),
    ]


def test_null_groups_and_deleted_dimensions_are_counted(tables):
    marts = compute_marts(flat_of(tables))
    styles = {(r["review_year"], r["review_month"], r["beer_style"]): r["total_reviews"]
              for r in marts["top_styles_by_popularity"].to_pylist()}
    # beer 4 deleted (3 reviews) and beer 3 without style (2): one null-style group of 5.
    assert styles[(2010, 1, None)] == 5
    states = {(r["review_year"], r["review_month"], r["state"]): r["total_reviews"]
              for r in marts["state_by_review_volume"].to_pylist()}
    assert sum(v for (y, m, _), v in states.items() if (y, m) == (2010, 2)) == 26
    assert states[(2010, 2, None)] > 0  # profile 3 (no state) and deleted profile 4


def test_compute_marts_for_selected_months_only(tables):
    flat = flat_of(tables)
    some = compute_marts(flat, {(2010, 2), (1999, 1)})
    every = compute_marts(flat)
    for name, table in some.items():
        months = set(zip(table["review_year"].to_pylist(), table["review_month"].to_pylist()))
        assert months == {(2010, 2)}
        expected = every[name].filter(pc.equal(every[name]["review_month"], 2))
        assert table.to_pylist() == expected.to_pylist()


def test_checks_pass_on_computed_marts_and_catch_tampering(tables):
    flat = flat_of(tables)
    marts = compute_marts(flat)
    for name, spec in MARTS.items():
        assert check_totals_reconcile(spec, marts[name], flat).passed, name
        assert check_ratings_within_bounds(spec, marts[name]).passed, name
    spec = MARTS["top_drinkers"]
    drinkers = marts["top_drinkers"]
    tampered = drinkers.set_column(
        drinkers.schema.get_field_index("total_reviews"), spec.schema.field("total_reviews"),
        pc.add(drinkers["total_reviews"], pa.scalar(1, pa.int64())),
    )
    outcome = check_totals_reconcile(spec, tampered, flat)
    assert not outcome.passed
    assert {(f["review_year"], f["review_month"]) for f in outcome.failures} == {(2010, 1), (2010, 2), (2011, 7)}
    bad_avg = drinkers.set_column(drinkers.schema.get_field_index("avg_rating"), spec.schema.field("avg_rating"),
                                  pa.array([5.5] + [3.0] * (drinkers.num_rows - 1)))
    assert check_ratings_within_bounds(spec, bad_avg).failure_count == 1
    # top_beers reconciles only against beers with >= 25 reviews: counting beer 2's 24 would fail.
    beers = marts["top_beers_by_rating"]
    assert check_totals_reconcile(MARTS["top_beers_by_rating"], beers, flat).passed


def test_preview_shows_busiest_month(tables):
    marts = compute_marts(flat_of(tables))
    text = preview_markdown(MARTS["top_beers_by_rating"], marts["top_beers_by_rating"])
    assert "busiest month 2010-02" in text
    assert "| 1 | Alpha IPA | IPA |" in text


def test_missing_input_column_is_named():
    tables = silver_set()
    with pytest.raises(ReviewFlatInputError, match=r"silver.beer lacks column\(s\) \['beer_style'\]"):
        build_review_flat(tables["review"], tables["beer"].drop_columns(["beer_style"]),
                          tables["brewery"], tables["profile"])


def test_duplicate_live_dimension_keys_are_refused():
    tables = silver_set()
    doubled = pa.concat_tables([tables["beer"], tables["beer"].slice(0, 1)])
    first = tables["beer"]["beer_id"][0].as_py()
    with pytest.raises(ReviewFlatInputError, match=rf"silver.beer has duplicate live keys \(beer_id \[{first}\]\)"):
        build_review_flat(tables["review"], doubled, tables["brewery"], tables["profile"])
    # A deleted row next to the live one is history, not a duplicate.
    deleted_at = doubled.schema.field("deleted_at").type
    history = doubled.set_column(doubled.schema.get_field_index("deleted_at"), "deleted_at", pa.concat_arrays(
        [tables["beer"]["deleted_at"].combine_chunks(), pa.array([datetime(2024, 2, 1, tzinfo=timezone.utc)], deleted_at)]))
    assert build_review_flat(tables["review"], history, tables["brewery"], tables["profile"]).equals(flat_of(tables))


# ---- diff_review_flat -----------------------------------------------------------------------------


def _rows_with(rows: list[dict], review_id: int, **changes) -> list[dict]:
    return [dict(r, **changes) if r["review_id"] == review_id else r for r in rows]


def test_diff_score_change_affects_only_its_month():
    from tests.unit.gold_data import review_rows

    rows = review_rows()
    old = flat_of(silver_set(rows))
    new = flat_of(silver_set(_rows_with(rows, 60, review_overall=0.0)))
    diff = diff_review_flat(old, new, GOLD_INPUT_COLUMNS)
    assert (diff.added, diff.removed, diff.changed) == (0, 0, 1)
    assert diff.gold_months == {(2010, 2)}


def test_diff_moved_review_affects_both_months_and_removal_its_month():
    from tests.unit.gold_data import review_rows, utc

    rows = review_rows()
    old = flat_of(silver_set(rows))
    moved = flat_of(silver_set(_rows_with(rows, 60, review_time=utc(2009, 12))))
    assert diff_review_flat(old, moved, GOLD_INPUT_COLUMNS).gold_months == {(2010, 2), (2009, 12)}
    deleted = flat_of(silver_set(_rows_with(rows, len(rows), deleted=True)))
    diff = diff_review_flat(old, deleted, GOLD_INPUT_COLUMNS)
    assert (diff.removed, diff.gold_months) == (1, {(2011, 7)})


def test_diff_non_gold_column_changes_flat_but_no_month():
    from tests.unit.gold_data import review_rows

    rows = review_rows()
    old = flat_of(silver_set(rows))
    new = flat_of(silver_set(_rows_with(rows, 60, review_aroma=1.0)))
    diff = diff_review_flat(old, new, GOLD_INPUT_COLUMNS)
    assert diff.changed == 1 and diff.any_change
    assert diff.gold_months == frozenset()
    assert not diff_review_flat(old, old, GOLD_INPUT_COLUMNS).any_change
    assert diff_review_flat(None, old, GOLD_INPUT_COLUMNS).gold_months == {(2010, 1), (2010, 2), (2011, 7)}


def test_gold_checks_by_name(tables):
    flat = flat_of(tables)
    beers = compute_marts(flat)["top_beers_by_rating"]
    outcomes = gold_checks("top_beers_by_rating", beers, flat)
    assert set(outcomes) == {"totals_reconcile", "averages_within_0_5"}
    assert all(o.passed and o.metadata["failures"] == 0 for o in outcomes.values())
    missing = gold_checks("top_beers_by_rating", None, flat)
    assert not missing["totals_reconcile"].passed
    assert "gold.top_beers_by_rating does not exist" in missing["totals_reconcile"].description
