"""Writing Iceberg data files fast, and committing them.

``write_data_files`` is pyiceberg's own data file writer (``pyiceberg.io.pyarrow.write_file``, what
``append`` uses) with the per-table work done once instead of once per file, and several files
written at once; ``commit_replacement`` replaces what a filter matches with those files in one
transaction. The silver merge (a copy-on-write rewrite) and the gold marts (one file per month
partition) both write through here.
"""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote_plus

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import BooleanExpression
from pyiceberg.transforms import IdentityTransform

from datamaster_assets.lake.parquet_encodings import delta_columns, dictionary_columns

log = logging.getLogger(__name__)

# Below this many rows a file is written plain, without dictionary or delta encoding: for the gold
# marts' month files (hundreds to thousands of rows) that is ~40 % less encoding CPU and smaller
# files (zstd finds the repeats itself). Bigger files get the encodings of lake/parquet_encodings.py.
DICTIONARY_ROWS_MIN = 100_000
ROWS_PER_FILE_MIN = 400_000  # an unpartitioned table smaller than this is one file: splitting costs more than it saves


def row_ranges(table_metadata, rows: pa.Table) -> list[tuple[int, int]]:
    """Where to cut ``rows`` into data files. Partitioned (identity transforms): one file per
    partition, and the rows must be grouped by partition. Unpartitioned: one file per core once
    the table is big, so the Parquet encoding (which releases the GIL) runs on every core."""
    spec, schema = table_metadata.spec(), table_metadata.schema()
    if spec.is_unpartitioned():
        files = max(1, min(os.cpu_count() or 1, rows.num_rows // ROWS_PER_FILE_MIN))
        bounds = [rows.num_rows * i // files for i in range(files + 1)]
        return list(zip(bounds, bounds[1:]))
    if not all(isinstance(f.transform, IdentityTransform) for f in spec.fields):
        raise ValueError(f"only identity partitions are supported here, not {spec}")
    if rows.num_rows == 0:
        return []
    changes = np.zeros(rows.num_rows - 1, dtype=bool)
    columns = [rows[schema.find_column_name(f.source_id)] for f in spec.fields]
    for column in columns:
        before, after = column.slice(0, rows.num_rows - 1), column.slice(1)
        differs = pc.fill_null(pc.not_equal(before, after), True)  # null next to a value differs...
        both_null = pc.and_(pc.is_null(before), pc.is_null(after))  # ...null next to null does not
        changes |= np.asarray(pc.and_not(differs, both_null).to_numpy(zero_copy_only=False), dtype=bool)
    cuts = [0, *(np.flatnonzero(changes) + 1).tolist(), rows.num_rows]
    starts = [tuple(column[i].as_py() for column in columns) for i in cuts[:-1]]
    if len(set(starts)) != len(starts):
        raise ValueError("rows must be grouped by partition (sorted by the partition columns)")
    return list(zip(cuts, cuts[1:]))


def _dictionaries_as_values(schema: pa.Schema) -> pa.Schema:
    """The schema with Arrow dictionary columns as their value type (Iceberg has no dictionaries)."""
    return pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema])


def write_data_files(table_metadata, io, rows: pa.Table) -> list:
    """Write ``rows`` as Parquet data files of the table (not committed), cut by ``row_ranges``;
    several files are written at once.

    This is pyiceberg's own data file writer (``pyiceberg.io.pyarrow.write_file``, what ``append``
    uses) with the per-table work done once instead of once per file: its schema conversion,
    statistics plan and writer options cost ~2 ms of Python per file, which at 5 marts x 169 months
    was most of a full gold build. pyiceberg's partitioned ``append`` is slower still (it filters the
    whole table once per partition). It relies on pyiceberg internals, so the tests read the files,
    partition values and column statistics back: an incompatible pyiceberg upgrade fails loudly.
    """
    from pyiceberg.io.pyarrow import (
        _get_parquet_writer_kwargs,
        _to_requested_schema,
        compute_statistics_plan,
        data_file_statistics_from_parquet_metadata,
        parquet_path_to_id_mapping,
        pyarrow_to_schema,
    )
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.partitioning import PartitionFieldValue, PartitionKey
    from pyiceberg.schema import sanitize_column_names
    from pyiceberg.table import TableProperties
    from pyiceberg.table.locations import load_location_provider
    from pyiceberg.typedef import Record
    from pyiceberg.utils.properties import property_as_int

    if rows.num_rows == 0:
        return []
    properties = table_metadata.properties
    spec, table_schema = table_metadata.spec(), table_metadata.schema()
    file_schema = sanitize_column_names(table_schema)
    rows_schema = pyarrow_to_schema(_dictionaries_as_values(rows.schema), name_mapping=table_schema.name_mapping,
                                    format_version=table_metadata.format_version)
    # Column names and Iceberg field ids as the files carry them, converted once for all files.
    format_model = _parquet_format_model()
    file_rows = pa.Table.from_batches(
        [_to_requested_schema(file_schema, rows_schema, batch, include_field_ids=True, **format_model)
         for batch in rows.to_batches()]
    )
    writer_kwargs = _get_parquet_writer_kwargs(properties)
    if any(pa.types.is_dictionary(t) for t in file_rows.schema.types):
        # Dictionary columns are written as they are (the Parquet column is the value type); the
        # Arrow schema blob would make readers hand them back as dictionaries.
        writer_kwargs["store_schema"] = False
    ranges = row_ranges(table_metadata, rows)
    plain: dict = {"use_dictionary": False}
    encodings = plain
    if any(hi - lo >= DICTIONARY_ROWS_MIN for lo, hi in ranges):  # judged once, on the first rows
        dictionary = dictionary_columns(file_rows)
        encodings = {"use_dictionary": dictionary, "column_encoding": delta_columns(file_rows.schema, dictionary)}
    row_group_size = property_as_int(properties, TableProperties.PARQUET_ROW_GROUP_LIMIT,
                                     TableProperties.PARQUET_ROW_GROUP_LIMIT_DEFAULT)
    stats_columns = compute_statistics_plan(file_schema, properties)
    column_mapping = parquet_path_to_id_mapping(file_schema)
    locations = load_location_provider(table_location=table_metadata.location, table_properties=properties)
    partition_types = [f.field_type for f in spec.partition_type(table_schema).fields]
    write_uuid = uuid.uuid4()

    def write_one(task_id: int, lo: int, hi: int):
        part = file_rows.slice(lo, hi - lo)
        key = None
        if not spec.is_unpartitioned():
            values = [rows[table_schema.find_column_name(f.source_id)][lo].as_py() for f in spec.fields]
            key = PartitionKey(
                field_values=[PartitionFieldValue(field=f, value=v) for f, v in zip(spec.fields, values)],
                partition_spec=spec,
                schema=table_schema,
            )
        partition_path = _partition_path(spec, partition_types, values) if key is not None else None
        path = locations.new_data_location(data_file_name=_data_file_name(partition_path, task_id, write_uuid))
        output = io.new_output(path)
        with output.create(overwrite=True) as stream:
            encoded = encodings if part.num_rows >= DICTIONARY_ROWS_MIN else plain
            with pq.ParquetWriter(stream, schema=part.schema, store_decimal_as_integer=True, **encoded,
                                  **writer_kwargs) as writer:
                writer.write(part, row_group_size=row_group_size)
            size = stream.tell()  # the writer leaves a stream it did not open open: no stat needed
        statistics = data_file_statistics_from_parquet_metadata(
            parquet_metadata=writer.writer.metadata, stats_columns=stats_columns, parquet_column_mapping=column_mapping
        )
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=path,
            file_format=FileFormat.PARQUET,
            partition=key.partition if key is not None else Record(),
            file_size_in_bytes=size,
            sort_order_id=None,
            spec_id=table_metadata.default_spec_id,
            equality_ids=None,
            key_metadata=None,
            **statistics.to_serialized_dict(),
        )

    if len(ranges) == 1:
        return [write_one(0, *ranges[0])]
    with ThreadPoolExecutor(max_workers=min(len(ranges), (os.cpu_count() or 1) + 1)) as pool:
        return list(pool.map(write_one, range(len(ranges)), *zip(*ranges)))


