"""What every remote bronze entry point shares: run one ledger item and report it through Pipes.

Imports ``dagster_pipes`` (the lightweight package), never ``dagster``. The Lambda handler and
the container CLI differ only in how they receive their input and write their messages.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from dagster_pipes import PipesContext, open_dagster_pipes

# Extras the Dagster side passes into the Pipes session (see defs/compute.py).
EXTRA_ASSET_KEY = "asset_key"
EXTRA_CONTROL_ID = "control_id"


def open_fresh_pipes(**kwargs: Any) -> PipesContext:
    """``open_dagster_pipes`` that does not hand back a previous, closed session.

    ``dagster_pipes`` keeps its context in a process-wide singleton that ``close()`` never clears,
    so a warm Lambda (same process, next invocation) would otherwise get the last invocation's
    closed context and fail on its first message.
    """
    if PipesContext.is_initialized() and PipesContext.get().is_closed:
        PipesContext._instance = None  # noqa: SLF001 - the only way to reset the singleton
    return open_dagster_pipes(**kwargs)


def _plain(value: Any) -> Any:
    """A value Pipes metadata can carry as-is (str/int/float/bool/None/dict/list)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.loads(json.dumps(value, default=str))
    return str(value)


def result_metadata(result: Any, control_id: str) -> dict[str, Any]:
    """The materialization metadata of one processed item: the worker's own ``metadata`` dict plus
    the item identity and outcome, every value plain."""
    metadata: dict[str, Any] = {}
    if dataclasses.is_dataclass(result):
        for f in dataclasses.fields(result):
            if f.name != "metadata":
                metadata[f.name] = _plain(getattr(result, f.name))
    for key, value in (getattr(result, "metadata", None) or {}).items():
        metadata[str(key)] = _plain(value)
    metadata["control_id"] = control_id
    status = getattr(result, "status", None)
    metadata["status"] = getattr(status, "value", status)
    return metadata


def report_bronze_result(
    pipes: PipesContext, result: Any, control_id: str, asset_key: str | None = None
) -> dict[str, Any]:
    """Report the item as a materialization of its bronze asset (the session's ``asset_key`` extra,
    else ``asset_key``, else the session's only asset); returns the metadata sent."""
    metadata = result_metadata(result, control_id)
    asset_key = (pipes.extras or {}).get(EXTRA_ASSET_KEY) or asset_key
    pipes.report_asset_materialization(metadata=metadata, asset_key=asset_key)
    return metadata


def run_bronze_item(
    control_id: str, owner: str, *, pipes: PipesContext | None, asset_key: str | None = None
) -> dict[str, Any]:
    """Process one ledger item against the lake of this environment and report it if under Pipes."""
    from datamaster_assets.lake.factory import open_lake
    from datamaster_assets.settings import Settings
    from datamaster_assets.workers.bronze import process_bronze_item

    lake = open_lake(Settings.from_env())
    result = process_bronze_item(lake, control_id, owner=owner)
    if pipes is not None:
        return report_bronze_result(pipes, result, control_id, asset_key)
    return result_metadata(result, control_id)


def require_str(mapping: Mapping[str, Any], key: str, where: str) -> str:
    value = mapping.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    return value
