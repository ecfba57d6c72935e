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
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Mapping

from datamaster_assets.settings import transparent_huge_pages_mode

PR_SET_THP_DISABLE = 41


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


def tune_process(environ: Mapping[str, str] | None = None) -> None:
    """Apply the process settings of ``DATAMASTER_TRANSPARENT_HUGE_PAGES`` (default ``disable``)."""
    if transparent_huge_pages_mode(os.environ if environ is None else environ) == "disable":
        disable_transparent_huge_pages()
