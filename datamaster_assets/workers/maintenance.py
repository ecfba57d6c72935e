"""Lake maintenance entry point: expire old snapshots of every silver and gold Iceberg table,
then delete the table's orphan files.

The retention comes from the settings (``DATAMASTER_SNAPSHOT_MAX_AGE_DAYS``,
``DATAMASTER_SNAPSHOT_RETAIN_LAST``, ``DATAMASTER_ORPHAN_MIN_AGE_DAYS``). silver.review_flat also keeps the history the gold marts'
incremental refresh walks (``review_flat_history_in_use``). One table failing (a commit that
lost a race) does not stop the others; it is reported and tried again on the next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from pyiceberg.exceptions import CommitFailedException, NoSuchTableError

from datamaster_assets.contracts import table_names
from datamaster_assets.lake.catalog import table_identifier
from datamaster_assets.lake.factory import Lake
from datamaster_assets.lake.maintenance import (
    ExpiryResult,
    OrphanResult,
    RetentionPolicy,
    expire_table,
    remove_orphan_files,
)
from datamaster_assets.transform.gold import MARTS
from datamaster_assets.workers.gold import REVIEW_FLAT, review_flat_history_in_use


@dataclass
class MaintenanceReport:
    policy: RetentionPolicy
    tables: dict[tuple[str, str], ExpiryResult] = field(default_factory=dict)  # (layer, name) ->
    orphans: dict[tuple[str, str], OrphanResult] = field(default_factory=dict)  # (layer, name) ->
    failures: dict[tuple[str, str], str] = field(default_factory=dict)  # (layer, name) -> why it was not maintained

    @property
    def problems(self) -> list[str]:
        """Work left undone: tables not maintained, then files not deleted."""
        results = [*self.tables.values(), *self.orphans.values()]
        return [*self.failures.values(), *(f"could not delete {f}" for r in results for f in r.delete_failures)]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def metadata(self) -> dict[str, object]:
        return {
            "tables": len(self.tables),
            "snapshots_expired": sum(len(r.expired) for r in self.tables.values()),
            "files_deleted": sum(r.files_deleted for r in self.tables.values()),
            "bytes_deleted": sum(r.bytes_deleted for r in self.tables.values()),
            "orphan_files_deleted": sum(r.files_deleted for r in self.orphans.values()),
            "orphan_bytes_deleted": sum(r.bytes_deleted for r in self.orphans.values()),
            "failures": len(self.problems),
        }


def retention_policy(lake: Lake) -> RetentionPolicy:
    return RetentionPolicy(max_age=timedelta(days=lake.settings.snapshot_max_age_days),
                           retain_last=lake.settings.snapshot_retain_last,
                           orphan_min_age=timedelta(days=lake.settings.orphan_min_age_days))


def lake_tables() -> list[tuple[str, str]]:
    """(layer, name) of every Iceberg table the lake writes."""
    return ([("silver", name) for name in table_names()] + [("silver", REVIEW_FLAT)]
            + [("gold", name) for name in MARTS])


def maintain_lake(lake: Lake, *, now: datetime | None = None, policy: RetentionPolicy | None = None,
                  dry_run: bool = False) -> MaintenanceReport:
    """Expire old snapshots of every existing silver and gold table and delete the files only
    they referenced, then the table's orphan files. ``dry_run``: only report what would go."""
    now = now or datetime.now(timezone.utc)
    report = MaintenanceReport(policy or retention_policy(lake))
    flat_in_use = review_flat_history_in_use(lake)
    for layer, name in lake_tables():
        identifier = table_identifier(lake.settings, layer, name)
        try:
            table = lake.catalog.load_table(identifier)
        except NoSuchTableError:
            continue
        keep = flat_in_use if (layer, name) == ("silver", REVIEW_FLAT) else set()
        manifests: dict = {}  # read once for both steps
        try:
            report.tables[(layer, name)] = expire_table(table, now=now, policy=report.policy, keep=keep, dry_run=dry_run,
                                                        manifest_cache=manifests)
        except CommitFailedException as exc:
            report.failures[(layer, name)] = f"{identifier}: another writer committed first, nothing deleted: {exc}"
            continue
        except (ValueError, OSError) as exc:
            # The metadata changed under this run (another maintenance run expired these snapshots
            # and deleted their manifests first: pyiceberg raises ValueError for a snapshot already
            # gone, reading a deleted manifest FileNotFoundError). expire_table deletes last, so
            # nothing was deleted; the next run starts from fresh metadata.
            report.failures[(layer, name)] = f"{identifier}: snapshot expiry not done, nothing deleted: {exc}"
            continue
        try:
            report.orphans[(layer, name)] = remove_orphan_files(table, now=now, policy=report.policy, dry_run=dry_run,
                                                                manifest_cache=manifests)
        except OSError as exc:  # the location could not be listed: nothing was deleted
            report.failures[(layer, name)] = f"{identifier}: orphan files not removed, listing failed: {exc}"
    return report
