from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pytest

from datamaster_assets.contracts import (
    BRONZE_LINEAGE,
    ContractError,
    get_contract,
    load_contracts,
    parse_contract,
)


def test_the_four_source_tables_are_described():
    contracts = load_contracts()
    assert list(contracts) == ["beer", "brewery", "profile", "review"]
    assert get_contract("review").primary_key == ("review_id",)
    assert get_contract("brewery").primary_key == ("brewery_id",)


def test_review_contract_types_rules_and_references():
    review = get_contract("review")
    assert review.arrow_schema.field("review_time").type == pa.timestamp("us", tz="UTC")
    assert review.column("review_time").source_format == "epoch_seconds"
    assert review.column("review_overall").min == 0 and review.column("review_overall").max == 5
    assert review.column("review_time").min == datetime(1995, 1, 1, tzinfo=timezone.utc)
    assert review.references == {
        "brewery_id": ("brewery", "brewery_id"),
        "beer_id": ("beer", "beer_id"),
        "profile_id": ("profile", "profile_id"),
    }
    assert review.formats == ("csv", "json")


def test_pii_tags_and_allowed_values():
    profile = get_contract("profile")
    assert profile.pii_columns == {"email": "email"}
    assert "CA" in profile.column("state").allowed and "XX" not in profile.column("state").allowed


def test_bronze_schema_is_contract_columns_then_lineage():
    beer = get_contract("beer")
    schema = beer.bronze_schema
    assert schema.names == beer.column_names + BRONZE_LINEAGE.names
    # a CDC delete may carry only the key, so contract columns are nullable in bronze
    assert all(schema.field(c).nullable for c in beer.column_names)


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"name": "t", "primary_key": ["id"]}, "missing required key 'columns'"),
        ({"name": "t", "primary_key": ["id"], "columns": [{"name": "id", "type": "uuid"}]}, "type 'uuid'"),
        ({"name": "t", "primary_key": ["x"], "columns": [{"name": "id", "type": "int64", "nullable": False}]},
         "primary key column 'x'"),
        ({"name": "t", "primary_key": ["id"], "columns": [{"name": "id", "type": "int64"}]}, "must be nullable: false"),
        ({"name": "t", "primary_key": ["id"], "columns": [{"name": "id", "type": "int64", "nullable": False},
                                                         {"name": "e", "type": "string", "pii": "ssn"}]}, "pii 'ssn'"),
        ({"name": "t", "primary_key": ["id"], "columns": [{"name": "_id", "type": "int64", "nullable": False}]},
         "reserved for lineage"),
        ({"name": "t", "primary_key": ["id"], "colums": []}, "missing required key 'columns'"),
    ],
)
def test_malformed_contracts_are_rejected_with_the_reason(doc, message):
    with pytest.raises(ContractError, match=message):
        parse_contract(doc, origin="t.yaml")
