"""`datamaster bench`: whole-process timings of each stage beside reference tools (docs/benchmarks.md).

Nothing is imported eagerly: every measured stage process starts with
``python -m datamaster_assets.bench.stage``, which must not pay for the harness's own imports.
"""

from __future__ import annotations

from typing import Any

__all__ = ["STAGES", "BenchError", "bench_main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from datamaster_assets.bench import harness

        return getattr(harness, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