def _partition_path(spec, partition_types: list, values: list) -> str:
    """``review_year=2010/review_month=1``: what ``PartitionSpec.partition_to_path`` returns, with
    the partition type worked out once per write instead of once per file (pyiceberg rebuilds it
    on every call: 34 us alone here, and py-spy put 0.13 s of a full gold build's GIL time on it)."""
    return "/".join(
        f"{quote_plus(field.name, safe='')}={quote_plus(field.transform.to_human_string(type_, value), safe='')}"
        for field, type_, value in zip(spec.fields, partition_types, values, strict=True)
    )


def _data_file_name(partition_path: str | None, task_id: int, write_uuid: uuid.UUID) -> str:
    """``review_year=2010-review_month=1-00000-3-<uuid>.parquet``: the partition goes into the file
    name, not into a directory per partition. Iceberg takes partitions from the manifests, never
    from paths, so readers do not care. On a local disk a new directory per month file costs a
    mkdir and a slower first file: 0.45 s of system time for 845 files in new directories against
    0.04 s in one (micro-benchmark here), 0.1-0.25 s less in a full gold build. On S3 a prefix is
    not a directory either way."""
    name = f"00000-{task_id}-{write_uuid}.parquet"
    return name if partition_path is None else f"{partition_path.replace('/', '-')}-{name}"


