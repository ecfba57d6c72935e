"""Test double for ``datamaster_assets.workers.bronze`` (same signature), so the Pipes paths are
tested independently of the ingest code: it claims and completes the item in the real ledger."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FakeBronzeItemResult:
    status: str
    record_count: int
    rejected_count: int
    output_key: str | None
    error_message: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


def process_bronze_item(lake: Any, control_id: str, *, owner: str, now: Any = None) -> FakeBronzeItemResult:
    item = lake.ledger.claim(control_id, owner, lease_seconds=60)
    if item is None:
        return FakeBronzeItemResult("not_claimable", 0, 0, None, f"{control_id} is not claimable")
    rows = item.file_size // 10
    output_key = f"bronze/{item.table_name}/year=2024/month=01/day=02/{control_id}.parquet"
    lake.store.put_bytes(output_key, b"PAR1-test") if hasattr(lake.store, "put_bytes") else None
    lake.ledger.complete(control_id, owner, record_count=rows, rejected_count=1, output_key=output_key, duration_ms=5)
    return FakeBronzeItemResult(
        "success", rows, 1, output_key, None,
        {"dagster/row_count": rows, "owner": owner, "env": lake.settings.env, "big": "x" * 6000},
    )


def install() -> None:
    sys.modules["datamaster_assets.workers.bronze"] = sys.modules[__name__]


if __name__ == "__main__":  # the ECS container entry point used by the tests
    install()
    from datamaster_assets.workers.container import main

    sys.exit(main(sys.argv[1:]))
