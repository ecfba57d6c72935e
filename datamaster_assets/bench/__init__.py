"""`datamaster bench`: whole-process timings of each stage beside reference tools (docs/benchmarks.md)."""

from datamaster_assets.bench.harness import STAGES, bench_main

__all__ = ["STAGES", "bench_main"]