def _parquet_format_model() -> dict:
    """pyiceberg puts the field ids in through a file format model: ``_to_requested_schema``
    refuses ``include_field_ids`` without one."""
    from pyiceberg.io.fileformat import FileFormatFactory
    from pyiceberg.manifest import FileFormat

    return {"format_model": FileFormatFactory.get(FileFormat.PARQUET)}


def commit_replacement(table, files: list, delete_filter: BooleanExpression, properties: dict[str, str]) -> None:
    """One transaction: delete what ``delete_filter`` matches, add ``files``. Both snapshots carry
    ``properties``. Raises CommitFailedException when another writer's commit gets in the way.

    pyiceberg retries the commit itself on top of another writer's, after checking (serializable
    isolation) that the other writer added or removed nothing ``delete_filter`` matches, and raises
    ValidationException when it did: the same conflict, so it is raised as CommitFailedException.

    A commit that certainly did not happen (those two exceptions) deletes ``files``: nothing refers
    to them, and a caller that retries writes new ones. Any other error leaves them, since the
    commit may have gone through; if it did not, maintenance's orphan file removal takes them."""
    try:
        with table.transaction() as txn:
            with warnings.catch_warnings():
                # A partition new to the table (or a table without data yet) has nothing to delete;
                # expected, not a problem. The delete is still made: on 0.12 it is what validates
                # the retry, and without it a first write would land on top of a concurrent one.
                warnings.filterwarnings("ignore", message="Delete operation did not match any records")
                txn.delete(delete_filter, snapshot_properties=properties)
            with txn.update_snapshot(snapshot_properties=properties).fast_append() as append:
                for data_file in files:
                    append.append_data_file(data_file)
    except ValidationException as exc:
        delete_uncommitted(table.io, files)
        raise CommitFailedException(f"another writer changed what this commit replaces: {exc}") from exc
    except CommitFailedException:
        delete_uncommitted(table.io, files)
        raise


def delete_uncommitted(io, files: list) -> list[str]:
    """Delete data files that no commit refers to; returns the paths that would not delete (a
    warning is logged for them: they are orphans, harmless to readers, only taking space)."""
    failed = []
    for data_file in files:
        try:
            io.delete(data_file.file_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failed.append(data_file.file_path)
            log.warning("could not delete uncommitted data file %s: %s", data_file.file_path, exc)
    return failed
