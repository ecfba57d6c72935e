"""Process tuning applied by the entry points (datamaster_assets.runtime)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from datamaster_assets.cli import main
from datamaster_assets.runtime import YOUNG_GC_THRESHOLD, relax_young_garbage_collection, transparent_huge_pages_enabled
from datamaster_assets.settings import transparent_huge_pages_mode

# Prints THP_enabled of the process after the entry point ran, then of a child it starts.
PROBE = """
import subprocess, sys
{entry}
from datamaster_assets.runtime import transparent_huge_pages_enabled
child = subprocess.run(["grep", "THP_enabled", "/proc/self/status"], capture_output=True, text=True).stdout
print(transparent_huge_pages_enabled(), child.split()[-1] == "1")
"""

needs_thp_status = pytest.mark.skipif(
    transparent_huge_pages_enabled() is None, reason="the kernel does not report THP_enabled (Linux 5.0+)"
)


def _probe(entry: str, **env: str) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if k != "DATAMASTER_TRANSPARENT_HUGE_PAGES"} | env
    out = subprocess.run([sys.executable, "-c", PROBE.format(entry=entry)], env=environ, capture_output=True,
                         text=True, check=True, cwd=Path(__file__).parents[2])
    return out.stdout.split()[-2:]  # the probe's line comes last (after any --help text)


def test_mode_defaults_to_disable_and_refuses_unknown_values():
    assert transparent_huge_pages_mode({}) == "disable"
    assert transparent_huge_pages_mode({"DATAMASTER_TRANSPARENT_HUGE_PAGES": ""}) == "disable"
    assert transparent_huge_pages_mode({"DATAMASTER_TRANSPARENT_HUGE_PAGES": " System "}) == "system"
    with pytest.raises(ValueError, match="DATAMASTER_TRANSPARENT_HUGE_PAGES must be 'disable' or 'system', got 'off'"):
        transparent_huge_pages_mode({"DATAMASTER_TRANSPARENT_HUGE_PAGES": "off"})


@needs_thp_status
def test_tune_process_opts_the_process_and_its_children_out_of_huge_pages():
    assert _probe("from datamaster_assets.runtime import tune_process; tune_process()") == ["False", "False"]


@needs_thp_status
def test_system_mode_leaves_the_kernel_setting():
    before = _probe("")
    assert _probe("from datamaster_assets.runtime import tune_process; tune_process()",
                  DATAMASTER_TRANSPARENT_HUGE_PAGES="system") == before


@needs_thp_status
def test_every_data_entry_point_applies_it(tmp_path):
    for entry in (
        "import datamaster_assets.definitions",
        "import datamaster_assets.workers.lambda_handler",
        "from datamaster_assets.workers.container import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
        "from datamaster_assets.cli import main\ntry:\n    main(['status', '--help'])\nexcept SystemExit:\n    pass",
    ):
        assert _probe(entry, DATAMASTER_HOME=str(tmp_path))[0] == "False", entry


def test_cli_names_a_bad_value():
    result = CliRunner().invoke(main, ["status"], env={"DATAMASTER_TRANSPARENT_HUGE_PAGES": "sometimes"})
    assert result.exit_code == 1
    assert "DATAMASTER_TRANSPARENT_HUGE_PAGES must be 'disable' or 'system', got 'sometimes'" in result.output


@pytest.mark.parametrize(("before", "after"), [
    ((700, 10, 10), (YOUNG_GC_THRESHOLD, 10, 10)),  # Python's default: raised, the older ratios kept
    ((50_000, 5, 20), (50_000, 5, 20)),  # already higher: left alone
    ((0, 10, 10), (0, 10, 10)),  # collection disabled by the embedding program: stays disabled
])
def test_young_garbage_collection_is_relaxed_never_tightened(before, after):
    import gc

    saved = gc.get_threshold()
    try:
        gc.set_threshold(*before)
        relax_young_garbage_collection()
        assert gc.get_threshold() == after
    finally:
        gc.set_threshold(*saved)


def test_tune_process_relaxes_garbage_collection_in_every_mode():
    for mode in ("disable", "system"):
        code = ("import gc; from datamaster_assets.runtime import tune_process; "
                f"tune_process({{'DATAMASTER_TRANSPARENT_HUGE_PAGES': '{mode}'}}); print(gc.get_threshold()[0])")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).parents[2])
        assert int(out.stdout) == YOUNG_GC_THRESHOLD, mode
