"""Silver data checks (DESIGN section 4), pure: Arrow tables in, a CheckOutcome out.

Every check looks at live rows only (``deleted_at`` is null): soft-deleted rows and tombstones
keep whatever the source last said about them. Metadata values are plain ints/strings so they can
go straight into a Dagster ``AssetCheckResult``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.compute as pc

from datamaster_assets.contracts import Column, Contract
from datamaster_assets.transform.silver import live_rows

SAMPLE_SIZE = 5


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _sample(values: pa.Array | pa.ChunkedArray) -> str:
    return ", ".join(str(v) for v in values.slice(0, SAMPLE_SIZE).to_pylist())


def check_unique_live_keys(silver: pa.Table, contract: Contract) -> CheckOutcome:
    """No primary key appears on two live rows."""
    key = list(contract.primary_key)
    live = live_rows(silver)
    counts = live.group_by(key).aggregate([([], "count_all")])
    dupes = counts.filter(pc.greater(counts["count_all"], 1))
    extra_rows = int(pc.sum(dupes["count_all"]).as_py() or 0) - dupes.num_rows
    meta = {"live_rows": live.num_rows, "duplicate_keys": dupes.num_rows, "extra_rows": extra_rows}
    if dupes.num_rows:
        meta["sample_duplicate_keys"] = _sample(dupes[key[0]])
        return CheckOutcome(False, f"{dupes.num_rows} key(s) of {contract.name} appear on more than one live row", meta)
    return CheckOutcome(True, f"all {live.num_rows} live keys of {contract.name} are unique", meta)


def check_required_not_null(silver: pa.Table, contract: Contract) -> CheckOutcome:
    """Columns the contract declares ``nullable: false`` hold a value on every live row."""
    live = live_rows(silver)
    nulls = {c.name: live[c.name].null_count for c in contract.columns if not c.nullable}
    bad = {name: n for name, n in nulls.items() if n}
    meta: dict[str, Any] = {"live_rows": live.num_rows, "null_values": sum(bad.values())}
    meta.update({f"nulls_{name}": n for name, n in nulls.items()})
    if bad:
        listing = ", ".join(f"{name} ({n})" for name, n in bad.items())
        return CheckOutcome(False, f"required column(s) of {contract.name} null on live rows: {listing}", meta)
    return CheckOutcome(True, f"required columns of {contract.name} are set on all {live.num_rows} live rows", meta)


def _rule_violations(column: pa.ChunkedArray, col: Column) -> pa.ChunkedArray:
    """Boolean mask: value present and outside the column's min/max/allowed rules."""
    masks = []
    if col.min is not None:
        masks.append(pc.less(column, pa.scalar(col.min, column.type)))
    if col.max is not None:
        masks.append(pc.greater(column, pa.scalar(col.max, column.type)))
    if col.allowed is not None:
        masks.append(pc.invert(pc.is_in(column, value_set=pa.array(col.allowed, column.type))))
    if pa.types.is_floating(column.type):
        masks.append(pc.is_nan(column))  # NaN compares false with any bound: not "within" 0-5
    bad = masks[0]
    for m in masks[1:]:
        bad = pc.or_(bad, m)
    return pc.and_(pc.is_valid(column), pc.fill_null(bad, False))  # a missing value is not out of range


def check_values_within_rules(silver: pa.Table, contract: Contract) -> CheckOutcome:
    """Values on live rows respect the contract's rules (scores within 0-5, ids >= 1, states...)."""
    live = live_rows(silver)
    ruled = [c for c in contract.columns if c.rules]
    meta: dict[str, Any] = {"live_rows": live.num_rows, "columns_checked": len(ruled)}
    failing = []
    for col in ruled:
        mask = _rule_violations(live[col.name], col)
        n = int(pc.sum(mask).as_py() or 0)
        meta[f"out_of_rule_{col.name}"] = n
        if n:
            failing.append(f"{col.name} ({n}, e.g. {_sample(live[col.name].filter(mask))})")
    meta["violations"] = sum(meta[f"out_of_rule_{c.name}"] for c in ruled)
    if failing:
        return CheckOutcome(False, f"{contract.name} values outside their rules: " + "; ".join(failing), meta)
    return CheckOutcome(True, f"{contract.name}: all ruled values within range on {live.num_rows} live rows", meta)


def check_references_resolve(
    silver: pa.Table, contract: Contract, referenced: Mapping[str, pa.Table | None]
) -> CheckOutcome:
    """Every reference on a live row (e.g. review.beer_id) names a live row of the referenced table.

    ``referenced`` maps table name -> its silver table (None when it does not exist yet: then
    every reference to it is an orphan).
    """
    live = live_rows(silver)
    meta: dict[str, Any] = {"live_rows": live.num_rows}
    failing = []
    for col_name, (table, ref_col) in contract.references.items():
        target = referenced.get(table)
        values = live[col_name]
        if target is None:
            orphan_mask = pc.is_valid(values)
        else:
            # Any row of the target resolves, soft-deleted ones too: review_flat keeps a review whose
            # beer/brewery/profile was deleted (null labels, docs/gold.md), so a source-side delete
            # of a referenced row must not block review_flat and gold for good. Deleted targets
            # are reported in the metadata.
            known = pc.and_(pc.is_valid(values), pc.is_in(values, value_set=target[ref_col].combine_chunks()))
            orphan_mask = pc.and_(pc.is_valid(values), pc.invert(known))
            alive = pc.is_in(values, value_set=live_rows(target)[ref_col].combine_chunks())
            meta[f"deleted_targets_{col_name}"] = pc.sum(pc.and_(known, pc.invert(alive))).as_py() or 0
        orphans = values.filter(orphan_mask)
        distinct = pc.count_distinct(orphans).as_py() if len(orphans) else 0
        meta[f"orphans_{col_name}"] = len(orphans)
        meta[f"orphan_ids_{col_name}"] = distinct
        if len(orphans):
            where = f"{table} not built yet" if target is None else f"e.g. {_sample(pc.unique(orphans))}"
            failing.append(f"{col_name} -> {table}.{ref_col}: {len(orphans)} row(s), {distinct} id(s) ({where})")
    meta["orphans"] = sum(meta[f"orphans_{c}"] for c in contract.references)
    if failing:
        return CheckOutcome(False, f"{contract.name} references that do not resolve: " + "; ".join(failing), meta)
    return CheckOutcome(True, f"all references of {contract.name} resolve to live rows", meta)


def silver_table_checks(
    silver: pa.Table | None, contract: Contract, referenced: Mapping[str, pa.Table | None] | None = None
) -> dict[str, CheckOutcome]:
    """All silver checks of one table by name. A table not created yet passes vacuously (0 rows)."""
    if silver is None:
        empty = CheckOutcome(True, f"silver.{contract.name} has not been created yet (no changes applied)",
                             {"live_rows": 0})
        names = ["unique_live_keys", "required_not_null", "values_within_rules"]
        return {n: empty for n in names + (["references_resolve"] if contract.references else [])}
    out = {
        "unique_live_keys": check_unique_live_keys(silver, contract),
        "required_not_null": check_required_not_null(silver, contract),
        "values_within_rules": check_values_within_rules(silver, contract),
    }
    if contract.references:
        out["references_resolve"] = check_references_resolve(silver, contract, referenced or {})
    return out
