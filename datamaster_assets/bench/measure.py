"""Run one command as its own process and measure it: wall time, and the peak RSS and CPU time
(user, system) of that process and of the descendants it waited for, taken from ``os.wait4`` so no
other process is counted. System time is where the cost of first touching memory shows up."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

KIB_PER_MIB = 1024


class StageFailed(RuntimeError):
    """A measured command exited with a non-zero status."""


@dataclass(frozen=True)
class Sample:
    wall_s: float
    peak_rss_mib: float
    user_s: float = 0.0
    sys_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


# Linux carries the exec-ing process's peak RSS over into the new program (exec_mmap), so a
# child forked from this (large) process would report at least our own peak. Children are
# therefore started by a minimal launcher (``python -S``, ~8 MiB), which times the child alone
# and reads its rusage with os.wait4. Peak RSS below the launcher's ~8 MiB cannot be seen.
_LAUNCHER = r"""
import json, os, sys, time
result, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(result, "w") as f:
    json.dump({"wall_s": wall, "maxrss_kib": usage.ru_maxrss, "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
               "exit_code": os.waitstatus_to_exitcode(status)}, f)
"""


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
) -> Sample:
    """Run ``argv`` as its own process; its wall time, peak RSS and CPU time (``os.wait4``).

    stdout and stderr go to ``log_path`` (or nowhere); a non-zero exit raises StageFailed naming
    the command and the log's tail.
    """
    with tempfile.TemporaryDirectory(prefix="datamaster-measure-") as tmp:
        result_path = Path(tmp) / "rusage.json"
        log = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL
        try:
            launcher = subprocess.run(
                [sys.executable, "-S", "-E", "-c", _LAUNCHER, str(result_path), *map(str, argv)],
                env=dict(env) if env is not None else None, cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, check=False,
            )
        finally:
            if log_path is not None:
                log.close()
        if launcher.returncode != 0 or not result_path.is_file():
            raise StageFailed(f"could not launch {argv[0]} (launcher exit {launcher.returncode})"
                              + _log_tail(log_path))
        measured = json.loads(result_path.read_text())
    if measured["exit_code"] != 0:
        raise StageFailed(f"{' '.join(map(str, argv))} exited with {measured['exit_code']}" + _log_tail(log_path))
    # Linux reports ru_maxrss in KiB.
    return Sample(wall_s=measured["wall_s"], peak_rss_mib=measured["maxrss_kib"] / KIB_PER_MIB,
                  user_s=measured["user_s"], sys_s=measured["sys_s"])


def _log_tail(log_path: Path | None) -> str:
    tail = _tail(log_path) if log_path is not None else ""
    return f":\n{tail}" if tail else ""


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


@dataclass(frozen=True)
class Summary:
    runs: int
    median_s: float
    min_s: float
    max_s: float
    median_rss_mib: float
    max_rss_mib: float
    median_user_s: float = 0.0
    median_sys_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def summarise(samples: Sequence[Sample]) -> Summary:
    """Median and range of wall time, median and max of peak RSS, median CPU time."""
    if not samples:
        raise ValueError("no samples to summarise")
    walls = [s.wall_s for s in samples]
    rss = [s.peak_rss_mib for s in samples]
    return Summary(
        runs=len(samples),
        median_s=statistics.median(walls),
        min_s=min(walls),
        max_s=max(walls),
        median_rss_mib=statistics.median(rss),
        max_rss_mib=max(rss),
        median_user_s=statistics.median(s.user_s for s in samples),
        median_sys_s=statistics.median(s.sys_s for s in samples),
    )
