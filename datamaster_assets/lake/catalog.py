"""The Iceberg catalog of one environment, and the one way the project reads Iceberg tables.

Local: pyiceberg ``SqlCatalog`` (SQLite at ``settings.catalog_path``) with its warehouse, a
plain local path, at ``settings.warehouse_dir``. AWS: the Glue Data Catalog with an ``s3://`` warehouse
in the lake bucket. Credentials are never read from settings: the Glue/S3 clients use the
standard AWS chain, plus the ``AWS_*`` environment variables passed explicitly (and
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_GLUE`` / ``AWS_ENDPOINT_URL_S3`` so the whole path
runs against a moto server in tests).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError
from pyiceberg.io.pyarrow import pyarrow_to_schema
from pyiceberg.schema import Schema
from pyiceberg.table.name_mapping import MappedField, NameMapping
from pyiceberg.types import DoubleType, FloatType, IntegerType, LongType, NestedField

from datamaster_assets.settings import Settings

if TYPE_CHECKING:
    from pyiceberg.table import Table

    from datamaster_assets.lake.factory import Lake

LAYERS = ("bronze", "silver", "gold")


def _sqlite_uri(path: Path) -> str:
    """SQLAlchemy URL of a SQLite file, escaped: a "?" or "%" in the path would otherwise be read
    as a query string or an escape (a home "/tmp/q?r" opened the catalog at "/tmp/q")."""
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(path)).render_as_string()


def catalog_properties(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The pyiceberg catalog properties for the environment (pure: settings + environment in)."""
    env = os.environ if environ is None else environ
    if settings.env != "aws":
        settings.warehouse_dir.mkdir(parents=True, exist_ok=True)
        return {
            "type": "sql",
            "uri": _sqlite_uri(settings.catalog_path.absolute()),
            # A plain path, not as_uri(): pyiceberg does not decode a file:// URI, so a home with a
            # space or "=" (percent-encoded) would put every table in a sibling ".../a%20b" directory.
            "warehouse": str(settings.warehouse_dir.absolute()),
        }
    props = {
        "type": "glue",
        "warehouse": f"s3://{settings.lake_bucket}/warehouse",
        "glue.region": settings.aws_region,
        "s3.region": settings.aws_region,
    }
    credentials = {
        "AWS_ACCESS_KEY_ID": "access-key-id",
        "AWS_SECRET_ACCESS_KEY": "secret-access-key",
        "AWS_SESSION_TOKEN": "session-token",
        "AWS_PROFILE": "profile-name",
    }
    for var, suffix in credentials.items():
        if env.get(var):
            props[f"glue.{suffix}"] = env[var]
            props[f"s3.{suffix}"] = env[var]
    for service in ("glue", "s3"):
        endpoint = env.get(f"AWS_ENDPOINT_URL_{service.upper()}") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            props[f"{service}.endpoint"] = endpoint
    return props


def build_catalog(settings: Settings, environ: Mapping[str, str] | None = None) -> Catalog:
    """SqlCatalog locally, GlueCatalog on AWS (see module docstring)."""
    props = catalog_properties(settings, environ)
    kind = props.pop("type")
    if kind == "sql":
        from pyiceberg.catalog.sql import SqlCatalog

        settings.catalog_path.parent.mkdir(parents=True, exist_ok=True)
        return SqlCatalog("datamaster", **props)
    from pyiceberg.catalog.glue import GlueCatalog

    return GlueCatalog("datamaster", **props)


def namespace_for(settings: Settings, layer: str) -> str:
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}; expected one of {LAYERS}")
    return settings.namespaces[layer]


# Properties of every Iceberg table the lake creates (Arrow and Spark paths alike). pyiceberg
# writes a new metadata.json per commit and keeps them all unless told otherwise; these keep the
# newest 20 (snapshots themselves are expired by lake maintenance, docs/maintenance.md).
LAKE_TABLE_PROPERTIES: dict[str, str] = {
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
}


def table_identifier(settings: Settings, layer: str, name: str) -> str:
    """'<namespace>.<name>', e.g. 'silver.review' locally and 'dm_silver.review' on Glue."""
    return f"{namespace_for(settings, layer)}.{name}"


def ensure_namespace(catalog: Catalog, namespace: str) -> None:
    """Create the namespace if it does not exist (safe when two workers race to create it)."""
    try:
        catalog.create_namespace(namespace)
    except NamespaceAlreadyExistsError:
        pass


def iceberg_schema(arrow_schema: pa.Schema, identifier: tuple[str, ...] = ()) -> Schema:
    """An Iceberg schema with field ids 1..n in column order; ``identifier`` columns become the
    identifier fields (they must be non-nullable in ``arrow_schema``)."""
    mapping = NameMapping([MappedField(field_id=i, names=[f.name]) for i, f in enumerate(arrow_schema, start=1)])
    schema = pyarrow_to_schema(arrow_schema, name_mapping=mapping)
    ids = [schema.find_field(name).field_id for name in identifier]
    return Schema(*schema.fields, schema_id=0, identifier_field_ids=ids)


