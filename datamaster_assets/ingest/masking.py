"""PII masking per contract tag, and a detector for untagged columns that look like PII.

* ``email``: the local part becomes the keyed HMAC-SHA-256 (hex) of the local part; the domain is
  kept, so analysts can still group by provider. A value without '@' is masked as a whole.
* ``identifier``: the keyed HMAC-SHA-256 (hex) of the value.

The key is ``Settings.pii_key`` (DATAMASTER_PII_KEY). The same value and key always give the same
mask (joins across files still work); without the key the mask cannot be reversed or rebuilt from a
list of candidate values, which an unsalted hash would allow.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from datamaster_assets.contracts import Contract


def hmac_hex(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def mask_email_value(key: bytes, value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not local:
        return hmac_hex(key, value)
    return f"{hmac_hex(key, local)}@{domain}"


def mask_identifier_value(key: bytes, value: str) -> str:
    return hmac_hex(key, value)


_MASKERS = {"email": mask_email_value, "identifier": mask_identifier_value}


def mask_array(values: pa.Array | pa.ChunkedArray, tag: str, key: bytes) -> pa.Array:
    """Mask every non-null value; each distinct value is hashed once."""
    masker = _MASKERS[tag]
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pa.types.is_string(values.type):
        values = values.cast(pa.string())
    encoded = pc.dictionary_encode(values)
    masked = pa.array([masker(key, v) for v in encoded.dictionary.to_pylist()], pa.string())
    return pc.take(masked, encoded.indices)


def mask_table(table: pa.Table, contract: Contract, key: bytes) -> pa.Table:
    for name, tag in contract.pii_columns.items():
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), mask_array(table.column(i), tag, key))
    return table


# Whole-value patterns: a column is flagged when a good share of its sampled values match.
PII_PATTERNS: dict[str, str] = {
    "email address": r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$",
    "phone number": r"^((\+\d{1,3}[ .-]?)?(\(\d{2,4}\)|\d{2,4})[ .-]\d{3,4}[ .-]?\d{3,4}|\+[1-9]\d{7,14})$",
    "US social security number": r"^\d{3}-\d{2}-\d{4}$",
    "payment card number": r"^\d{4}[ -]\d{4}[ -]\d{4}[ -]\d{1,7}$",
    "IPv4 address": r"^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}$",
}
PII_NOTE = "possible PII"  # how the detector's notes start (the bronze asset logs them as warnings)
# A card number without separators is only told apart from any long id by its Luhn check digit.
BARE_CARD_NUMBER = r"^\d{13,19}$"


def passes_luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


@dataclass
class PiiDetector:
    """Samples the untagged string columns of each batch and reports columns that look like PII.
    It only reports; masking is decided by the contract."""

    contract: Contract
    sample_per_batch: int = 500
    min_share: float = 0.3
    sampled: dict[str, int] = field(default_factory=dict)
    hits: dict[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.columns = [c.name for c in self.contract.columns if c.type == "string" and not c.pii]

    def observe(self, table: pa.Table) -> None:
        for name in self.columns:
            values = pc.drop_null(table.column(name).slice(0, self.sample_per_batch * 2))[: self.sample_per_batch]
            if len(values) == 0:
                continue
            values = pc.utf8_trim_whitespace(values)
            self.sampled[name] = self.sampled.get(name, 0) + len(values)
            counts = {label: pc.sum(pc.match_substring_regex(values, pattern)).as_py() or 0
                      for label, pattern in PII_PATTERNS.items()}
            bare = values.filter(pc.match_substring_regex(values, BARE_CARD_NUMBER)).to_pylist()
            counts["payment card number"] += sum(passes_luhn(v) for v in bare)
            for label, count in counts.items():
                if count:
                    self.hits[(name, label)] = self.hits.get((name, label), 0) + count

    def findings(self) -> list[str]:
        out = []
        for (name, label), count in sorted(self.hits.items()):
            sampled = self.sampled[name]
            if count / sampled >= self.min_share:
                out.append(
                    f"{PII_NOTE}: untagged column {name!r} looks like {label} "
                    f"({count} of {sampled} sampled values); tag it in the contract if so"
                )
        return out
