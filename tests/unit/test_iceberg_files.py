"""Where data files are cut (pure), for partitioned and unpartitioned tables."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa
import pytest
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.types import IntegerType, NestedField, StringType

from datamaster_assets.lake import iceberg_files
from datamaster_assets.lake.iceberg_files import row_ranges

SCHEMA = Schema(NestedField(1, "year", IntegerType()), NestedField(2, "month", IntegerType()),
                NestedField(3, "name", StringType()))
BY_MONTH = PartitionSpec(PartitionField(1, 1000, IdentityTransform(), "year"),
                         PartitionField(2, 1001, IdentityTransform(), "month"))


def metadata(spec: PartitionSpec) -> SimpleNamespace:
    return SimpleNamespace(spec=lambda: spec, schema=lambda: SCHEMA)


def rows(years: list, months: list) -> pa.Table:
    return pa.table({"year": pa.array(years, pa.int32()), "month": pa.array(months, pa.int32()),
                     "name": ["x"] * len(years)})


def test_one_range_per_partition():
    table = rows([2010, 2010, 2010, 2011, 2011, None, None], [1, 1, 2, 2, 2, 3, 3])
    assert row_ranges(metadata(BY_MONTH), table) == [(0, 2), (2, 3), (3, 5), (5, 7)]


def test_partitions_must_be_grouped():
    with pytest.raises(ValueError, match="grouped by partition"):
        row_ranges(metadata(BY_MONTH), rows([2010, 2011, 2010], [1, 1, 1]))


def test_only_identity_partitions():
    by_day = PartitionSpec(PartitionField(1, 1000, DayTransform(), "day"))
    with pytest.raises(ValueError, match="identity"):
        row_ranges(metadata(by_day), rows([2010], [1]))


def test_unpartitioned_tables_get_one_file_per_core_once_big(monkeypatch):
    monkeypatch.setattr(iceberg_files.os, "cpu_count", lambda: 2)
    small = rows([2010] * (iceberg_files.ROWS_PER_FILE_MIN - 1), [1] * (iceberg_files.ROWS_PER_FILE_MIN - 1))
    assert row_ranges(metadata(UNPARTITIONED_PARTITION_SPEC), small) == [(0, small.num_rows)]
    monkeypatch.setattr(iceberg_files, "ROWS_PER_FILE_MIN", 10)
    assert row_ranges(metadata(UNPARTITIONED_PARTITION_SPEC), rows([1] * 25, [1] * 25)) == [(0, 12), (12, 25)]
