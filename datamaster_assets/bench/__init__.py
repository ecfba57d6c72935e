"""`datamaster bench`: whole-process timings of each stage beside reference tools (docs/benchmarks.md)."""

from datamaster_assets.bench.harness import STAGES, BenchError, bench_main

__all__ = ["STAGES", "BenchError", "bench_main"]
