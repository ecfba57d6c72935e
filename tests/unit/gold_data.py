"""Small silver-shaped Arrow tables for the review_flat / gold / query tests."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa

from datamaster_assets.contracts import get_contract

TS = pa.timestamp("us", tz="UTC")
AUDIT = datetime(2024, 1, 1, tzinfo=timezone.utc)
DELETED = datetime(2024, 2, 1, tzinfo=timezone.utc)


def utc(year: int, month: int, day: int = 15, hour: int = 12) -> datetime:
    return datetime(year, month, day, hour, tzinfo=timezone.utc)


def silver_table(name: str, rows: list[dict]) -> pa.Table:
    """Silver-shaped: contract columns + created_at/updated_at/deleted_at + lineage columns.
    A row may carry ``deleted: True`` to be soft-deleted."""
    contract = get_contract(name)
    fields = list(contract.arrow_schema) + [
        pa.field("created_at", TS), pa.field("updated_at", TS), pa.field("deleted_at", TS),
        pa.field("_change_ts", TS), pa.field("_change_seq", pa.int64()), pa.field("_source_key", pa.string()),
    ]
    out = []
    for seq, row in enumerate(rows):
        row = dict(row)
        deleted = row.pop("deleted", False)
        full = {c: row.get(c) for c in contract.column_names}
        full.update(created_at=AUDIT, updated_at=DELETED if deleted else AUDIT, deleted_at=DELETED if deleted else None,
                    _change_ts=AUDIT, _change_seq=seq, _source_key=f"bronze/{name}/test.parquet")
        out.append(full)
    return pa.Table.from_pylist(out, schema=pa.schema(fields))


def dimensions() -> dict[str, pa.Table]:
    """Two breweries (2 deleted), four beers (beer 4 deleted, beer 3 has no style), four profiles
    (profile 3 has no state, profile 4 deleted)."""
    return {
        "brewery": silver_table("brewery", [
            {"brewery_id": 1, "brewery_name": "Alpha Brewing"},
            {"brewery_id": 2, "brewery_name": "Gone Brewing", "deleted": True},
        ]),
        "beer": silver_table("beer", [
            {"beer_id": 1, "brewery_id": 1, "beer_name": "Alpha IPA", "beer_style": "IPA", "beer_abv": 6.5},
            {"beer_id": 2, "brewery_id": 1, "beer_name": "Alpha Stout", "beer_style": "Stout", "beer_abv": 8.0},
            {"beer_id": 3, "brewery_id": 2, "beer_name": "Mystery", "beer_style": None, "beer_abv": None},
            {"beer_id": 4, "brewery_id": 1, "beer_name": "Retired Lager", "beer_style": "Lager", "beer_abv": 4.8,
             "deleted": True},
        ]),
        "profile": silver_table("profile", [
            {"profile_id": 1, "profile_name": "ann", "email": "a@example.org", "state": "CA"},
            {"profile_id": 2, "profile_name": "bob", "email": "b@example.org", "state": "OR"},
            {"profile_id": 3, "profile_name": "cy", "email": None, "state": None},
            {"profile_id": 4, "profile_name": "dee", "email": "d@example.org", "state": "NY", "deleted": True},
        ]),
    }


def review_rows() -> list[dict]:
    """Reviews over three months:

    - 2010-01: beer 1 has exactly 25 live reviews (+1 deleted), beer 2 has 24 (just under the
      threshold), beer 4 (deleted beer) 3, beer 3 (deleted brewery, no style) 2;
    - 2010-02: beer 1 has 26 reviews, one of them by the deleted profile 4;
    - 2011-07: a single review (the only one of its month).
    Scores vary so averages are not trivially equal.
    """
    rows: list[dict] = []

    def add(beer_id: int, brewery_id: int, when: datetime, count: int, deleted: bool = False, profile=None):
        for i in range(count):
            rid = len(rows) + 1
            rows.append({
                "review_id": rid, "brewery_id": brewery_id, "beer_id": beer_id,
                "profile_id": profile or (i % 3) + 1,
                "review_overall": float((rid % 9) / 2 + 0.5), "review_aroma": 3.0, "review_appearance": 3.5,
                "review_palate": 4.0, "review_taste": float(rid % 5),
                "review_time": when.replace(day=1 + i % 28, hour=i % 24), "deleted": deleted,
            })

    add(1, 1, utc(2010, 1), 25)
    add(1, 1, utc(2010, 1), 1, deleted=True)
    add(2, 1, utc(2010, 1), 24)
    add(4, 1, utc(2010, 1), 3)
    add(3, 2, utc(2010, 1), 2)
    add(1, 1, utc(2010, 2), 25)
    add(1, 1, utc(2010, 2), 1, profile=4)
    add(2, 1, utc(2011, 7), 1)
    return rows


def silver_set(reviews: list[dict] | None = None) -> dict[str, pa.Table]:
    tables = dimensions()
    tables["review"] = silver_table("review", review_rows() if reviews is None else reviews)
    return tables


def write_silver(lake, tables: dict[str, pa.Table]) -> None:
    """Store the given silver tables in the lake's Iceberg catalog (replacing their contents)."""
    from datamaster_assets.lake.catalog import load_or_create_table, table_identifier

    for name, table in tables.items():
        iceberg = load_or_create_table(lake.catalog, table_identifier(lake.settings, "silver", name), table.schema)
        iceberg.overwrite(table)
