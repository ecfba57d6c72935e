"""The vendored real dimension files (datamaster_assets/data/beer-datasets, MIT, see its LICENSE)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

DIM_TABLES = ("brewery", "beer", "profile")
DIM_KEYS = {"brewery": "brewery_id", "beer": "beer_id", "profile": "profile_id"}
_DIM_TYPES: dict[str, dict[str, pa.DataType]] = {
    "brewery": {"brewery_id": pa.int64(), "brewery_name": pa.string()},
    "beer": {
        "beer_id": pa.int64(),
        "brewery_id": pa.int64(),
        "beer_name": pa.string(),
        "beer_style": pa.string(),
        "beer_abv": pa.float64(),
    },
    "profile": {"profile_id": pa.int64(), "profile_name": pa.string(), "email": pa.string(), "state": pa.string()},
}


def dataset_dir() -> Path:
    return Path(str(resources.files("datamaster_assets") / "data" / "beer-datasets"))


@lru_cache(maxsize=None)
def load_dim(table: str) -> pa.Table:
    """One real dimension table, typed; an empty field is null (DMS then omits it from the change)."""
    if table not in _DIM_TYPES:
        raise ValueError(f"unknown dimension {table!r}; expected one of {', '.join(DIM_TABLES)}")
    path = dataset_dir() / f"{table}.csv.gz"
    types = _DIM_TYPES[table]
    convert = pacsv.ConvertOptions(column_types=types, include_columns=list(types), strings_can_be_null=True)
    return pacsv.read_csv(path, convert_options=convert)
