"""Local scratch directories that outlive a killed worker only until the next worker starts.

A worker killed with SIGKILL (OOM killer, ``kill -9``, a Lambda timeout) never runs its
``TemporaryDirectory`` cleanup. On a laptop that only litters ``/tmp``; in a warm Lambda, whose
``/tmp`` is kept between invocations, a few killed conversions fill the ephemeral storage and every
later file fails with ENOSPC. So each scratch directory holds an ``flock`` on a file inside it for
as long as its owner lives (the kernel drops the lock when the process dies, whatever its PID is
reused for later), and creating a scratch directory first removes those of the same prefix whose
lock nobody holds.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

OWNER_FILE = ".owner"


def _is_abandoned(directory: Path) -> bool:
    """True when ``directory`` has an owner file whose lock nobody holds.

    A directory without the owner file is still being set up (the file is locked before it gets
    its name), or was made by something else: left alone."""
    try:
        fd = os.open(directory / OWNER_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def remove_abandoned(prefix: str, parent: Path | None = None) -> list[Path]:
    """Remove the scratch directories named ``<prefix>*`` under ``parent`` whose owner is gone."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    for directory in parent.glob(f"{prefix}*"):
        if directory.is_dir() and not directory.is_symlink() and _is_abandoned(directory):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    if removed:
        log.warning("removed %d scratch director(y/ies) left by killed workers: %s",
                    len(removed), ", ".join(str(d) for d in removed))
    return removed


@contextmanager
def scratch_dir(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """A fresh temporary directory, removed on exit, and by the next ``scratch_dir`` with the same
    prefix if this process is killed before it exits."""
    remove_abandoned(prefix, parent)
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    staging = directory / f"{OWNER_FILE}.{os.getpid()}"
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(staging, directory / OWNER_FILE)
        yield directory
    finally:
        # Removed while still locked, so no other process's sweep races this one.
        shutil.rmtree(directory, ignore_errors=True)
        os.close(fd)
