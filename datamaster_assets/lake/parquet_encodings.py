"""Which Parquet encoding each column gets: one rule for every file the lake writes (bronze files
and the Iceberg data files of silver and gold).

- dictionary encoding where a column's first rows have at most 20 % distinct values (ratings,
  foreign ids, names, lineage keys); on a near-unique column (review ids, times) the writer would
  hash a dictionary page's worth of values and then fall back to plain anyway;
- DELTA_BINARY_PACKED for the other integer and timestamp columns: cheaper to write than plain +
  zstd, smaller, and faster to read. On silver.review (1.59 M rows): writer CPU 0.62 -> 0.36 s,
  file 31 -> 19 MiB, read 0.18-0.25 -> 0.11-0.17 s (docs/benchmarks.md).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

DICTIONARY_MAX_DISTINCT_SHARE = 0.2
DICTIONARY_SAMPLE_ROWS = 65536


def dictionary_columns(table: pa.Table) -> list[str]:
    """Columns worth dictionary-encoding, judged on the table's first rows. Arrow dictionary columns
    always are: the writer takes their dictionary and indices as they are, where with dictionary
    encoding off it would first decode them to plain values."""
    out = []
    for name, column in zip(table.column_names, table.columns):
        if pa.types.is_dictionary(column.type):
            out.append(name)
            continue
        sample = column.slice(0, DICTIONARY_SAMPLE_ROWS)
        if len(sample) and pc.count_distinct(sample, mode="all").as_py() <= DICTIONARY_MAX_DISTINCT_SHARE * len(sample):
            out.append(name)
    return out


def delta_columns(schema: pa.Schema, dictionary: list[str]) -> dict[str, str]:
    """Integer-like columns without a dictionary, for ``column_encoding``: delta encoding is cheaper
    than plain + zstd on ids, line numbers and times, and smaller."""
    return {
        f.name: "DELTA_BINARY_PACKED"
        for f in schema
        if f.name not in dictionary and (pa.types.is_int64(f.type) or pa.types.is_int32(f.type) or pa.types.is_timestamp(f.type))
    }
