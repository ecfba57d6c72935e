"""Process-wide tuning applied once by every entry point that does data work (the CLI, the Dagster
code location, the bronze Lambda handler, the container CLI, benchmark stages), before the process
allocates much memory.

Transparent huge pages: large numpy and Arrow (mimalloc) buffers end up on 2 MiB huge pages
(numpy asks with ``MADV_HUGEPAGE``). Where first touching a huge page is expensive, as on this
project's Firecracker VM (virtio-balloon free page reporting hands freed 2 MiB blocks back to the
host, so every huge-page fault waits for the host), that costs ~3 ms per MiB: a 400 MiB numpy
array took 1.1-1.3 s of system time with huge pages and 0.19 s without. The workers are short
processes whose buffers live for seconds, where huge pages buy little, so by default they opt out
for themselves and their children (``prctl(PR_SET_THP_DISABLE)``, the switch Redis and MongoDB
recommend); ``DATAMASTER_TRANSPARENT_HUGE_PAGES=system`` keeps the system's setting.

Garbage collection: Python starts a young-generation collection every 700 net container
allocations. Importing pyiceberg, SQLAlchemy, pyarrow and DuckDB (~700 modules) and building
pyiceberg's metadata objects allocate millions, so a gold worker ran ~270 young, ~25 middle and 2
full collections, 0.09 s with the GIL held, stalling every thread. The young threshold is raised to
10,000 (middle and old generations keep their ratios): the gold worker's imports take 0.66-0.72 s
instead of 0.72-0.76 s (6 runs each) and its collections 0.05 s instead of 0.09 s. Reference
cycles are still collected, in larger batches; nothing is disabled or frozen (frozen objects are
never freed, and DuckDB's bindings then report leaks at exit).
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from typing import Mapping

from datamaster_assets.settings import transparent_huge_pages_mode

PR_SET_THP_DISABLE = 41
YOUNG_GC_THRESHOLD = 10_000


def disable_transparent_huge_pages() -> bool:
    """Opt this process (and the processes it starts) out of transparent huge pages. False where
    the kernel or platform has no such switch."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def transparent_huge_pages_enabled() -> bool | None:
    """Whether this process may get transparent huge pages (``THP_enabled`` in
    ``/proc/self/status``, Linux 5.0+); None where the kernel does not say."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("THP_enabled:"):
                    return line.split(":", 1)[1].strip() == "1"
    except OSError:
        return None
    return None


def relax_young_garbage_collection() -> None:
    """Collect the young generation every YOUNG_GC_THRESHOLD allocations at the least."""
    young, middle, old = gc.get_threshold()
    if young:  # 0: collection is disabled, and stays so
        gc.set_threshold(max(young, YOUNG_GC_THRESHOLD), middle, old)


def tune_process(environ: Mapping[str, str] | None = None) -> None:
    """Apply ``DATAMASTER_TRANSPARENT_HUGE_PAGES`` (default ``disable``) and relax young garbage
    collection."""
    if transparent_huge_pages_mode(os.environ if environ is None else environ) == "disable":
        disable_transparent_huge_pages()
    relax_young_garbage_collection()
