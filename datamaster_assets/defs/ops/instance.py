"""The local Dagster instance lives under DATAMASTER_HOME, so `rm -rf .datamaster` resets it too."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from datamaster_assets.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[3]


def ensure_dagster_home(settings: Settings) -> Path:
    """Create $DATAMASTER_HOME/dagster with the project's dagster.yaml and point DAGSTER_HOME at it."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = REPO_ROOT / "dagster.yaml"
    target = home / "dagster.yaml"
    if config.is_file() and (not target.exists() or target.read_bytes() != config.read_bytes()):
        shutil.copyfile(config, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
