"""Grouping claimable ledger items into bounded runs (the control-table sensor's plan)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import groupby

from datamaster_assets.lake.ledger import LedgerItem
from datamaster_assets.lake.ledger_records import REQUEUES


@dataclass(frozen=True)
class Batch:
    table_name: str
    items: tuple[LedgerItem, ...]

    @property
    def control_ids(self) -> list[str]:
        return [i.control_id for i in self.items]

    @property
    def total_bytes(self) -> int:
        return sum(i.file_size for i in self.items)

    @property
    def run_key(self) -> str:
        """Same items at the same attempt -> same key (a repeated tick is deduplicated by Dagster).
        A retry has a higher attempt count, and a requeued item (attempts back to 0) a higher
        requeue count, so each gets a new key: Dagster never starts a run for a key it has run."""
        parts = sorted(f"{i.control_id}@{i.attempt_count}r{i.stats.get(REQUEUES, 0)}" for i in self.items)
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
        return f"{self.table_name}-{digest}"


def plan_batches(items: list[LedgerItem], *, max_files: int, max_bytes: int) -> list[Batch]:
    """Batches per table, oldest first, each at most ``max_files`` files and ``max_bytes`` bytes
    (a single file larger than ``max_bytes`` forms a batch of its own). Files registered together
    (one listing) go by key, which for landed files is landing order, not by their control ids."""
    if max_files < 1:
        raise ValueError("max_files must be at least 1")
    ordered = sorted(items, key=lambda i: (i.table_name, i.created_at, i.object_key, i.control_id))
    batches: list[Batch] = []
    for table, group in groupby(ordered, key=lambda i: i.table_name):
        current: list[LedgerItem] = []
        size = 0
        for item in group:
            if current and (len(current) >= max_files or size + item.file_size > max_bytes):
                batches.append(Batch(table, tuple(current)))
                current, size = [], 0
            current.append(item)
            size += item.file_size
        if current:
            batches.append(Batch(table, tuple(current)))
    return batches
