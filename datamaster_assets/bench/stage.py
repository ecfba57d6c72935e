"""One benchmark stage as its own process: ``python -m datamaster_assets.bench.stage <stage> ...``.

The harness times this whole process (interpreter start and imports included) and reads its
``--result`` JSON afterwards. Stages call the real workers on the lake in ``--home``; ``ref-*``
stages run the reference implementations. ``prepare-silver`` is not timed: it builds the silver
tables the gold stage starts from, with the real bronze and silver workers.
"""

from __future__ import annotations

import os

# numpy (imported by pyarrow) starts OpenBLAS's thread pool, whose threads spin for ~0.1 s of CPU
# on start-up; nothing here uses BLAS, and on 2 vCPUs that time comes out of the stage's own
# threads. Set before anything imports numpy, for system and reference stages alike.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

OWNER = "datamaster-bench"
SYSTEM_STAGES = ("bronze", "silver", "gold", "prepare-silver")


def _lake(home: Path):
    from datamaster_assets.lake.factory import open_lake
    from datamaster_assets.settings import Settings

    return open_lake(Settings.from_env().with_home(home))


def run_bronze(lake, table: str | None = None) -> dict[str, Any]:
    """Process every claimable bronze item (of ``table``, or all) with the real bronze worker."""
    from datamaster_assets.lake.ledger import Layer
    from datamaster_assets.workers.bronze import process_bronze_item

    items = lake.ledger.claimable(Layer.BRONZE.value, table_name=table, limit=100_000)
    results = [process_bronze_item(lake, item.control_id, owner=OWNER) for item in items]
    failed = [f"{r.control_id}: {r.status}: {r.error_message}" for r in results if r.status != "success"]
    if failed:
        raise RuntimeError("bronze items failed:\n" + "\n".join(failed))
    return {
        "files": len(results),
        "records_read": sum(r.records_read for r in results),
        "accepted": sum(r.accepted for r in results),
        "rejected": sum(r.rejected for r in results),
        "output_keys": [r.output_key for r in results],
    }


def run_silver(lake, tables: list[str]) -> dict[str, Any]:
    """Apply the pending bronze files of each table with the real silver worker."""
    from datamaster_assets.workers.silver import apply_pending_silver

    out = {}
    for table in tables:
        result = apply_pending_silver(lake, table, owner=OWNER)
        if result.files_failed:
            raise RuntimeError(f"silver {table}: " + "; ".join(result.failures))
        out[table] = {"files_applied": result.files_applied, "change_rows": result.change_rows,
                      "counts": result.counts, "total_rows": result.total_rows, "live_rows": result.live_rows,
                      "worker_ms": int(result.duration_s * 1000)}
    return out


def run_gold(lake) -> dict[str, Any]:
    from datamaster_assets.workers.gold import build_review_flat_table, refresh_gold

    flat = build_review_flat_table(lake)
    gold = refresh_gold(lake)
    return {"review_flat_rows": flat.row_count,
            "marts": {name: {"status": m.status, "rows": m.row_count} for name, m in gold.marts.items()},
            "profile_ms": {**{f"review_flat.{k}": v for k, v in flat.durations_ms.items()},
                           **{f"gold.{k}": v for k, v in gold.durations_ms.items()},
                           **{f"gold.mart.{name}": m.duration_ms for name, m in gold.marts.items()}}}


_IMPORTS = {
    "bronze": ("datamaster_assets.workers.bronze",),
    "silver": ("datamaster_assets.workers.silver",),
    "gold": ("datamaster_assets.workers.gold",),
    "prepare-silver": ("datamaster_assets.workers.bronze", "datamaster_assets.workers.silver"),
}


def _system(args) -> dict[str, Any]:
    """Run a system stage; the result says how much of the process went to imports and to work."""
    started = time.perf_counter()
    for module in _IMPORTS[args.stage]:
        importlib.import_module(module)
    imported = time.perf_counter()
    result = _run_system(args)
    result["in_process_ms"] = {"imports": int((imported - started) * 1000),
                               "work": int((time.perf_counter() - imported) * 1000)}
    return result


def _run_system(args) -> dict[str, Any]:
    lake = _lake(args.home)
    if args.stage == "bronze":
        return run_bronze(lake)
    if args.stage == "silver":
        return run_silver(lake, [args.table])
    if args.stage == "gold":
        return run_gold(lake)
    from datamaster_assets.contracts import table_names

    return {"bronze": run_bronze(lake), "silver": run_silver(lake, table_names())}


def _reference(args) -> dict[str, Any]:
    from datamaster_assets.bench import references as ref

    stage = args.stage
    if stage == "ref-pyarrow-csv":
        return {"rows": ref.pyarrow_csv_to_parquet(args.input, args.output)}
    if stage == "ref-pyarrow-json":
        return {"rows": ref.pyarrow_json_to_parquet(args.input, args.output)}
    if stage in ("ref-duckdb-csv", "ref-duckdb-json"):
        return {"rows": ref.duckdb_copy_to_parquet(args.input, args.output, stage.rsplit("-", 1)[1])}
    if stage in ("ref-spark-csv", "ref-spark-json"):
        return {"rows": ref.spark_to_parquet(args.input, args.output, stage.rsplit("-", 1)[1])}
    if stage == "ref-iceberg-append":
        return {"rows": ref.iceberg_append(args.home, args.input)}
    if stage == "ref-iceberg-upsert":
        from datamaster_assets.lake.catalog import table_identifier

        lake = _lake(args.home)
        return ref.iceberg_upsert(lake.catalog, table_identifier(lake.settings, "silver", args.table), args.input,
                                  args.key)
    if stage == "ref-duckdb-gold":
        return {"rows": ref.duckdb_gold(args.input, args.output)}
    if stage == "ref-spark-gold":
        return {"rows": ref.spark_gold(args.input, args.output)}
    raise ValueError(f"unknown stage {stage!r}")


REFERENCE_STAGES = (
    "ref-pyarrow-csv", "ref-pyarrow-json", "ref-duckdb-csv", "ref-duckdb-json", "ref-spark-csv", "ref-spark-json",
    "ref-iceberg-append", "ref-iceberg-upsert", "ref-duckdb-gold", "ref-spark-gold",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m datamaster_assets.bench.stage", description=__doc__)
    parser.add_argument("stage", choices=SYSTEM_STAGES + REFERENCE_STAGES)
    parser.add_argument("--home", type=Path, help="DATAMASTER_HOME of the lake to work on")
    parser.add_argument("--table", default="review")
    parser.add_argument("--key", default="review_id", help="join column for ref-iceberg-upsert")
    parser.add_argument("--input", type=Path)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--result", type=Path, help="write what the stage did here as JSON")
    args = parser.parse_args(argv)
    needs_home = args.stage in SYSTEM_STAGES or args.stage in ("ref-iceberg-append", "ref-iceberg-upsert")
    if needs_home and args.home is None:
        parser.error(f"{args.stage} needs --home")
    if args.stage.startswith("ref-") and args.input is None:
        parser.error(f"{args.stage} needs --input")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from datamaster_assets.runtime import tune_process

    tune_process()
    run: Callable[[argparse.Namespace], dict[str, Any]] = _system if args.stage in SYSTEM_STAGES else _reference
    result = run(args)
    if args.result is not None:
        args.result.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
