"""Where data files are cut (pure), for partitioned and unpartitioned tables, and how they are encoded."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC, PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform, IdentityTransform
from pyiceberg.typedef import Record
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


def _encodings(path: str) -> set[str]:
    meta = pq.ParquetFile(path.removeprefix("file://")).metadata
    return {enc for rg in range(meta.num_row_groups) for col in range(meta.num_columns)
            for enc in meta.row_group(rg).column(col).encodings}


def test_small_files_skip_dictionary_encoding_and_big_ones_keep_it(tmp_path, monkeypatch):
    from pyiceberg.catalog.sql import SqlCatalog

    from datamaster_assets.lake.catalog import iceberg_schema
    from datamaster_assets.lake.iceberg_files import commit_replacement, write_data_files
    from pyiceberg.expressions import AlwaysTrue

    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}")
    catalog.create_namespace("g")
    data = rows([2010] * 30 + [2011] * 5, [1] * 35)
    table = catalog.create_table("g.m", schema=iceberg_schema(data.schema),
                                 partition_spec=PartitionSpec(PartitionField(1, 1000, IdentityTransform(), "year")))
    monkeypatch.setattr(iceberg_files, "DICTIONARY_ROWS_MIN", 10)
    files = write_data_files(table.metadata, table.io, data)
    commit_replacement(table, files, AlwaysTrue(), {})
    by_rows = {f.record_count: _encodings(f.file_path) for f in files}
    assert set(by_rows) == {30, 5}
    assert any("DICTIONARY" in e for e in by_rows[30])
    assert not any("DICTIONARY" in e for e in by_rows[5])
    assert table.refresh().scan().to_arrow().num_rows == 35


def test_big_files_choose_dictionary_or_delta_per_column(tmp_path, monkeypatch):
    from datetime import datetime, timedelta, timezone

    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.expressions import AlwaysTrue

    from datamaster_assets.lake.catalog import iceberg_schema
    from datamaster_assets.lake.iceberg_files import commit_replacement, write_data_files

    n = 2000
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    data = pa.table({
        "review_id": pa.array(range(10_000, 10_000 + n), pa.int64()),  # unique: delta
        "rating": pa.array([float(i % 5) for i in range(n)], pa.float64()),  # 5 values: dictionary
        "beer_id": pa.array([i % 7 for i in range(n)], pa.int64()),  # few values: dictionary, not delta
        "name": pa.array([f"beer {i % 3}" for i in range(n)]),  # dictionary
        "seen_at": pa.array([start + timedelta(seconds=i) for i in range(n)], pa.timestamp("us", tz="UTC")),  # delta
    })
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}")
    catalog.create_namespace("s")
    table = catalog.create_table("s.r", schema=iceberg_schema(data.schema))
    monkeypatch.setattr(iceberg_files, "DICTIONARY_ROWS_MIN", 100)
    files = write_data_files(table.metadata, table.io, data)
    commit_replacement(table, files, AlwaysTrue(), {})

    meta = pq.ParquetFile(files[0].file_path.removeprefix("file://")).metadata
    encodings = {meta.row_group(0).column(i).path_in_schema: set(meta.row_group(0).column(i).encodings)
                 for i in range(meta.num_columns)}
    for name in ("review_id", "seen_at"):
        assert "DELTA_BINARY_PACKED" in encodings[name] and not any("DICTIONARY" in e for e in encodings[name]), name
    for name in ("rating", "beer_id", "name"):
        assert any("DICTIONARY" in e for e in encodings[name]) and "DELTA_BINARY_PACKED" not in encodings[name], name
    stored = table.refresh().scan().to_arrow()
    assert stored.sort_by("review_id").equals(data.cast(stored.schema))


@pytest.mark.parametrize("values", [[2010, 1], [None, 12], [-1, 0]])
def test_partition_path_matches_pyiceberg(values):
    types = [f.field_type for f in BY_MONTH.partition_type(SCHEMA).fields]
    expected = BY_MONTH.partition_to_path(Record(*values), SCHEMA)
    assert iceberg_files._partition_path(BY_MONTH, types, values) == expected


def test_partition_path_quotes_names_and_values_like_pyiceberg():
    by_name = PartitionSpec(PartitionField(3, 1000, IdentityTransform(), "brewer name"))
    types = [f.field_type for f in by_name.partition_type(SCHEMA).fields]
    value = "Müller & Söhne/Bräu=1"
    assert iceberg_files._partition_path(by_name, types, [value]) == by_name.partition_to_path(Record(value), SCHEMA)
    assert "/" not in iceberg_files._partition_path(by_name, types, [value])


def test_dictionary_columns_are_written_as_dictionaries_and_read_back_as_strings(tmp_path, monkeypatch):
    import warnings

    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.expressions import AlwaysTrue

    from datamaster_assets.lake.catalog import iceberg_schema
    from datamaster_assets.lake.iceberg_files import commit_replacement, write_data_files

    n = 2000
    names = pa.array([f"brewer {i}" for i in range(n)])  # as many distinct values as rows
    data = pa.table({
        "id": pa.array(range(n), pa.int64()),
        "name": pa.DictionaryArray.from_arrays(pa.array([*range(n)][::-1], pa.int32()), names),
        "style": pa.DictionaryArray.from_arrays(pa.array([i % 3 if i % 7 else None for i in range(n)], pa.int32()),
                                                pa.array(["IPA", "Stout", "Lager"])),
    })
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}")
    catalog.create_namespace("s")
    table = catalog.create_table("s.r", schema=iceberg_schema(data.schema.set(1, pa.field("name", pa.string()))
                                                             .set(2, pa.field("style", pa.string()))))
    monkeypatch.setattr(iceberg_files, "DICTIONARY_ROWS_MIN", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pyiceberg warns on dictionary types it has to guess
        files = write_data_files(table.metadata, table.io, data)
    commit_replacement(table, files, AlwaysTrue(), {})

    parquet = pq.ParquetFile(files[0].file_path.removeprefix("file://"))
    assert b"ARROW:schema" not in (parquet.metadata.metadata or {})
    encodings = {parquet.metadata.row_group(0).column(i).path_in_schema: set(parquet.metadata.row_group(0).column(i).encodings)
                 for i in range(parquet.metadata.num_columns)}
    # Near-unique, yet dictionary-encoded: the writer took the dictionary instead of decoding it.
    assert any("DICTIONARY" in e for e in encodings["name"]) and any("DICTIONARY" in e for e in encodings["style"])
    stored = table.refresh().scan().to_arrow().sort_by("id")
    assert stored.schema.field("name").type == pa.string() and stored.schema.field("style").type == pa.string()
    assert stored["name"].to_pylist() == [f"brewer {n - 1 - i}" for i in range(n)]
    assert stored["style"].to_pylist() == [["IPA", "Stout", "Lager"][i % 3] if i % 7 else None for i in range(n)]
    assert files[0].null_value_counts[table.schema().find_field("style").field_id] == len(range(0, n, 7))
