"""Contract rules on a typed batch, vectorised: required columns, min/max, allowed values, and
the CDC operation. Returns which rows fail and why, naming the field."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datamaster_assets.contracts import CDC_OPERATIONS, Contract


@dataclass
class RuleFailures:
    bad: np.ndarray  # bool per row
    reasons: dict[int, tuple[str, str]]  # row index -> (field, reason) for the bad rows


def _fmt(value: object) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_rules(contract: Contract, table: pa.Table, ops: pa.Array | None) -> RuleFailures:
    """``table`` holds the contract columns in bronze types; ``ops`` the CDC operation per row
    (None: every row is a full-row 'load'). A delete needs only the primary key: the rest of its
    row is the before-image, which no rule applies to (a row loaded before a rule was tightened
    must still be deletable)."""
    n = table.num_rows
    checks: list[tuple[str, pa.Array, str]] = []  # (field, failing mask, reason template)
    if ops is not None:
        checks.append(("operation", pc.invert(pc.is_in(ops, pa.array(CDC_OPERATIONS))),
                       "operation {value!s} is not one of " + "|".join(CDC_OPERATIONS)))
    for col in contract.columns:
        values = table.column(col.name)
        if not col.nullable and values.null_count:
            checks.append((col.name, pc.is_null(values), "required value is missing"))
        if col.min is not None or col.max is not None:
            # one pass for the common case where every value is in range
            low, high = pc.min_max(values).values()
            if col.min is not None and low.is_valid and low.as_py() < col.min:
                checks.append((col.name, pc.less(values, pa.scalar(col.min, values.type)),
                               f"{{value}} is below min {_fmt(col.rules['min'])}"))
            if col.max is not None and high.is_valid and high.as_py() > col.max:
                checks.append((col.name, pc.greater(values, pa.scalar(col.max, values.type)),
                               f"{{value}} is above max {_fmt(col.rules['max'])}"))
            if pa.types.is_floating(values.type):
                nan = pc.is_nan(values)
                if pc.any(nan).as_py():
                    checks.append((col.name, nan, "{value} is not a number"))
        if col.allowed is not None:
            allowed = pa.array(col.allowed, values.type)
            checks.append((col.name, pc.and_(pc.is_valid(values), pc.invert(pc.is_in(values, allowed))),
                           "{value} is not an allowed value"))

    before_image = set(contract.column_names) - set(contract.primary_key)
    not_delete = None
    bad = np.zeros(n, dtype=bool)
    masks = []
    for field_name, mask, template in checks:
        arr = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
        if arr.any() and ops is not None and field_name in before_image:
            if not_delete is None:
                not_delete = pc.fill_null(pc.not_equal(ops, "delete"), True).to_numpy(zero_copy_only=False)
            arr = arr & not_delete
        if arr.any():
            masks.append((field_name, arr, template))
            bad |= arr
    reasons: dict[int, tuple[str, str]] = {}
    if masks:
        for idx in np.flatnonzero(bad):
            parts = []
            first_field = None
            for field_name, arr, template in masks:
                if arr[idx]:
                    source = ops if field_name == "operation" else table.column(field_name)
                    value = source[int(idx)].as_py()
                    parts.append(f"{field_name}: " + template.format(value=_fmt(value)))
                    first_field = first_field or field_name
            reasons[int(idx)] = (first_field or "", "; ".join(parts))
    return RuleFailures(bad, reasons)
