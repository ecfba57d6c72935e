"""Test helpers: the data files a local Iceberg table has on disk, and those its metadata refers to."""

from __future__ import annotations

from pathlib import Path


def data_files_on_disk(lake, identifier: str) -> set[str]:
    table = lake.catalog.load_table(identifier)
    return {str(p) for p in Path(table.location().removeprefix("file://"), "data").rglob("*.parquet")}


def data_files_referenced(lake, identifier: str) -> set[str]:
    """Every data file any snapshot's manifests list (deleted entries included)."""
    table = lake.catalog.load_table(identifier)
    return {entry.data_file.file_path.removeprefix("file://")
            for snapshot in table.snapshots() for manifest in snapshot.manifests(table.io)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False)}