def load_or_create_table(
    catalog: Catalog,
    identifier: str,
    arrow_schema: pa.Schema,
    key: tuple[str, ...] = (),
    properties: Mapping[str, str] | None = None,
) -> "Table":
    """Load the table, creating it (and its namespace) unpartitioned on first use."""
    try:
        return catalog.load_table(identifier)
    except NoSuchTableError:
        pass
    ensure_namespace(catalog, identifier.rsplit(".", 1)[0])
    return catalog.create_table_if_not_exists(
        identifier, schema=iceberg_schema(arrow_schema, key), properties={**LAKE_TABLE_PROPERTIES, **(properties or {})}
    )


class SchemaConflict(ValueError):
    """A table's columns cannot become the wanted ones by adding columns or widening types."""


# Iceberg's type promotions that keep every stored value (the spec's allowed widenings).
_PROMOTIONS = {(IntegerType(), LongType()), (FloatType(), DoubleType())}


def schema_changes(current: Schema, wanted: Schema) -> tuple[list[NestedField], list[NestedField]]:
    """What storing ``wanted`` rows in a table of schema ``current`` takes: the columns to add and
    the columns to widen (int to long, float to double). Raises SchemaConflict naming every column
    that neither can reconcile: a column the table has and ``wanted`` lacks (dropping it would lose
    its data), another type change, or a new required column (stored rows have no value for it)."""
    problems: list[str] = []
    wanted_names = {f.name for f in wanted.fields}
    problems += [f"column {f.name!r} is in the table but not wanted (dropping it would lose its data)"
                 for f in current.fields if f.name not in wanted_names]
    stored = {f.name: f for f in current.fields}
    added, widened = [], []
    for field in wanted.fields:
        have = stored.get(field.name)
        if have is None and field.required:
            problems.append(f"new column {field.name!r} is required, but the stored rows have no value for it")
        elif have is None:
            added.append(field)
        elif have.field_type == field.field_type:
            continue
        elif (have.field_type, field.field_type) in _PROMOTIONS:
            widened.append(field)
        else:
            problems.append(f"column {field.name!r} is {have.field_type} in the table, {field.field_type} wanted")
    if problems:
        raise SchemaConflict("; ".join(problems))
    return added, widened


def evolve_schema(table: "Table", identifier: str, arrow_schema: pa.Schema, key: tuple[str, ...] = ()) -> list[str]:
    """Bring the table's schema to ``arrow_schema`` by adding columns (nullable: stored rows read
    them as null) and widening types, in one schema commit; returns the columns changed (none: no
    commit). Raises SchemaConflict (with the table's name) for anything else, and
    CommitFailedException when another writer changed the table meanwhile."""
    try:
        added, widened = schema_changes(table.schema(), iceberg_schema(arrow_schema, key))
    except SchemaConflict as exc:
        raise SchemaConflict(f"{identifier}: {exc}") from None
    if not added and not widened:
        return []
    with table.update_schema() as update:
        for field in added:
            update.add_column(field.name, field.field_type, required=False)
        for field in widened:
            update.update_column(field.name, field_type=field.field_type)
    return [f.name for f in added + widened]


# pyiceberg logs this warning for every data file read with ``dictionary_columns``, although
# dictionaries are what the caller asked for.
_DICTIONARY_NOTICE = "Iceberg does not have a dictionary type"


def _not_dictionary_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_DICTIONARY_NOTICE)


def scan_to_arrow(table: "Table", *, dictionary_columns: tuple[str, ...] = ()) -> pa.Table:
    """The current snapshot of ``table`` as one Arrow table. ``dictionary_columns`` (strings with few
    distinct values) come back as Arrow dictionaries, as the Parquet files store them, instead of
    one string per row."""
    if not dictionary_columns:
        return table.scan().to_arrow()
    notices = logging.getLogger("pyiceberg.io.pyarrow")
    notices.addFilter(_not_dictionary_notice)
    try:
        return table.scan().to_arrow(dictionary_columns=dictionary_columns)
    finally:
        notices.removeFilter(_not_dictionary_notice)


def read_iceberg_table(catalog: Catalog, identifier: str) -> pa.Table | None:
    """The current snapshot of a table as one Arrow table; None if the table does not exist."""
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        return None
    return scan_to_arrow(table)


def read_table(lake: "Lake", layer: str, name: str) -> pa.Table | None:
    """Read ``<layer>.<name>`` of the lake's catalog (None if it has not been created yet).

    Silver tables include soft-deleted rows: filter on ``deleted_at IS NULL`` for live rows.
    """
    return read_iceberg_table(lake.catalog, table_identifier(lake.settings, layer, name))
