"""Table contracts: one YAML file per source table in this folder.

A contract is the only place that knows a table's columns, types, keys, PII tags, rules and
partitioning. Adding a table is adding a YAML file here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any

import pyarrow as pa
import yaml

ARROW_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "int32": pa.int32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
PII_TAGS = ("email", "identifier")
SOURCE_FORMATS = ("epoch_seconds", "iso8601")
FILE_FORMATS = ("csv", "json")
RULE_KEYS = ("min", "max", "allowed")

# Lineage columns on every bronze row (DESIGN section 5), in this order after the contract columns.
BRONZE_LINEAGE = pa.schema(
    [
        pa.field("_source_key", pa.string(), nullable=False),
        pa.field("_control_id", pa.string(), nullable=False),
        pa.field("_ingested_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("_op", pa.string(), nullable=False),  # insert | update | delete | load
        pa.field("_change_ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("_change_seq", pa.int64(), nullable=False),
        pa.field("_source_line", pa.int64(), nullable=False),
    ]
)
CDC_OPERATIONS = ("insert", "update", "delete", "load")


# libyaml's safe loader when available: the pure-Python one costs ~50 ms in every worker process.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ContractError(ValueError):
    """A contract file is malformed."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True
    pii: str | None = None
    rules: dict[str, Any] = field(default_factory=dict)
    references: str | None = None  # "<table>.<column>"
    source_format: str | None = None  # how a timestamp is written in the raw files

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.type]

    @property
    def min(self) -> Any:
        return self._bound("min")

    @property
    def max(self) -> Any:
        return self._bound("max")

    @property
    def allowed(self) -> list[Any] | None:
        return self.rules.get("allowed")

    def _bound(self, key: str) -> Any:
        value = self.rules.get(key)
        if value is not None and self.type == "timestamp" and isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        return value


@dataclass(frozen=True)
class Contract:
    name: str
    primary_key: tuple[str, ...]
    columns: tuple[Column, ...]
    formats: tuple[str, ...]
    source_schema: str
    source_table: str
    description: str = ""
    partitioning: dict[str, str] = field(default_factory=dict)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r}")

    @property
    def arrow_schema(self) -> pa.Schema:
        """The typed contract columns (what bronze/silver carry before lineage/audit columns)."""
        return pa.schema([pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns])

    @property
    def bronze_schema(self) -> pa.Schema:
        """Contract columns, all nullable (a CDC delete may carry only the key), then lineage."""
        cols = [pa.field(c.name, c.arrow_type, nullable=True) for c in self.columns]
        return pa.schema(cols + list(BRONZE_LINEAGE))

    @property
    def pii_columns(self) -> dict[str, str]:
        return {c.name: c.pii for c in self.columns if c.pii}

    @property
    def references(self) -> dict[str, tuple[str, str]]:
        """column -> (table, column) it references."""
        out = {}
        for c in self.columns:
            if c.references:
                table, col = c.references.split(".", 1)
                out[c.name] = (table, col)
        return out


def parse_contract(doc: dict[str, Any], origin: str = "<memory>") -> Contract:
    """Validate a contract document (the parsed YAML) and build a Contract."""

    def fail(msg: str) -> ContractError:
        return ContractError(f"{origin}: {msg}")

    if not isinstance(doc, dict):
        raise fail("top level must be a mapping")
    for key in ("name", "primary_key", "columns"):
        if key not in doc:
            raise fail(f"missing required key {key!r}")
    known = {"name", "description", "source", "formats", "primary_key", "columns", "partitioning"}
    unknown = set(doc) - known
    if unknown:
        raise fail(f"unknown keys {sorted(unknown)}")

    columns: list[Column] = []
    seen: set[str] = set()
    for i, raw in enumerate(doc["columns"]):
        if not isinstance(raw, dict) or "name" not in raw or "type" not in raw:
            raise fail(f"column #{i} needs 'name' and 'type'")
        name = raw["name"]
        extra = set(raw) - {"name", "type", "nullable", "pii", "rules", "references", "source_format"}
        if extra:
            raise fail(f"column {name!r}: unknown keys {sorted(extra)}")
        if name in seen:
            raise fail(f"duplicate column {name!r}")
        seen.add(name)
        if name.startswith("_"):
            raise fail(f"column {name!r}: names starting with '_' are reserved for lineage")
        if raw["type"] not in ARROW_TYPES:
            raise fail(f"column {name!r}: type {raw['type']!r} not one of {sorted(ARROW_TYPES)}")
        pii = raw.get("pii")
        if pii is not None and pii not in PII_TAGS:
            raise fail(f"column {name!r}: pii {pii!r} not one of {PII_TAGS}")
        rules = raw.get("rules") or {}
        bad_rules = set(rules) - set(RULE_KEYS)
        if bad_rules:
            raise fail(f"column {name!r}: unknown rules {sorted(bad_rules)}")
        source_format = raw.get("source_format")
        if source_format is not None and source_format not in SOURCE_FORMATS:
            raise fail(f"column {name!r}: source_format {source_format!r} not one of {SOURCE_FORMATS}")
        ref = raw.get("references")
        if ref is not None and (not isinstance(ref, str) or ref.count(".") != 1):
            raise fail(f"column {name!r}: references must look like 'table.column'")
        columns.append(
            Column(
                name=name,
                type=raw["type"],
                nullable=bool(raw.get("nullable", True)),
                pii=pii,
                rules=dict(rules),
                references=ref,
                source_format=source_format,
            )
        )

    pk = tuple(doc["primary_key"])
    for k in pk:
        if k not in seen:
            raise fail(f"primary key column {k!r} is not a column")
        if next(c for c in columns if c.name == k).nullable:
            raise fail(f"primary key column {k!r} must be nullable: false")
    formats = tuple(doc.get("formats") or FILE_FORMATS)
    bad_formats = set(formats) - set(FILE_FORMATS)
    if bad_formats:
        raise fail(f"unknown formats {sorted(bad_formats)}")
    source = doc.get("source") or {}
    return Contract(
        name=doc["name"],
        primary_key=pk,
        columns=tuple(columns),
        formats=formats,
        source_schema=source.get("schema", "dm"),
        source_table=source.get("table", doc["name"]),
        description=(doc.get("description") or "").strip(),
        partitioning=dict(doc.get("partitioning") or {}),
    )


@lru_cache(maxsize=None)
def load_contracts() -> dict[str, Contract]:
    """All contracts shipped in this package, by table name (sorted)."""
    out: dict[str, Contract] = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            contract = parse_contract(yaml.load(entry.read_text(), Loader=_YAML_LOADER), origin=entry.name)
            if contract.name != entry.name[: -len(".yaml")]:
                raise ContractError(f"{entry.name}: name {contract.name!r} must match the file name")
            out[contract.name] = contract
    for contract in out.values():
        for col, (table, ref_col) in contract.references.items():
            if table not in out or ref_col not in out[table].column_names:
                raise ContractError(f"{contract.name}.{col} references unknown {table}.{ref_col}")
    return out


def get_contract(table: str) -> Contract:
    contracts = load_contracts()
    if table not in contracts:
        raise KeyError(f"no contract for table {table!r}; known: {sorted(contracts)}")
    return contracts[table]


def table_names() -> list[str]:
    return list(load_contracts())
