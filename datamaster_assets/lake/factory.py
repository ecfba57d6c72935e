"""Builds the storage services for the selected environment: the one place that branches on env."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from datamaster_assets.lake.ledger import Ledger
from datamaster_assets.lake.objectstore import LocalObjectStore, ObjectStore
from datamaster_assets.settings import Settings


@dataclass
class Lake:
    """Object stores, ledger and Iceberg catalog of one environment."""

    settings: Settings
    raw: ObjectStore  # raw landing area (raw/...)
    store: ObjectStore  # lake area (bronze/, rejects/; the Iceberg warehouse on AWS)
    ledger: Ledger

    @cached_property
    def catalog(self):
        from datamaster_assets.lake.catalog import build_catalog

        return build_catalog(self.settings)


def open_lake(settings: Settings | None = None) -> Lake:
    settings = settings or Settings.from_env()
    if settings.env == "aws":
        from datamaster_assets.lake.dynamo_ledger import DynamoLedger
        from datamaster_assets.lake.s3store import S3ObjectStore

        return Lake(
            settings=settings,
            raw=S3ObjectStore(settings.raw_bucket, region=settings.aws_region),
            store=S3ObjectStore(settings.lake_bucket, region=settings.aws_region),
            ledger=DynamoLedger(settings.ledger_table, region=settings.aws_region, max_attempts=settings.max_attempts),
        )
    from datamaster_assets.lake.sqlite_ledger import SqliteLedger

    settings.home.mkdir(parents=True, exist_ok=True)
    objects = LocalObjectStore(settings.objects_dir)
    return Lake(
        settings=settings,
        raw=objects,
        store=objects,
        ledger=SqliteLedger(settings.ledger_path, max_attempts=settings.max_attempts),
    )
