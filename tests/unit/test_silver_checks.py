"""Silver data checks on small silver tables built with the real merge."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa

from datamaster_assets.contracts import get_contract
from datamaster_assets.transform.checks import (
    check_references_resolve,
    check_required_not_null,
    check_unique_live_keys,
    check_values_within_rules,
    silver_table_checks,
)
from datamaster_assets.transform.silver import merge_changes
from tests.benchmarks.silver_data import bronze_table

REVIEW = get_contract("review")
BEER = get_contract("beer")
WHEN = datetime(2010, 5, 1, tzinfo=timezone.utc)


def review(review_id, beer_id=1, overall=4.0, aroma=3.0, op="insert", t=1, review_time=WHEN):
    return {"op": op, "t": t, "review_id": review_id, "brewery_id": 1, "beer_id": beer_id, "profile_id": 1,
            "review_overall": overall, "review_aroma": aroma, "review_appearance": 3.0, "review_palate": 3.0,
            "review_taste": 3.0, "review_time": review_time}


def silver_reviews(*changes) -> pa.Table:
    return merge_changes(None, bronze_table("review", list(changes)), REVIEW).table


def silver_beers(*beer_ids, deleted=()) -> pa.Table:
    changes = [{"op": "insert", "t": 1, "beer_id": b, "brewery_id": 1, "beer_name": f"beer {b}"} for b in beer_ids]
    changes += [{"op": "delete", "t": 2, "beer_id": b} for b in deleted]
    return merge_changes(None, bronze_table("beer", changes), BEER).table


def test_clean_table_passes_every_check():
    reviews = silver_reviews(review(1), review(2, beer_id=2))
    outcomes = silver_table_checks(reviews, REVIEW, referenced={
        "beer": silver_beers(1, 2), "brewery": merge_changes(None, bronze_table("brewery", [
            {"op": "insert", "t": 1, "brewery_id": 1, "brewery_name": "b"}]), get_contract("brewery")).table,
        "profile": merge_changes(None, bronze_table("profile", [
            {"op": "insert", "t": 1, "profile_id": 1, "profile_name": "p"}]), get_contract("profile")).table,
    })
    assert sorted(outcomes) == ["references_resolve", "required_not_null", "unique_live_keys", "values_within_rules"]
    assert all(o.passed for o in outcomes.values()), {n: o.description for n, o in outcomes.items()}
    assert outcomes["unique_live_keys"].metadata["live_rows"] == 2


def test_duplicate_live_keys_fail_but_deleted_duplicates_do_not():
    table = silver_reviews(review(1), review(2))
    doubled = pa.concat_tables([table, table.slice(0, 1)])
    outcome = check_unique_live_keys(doubled, REVIEW)
    assert not outcome.passed
    assert outcome.metadata == {"live_rows": 3, "duplicate_keys": 1, "extra_rows": 1, "sample_duplicate_keys": "1"}
    deleted_copy = table.slice(0, 1).set_column(
        table.schema.get_field_index("deleted_at"), "deleted_at", pa.array([WHEN], pa.timestamp("us", tz="UTC")))
    assert check_unique_live_keys(pa.concat_tables([table, deleted_copy]), REVIEW).passed


def test_required_columns_null_on_live_rows_only():
    table = silver_reviews(review(1, overall=None), review(2, overall=None), review(3))
    outcome = check_required_not_null(table, REVIEW)
    assert not outcome.passed
    assert outcome.metadata["nulls_review_overall"] == 2 and outcome.metadata["null_values"] == 2
    assert "review_overall (2)" in outcome.description
    # Nullable aroma is not required; a deleted row with a null score does not count.
    ok = silver_reviews(review(1, aroma=None), review(2, overall=None), review(2, op="delete", t=2))
    assert check_required_not_null(ok, REVIEW).passed


def test_scores_outside_zero_to_five_are_reported():
    table = silver_reviews(review(1, overall=5.5), review(2, aroma=-1.0), review(3),
                           review(4, review_time=datetime(1990, 1, 1, tzinfo=timezone.utc)))
    outcome = check_values_within_rules(table, REVIEW)
    assert not outcome.passed
    assert outcome.metadata["out_of_rule_review_overall"] == 1
    assert outcome.metadata["out_of_rule_review_aroma"] == 1
    assert outcome.metadata["out_of_rule_review_time"] == 1
    assert outcome.metadata["violations"] == 3
    assert "review_overall (1, e.g. 5.5)" in outcome.description
    # NaN compares false with both bounds, so it used to pass as "within 0-5"
    nan = check_values_within_rules(silver_reviews(review(1, overall=float("nan")), review(2)), REVIEW)
    assert not nan.passed and nan.metadata["out_of_rule_review_overall"] == 1


def test_allowed_values_rule():
    profile = get_contract("profile")
    table = merge_changes(None, bronze_table("profile", [
        {"op": "insert", "t": 1, "profile_id": 1, "profile_name": "a", "state": "CA"},
        {"op": "insert", "t": 1, "profile_id": 2, "profile_name": "b", "state": "XX"},
        {"op": "insert", "t": 1, "profile_id": 3, "profile_name": "c", "state": None},
    ]), profile).table
    outcome = check_values_within_rules(table, profile)
    assert not outcome.passed and outcome.metadata["out_of_rule_state"] == 1


def test_references_count_orphans_against_known_ids_and_report_deleted_targets():
    reviews = silver_reviews(review(1, beer_id=1), review(2, beer_id=2), review(3, beer_id=3), review(4, beer_id=3))
    beers = silver_beers(1, 2, deleted=[2])  # beer 2 soft-deleted, beer 3 never existed
    refs = {"beer": beers, "brewery": None, "profile": None}
    outcome = check_references_resolve(reviews, REVIEW, refs)
    assert not outcome.passed
    # beer 2 is soft-deleted: it resolves (review_flat keeps the review with null beer columns)
    assert outcome.metadata["orphans_beer_id"] == 2 and outcome.metadata["orphan_ids_beer_id"] == 1
    assert outcome.metadata["deleted_targets_beer_id"] == 1
    assert outcome.metadata["orphans_brewery_id"] == 4  # brewery table not built yet
    assert "brewery not built yet" in outcome.description


def test_missing_table_passes_vacuously():
    outcomes = silver_table_checks(None, REVIEW)
    assert all(o.passed for o in outcomes.values()) and "references_resolve" in outcomes


def test_references_resolve_waits_for_the_referenced_tables_in_the_same_run(dm_home):
    # the multiprocess executor (daemon, UI) would otherwise start it as soon as this table is merged
    from dagster._core.execution.api import create_execution_plan

    from datamaster_assets.definitions import build_definitions

    defs = build_definitions()
    for job in ("silver_job", "medallion_job"):
        deps = create_execution_plan(defs.resolve_job_def(job)).get_all_step_deps()
        assert {"silver__beer", "silver__brewery", "silver__profile"} <= deps["silver_review_checks"], job
        assert "silver__brewery" in deps["silver_beer_checks"], job
