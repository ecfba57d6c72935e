from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.aws_fixtures"]


@pytest.fixture
def dm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty DATAMASTER_HOME in the local environment."""
    home = tmp_path / "dmhome"
    monkeypatch.setenv("DATAMASTER_ENV", "local")
    monkeypatch.setenv("DATAMASTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    return home
