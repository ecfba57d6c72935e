"""Scratch directories of killed workers are reclaimed by the next worker, live ones never."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from datamaster_assets.lake.scratch import OWNER_FILE, remove_abandoned, scratch_dir

PREFIX = "datamaster-test-"


def _holder(parent: Path, action: str) -> subprocess.Popen:
    """A process that creates a scratch dir, writes a file in it, prints the dir, then `action`."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from datamaster_assets.lake.scratch import scratch_dir
        with scratch_dir({PREFIX!r}, Path({str(parent)!r})) as d:
            (d / "part.parquet").write_bytes(b"x" * 1024)
            print(d, flush=True)
            if {action!r} == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            sys.stdin.readline()
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_a_killed_workers_dir_is_removed_by_the_next_one_and_a_live_workers_dir_is_kept(tmp_path):
    killed = _holder(tmp_path, "kill")
    killed_dir = Path(killed.stdout.readline().strip())
    assert killed.wait(timeout=60) == -signal.SIGKILL
    assert (killed_dir / "part.parquet").exists()  # what SIGKILL leaves behind

    live = _holder(tmp_path, "wait")
    live_dir = Path(live.stdout.readline().strip())
    try:
        with scratch_dir(PREFIX, tmp_path) as mine:
            assert mine.is_dir() and (mine / OWNER_FILE).exists()
            assert not killed_dir.exists()
            assert (live_dir / "part.parquet").exists()
            # another sweep while this process holds `mine`: same process, still held
            assert remove_abandoned(PREFIX, tmp_path) == []
            assert mine.is_dir()
        assert not mine.exists()
    finally:
        live.stdin.write("\n")
        live.stdin.close()
        assert live.wait(timeout=60) == 0
    assert not live_dir.exists()


def test_a_dir_still_being_set_up_or_of_another_prefix_is_left_alone(tmp_path):
    unlocked = tmp_path / f"{PREFIX}setting-up"
    unlocked.mkdir()
    (unlocked / f"{OWNER_FILE}.{os.getpid()}").write_text("")  # not yet renamed to the owner file
    other = tmp_path / "datamaster-other-x"
    other.mkdir()
    (other / OWNER_FILE).write_text("")
    assert remove_abandoned(PREFIX, tmp_path) == []
    assert unlocked.is_dir() and other.is_dir()


def test_the_dir_is_removed_when_the_work_raises(tmp_path):
    try:
        with scratch_dir(PREFIX, tmp_path) as d:
            (d / "f").write_text("x")
            raise RuntimeError("conversion failed")
    except RuntimeError:
        pass
    assert list(tmp_path.iterdir()) == []
