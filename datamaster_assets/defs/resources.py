"""Dagster resources: the lake services of the selected environment."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dagster as dg

from datamaster_assets.lake.factory import Lake, open_lake
from datamaster_assets.settings import Settings


class LakeResource(dg.ConfigurableResource):
    """Object stores, ledger and Iceberg catalog for DATAMASTER_ENV (settings read from the environment).

    ``home`` overrides DATAMASTER_HOME (tests); ``pii_key`` is set from the DATAMASTER_PII_KEY
    environment variable through ``dg.EnvVar`` where a deployment provides it.
    """

    home: str | None = None
    pii_key: str | None = None

    def settings(self) -> Settings:
        settings = Settings.from_env()
        if self.home:
            settings = settings.with_home(Path(self.home))
        if self.pii_key:
            settings = replace(settings, pii_key=self.pii_key)
        return settings

    def open(self) -> Lake:
        return open_lake(self.settings())


def dagster_metadata(plain: dict) -> dict:
    """Plain worker metadata -> Dagster metadata: Markdown previews rendered as Markdown."""
    return {
        key: dg.MetadataValue.md(value) if isinstance(value, str) and (key.endswith("preview") or "\n" in value) else value
        for key, value in plain.items()
    }
