"""The control ledger: the source of truth for file-level processing (DESIGN section 3).

One item per (layer, object, checksum). Every transition is a conditional write, so duplicate
registrations are no-ops, exactly one of two claimers wins, and a worker whose lease was lost
cannot finish the item. Backends: ``SqliteLedger`` (local) and ``DynamoLedger`` (aws).

State machine::

    pending -> running -> success
    running -> error -> running (retry)          attempts < max_attempts
    running -> quarantined                       attempts exhausted, or a permanent (bad input) error
    running with expired lease -> claimable again
    quarantined | error -> pending               only by requeue (a person)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Iterable, Protocol, runtime_checkable


class Status(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"
    QUARANTINED = "quarantined"


class Layer(str, Enum):
    BRONZE = "bronze"  # items are raw files waiting to become bronze Parquet
    SILVER = "silver"  # items are bronze files waiting to be merged into silver


COMPUTE_TARGETS = ("inprocess", "lambda", "ecs", "emr")


class LeaseLost(RuntimeError):
    """The caller no longer holds the running lease on the item (expired and reclaimed, or finished)."""


def make_control_id(layer: str, object_key: str, checksum: str) -> str:
    """Deterministic id: the same object with the same content always maps to the same item."""
    digest = hashlib.sha256(f"{layer}\x00{object_key}\x00{checksum}".encode()).hexdigest()
    return f"{layer[0]}-{digest[:24]}"


@dataclass(frozen=True)
class Registration:
    """What a landing sensor / S3 notification knows about a new object."""

    layer: str
    table_name: str
    object_key: str
    checksum: str
    file_format: str  # csv | json (| parquet for silver items)
    file_size: int
    compute_target: str = "inprocess"
    record_count: int | None = None  # estimated before processing; exact after

    @property
    def control_id(self) -> str:
        return make_control_id(self.layer, self.object_key, self.checksum)


@dataclass(frozen=True)
class LedgerItem:
    control_id: str
    layer: str
    table_name: str
    object_key: str
    checksum: str
    file_format: str
    file_size: int
    status: Status
    attempt_count: int
    compute_target: str
    created_at: datetime
    record_count: int | None = None
    rejected_count: int | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    error_message: str | None = None
    output_key: str | None = None
    # Free-form counters written on success, e.g. silver's inserted/updated/deleted/stale.
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def etag(self) -> str:
        return self.checksum


@runtime_checkable
class Ledger(Protocol):
    max_attempts: int

    def register(self, reg: Registration) -> tuple[LedgerItem, bool]:
        """Create the item as pending; if it already exists, return it unchanged. (item, created)."""
        ...

    def register_many(self, regs: Iterable[Registration]) -> list[tuple[LedgerItem, bool]]: ...

    def get(self, control_id: str) -> LedgerItem | None: ...

    def claim(self, control_id: str, owner: str, lease_seconds: int, now: datetime | None = None) -> LedgerItem | None:
        """pending / error (attempts left) / running-with-expired-lease -> running, attempt+1.

        Returns the claimed item, or None if someone else holds it or it is not claimable.
        """
        ...

    def renew(self, control_id: str, owner: str, lease_seconds: int, now: datetime | None = None) -> LedgerItem:
        """Extend a held lease. Raises LeaseLost."""
        ...

    def complete(
        self,
        control_id: str,
        owner: str,
        *,
        record_count: int,
        rejected_count: int,
        output_key: str | None,
        duration_ms: int,
        stats: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> LedgerItem:
        """running (held by owner, lease not expired) -> success. Raises LeaseLost otherwise."""
        ...

    def fail(
        self,
        control_id: str,
        owner: str,
        error_message: str,
        *,
        permanent: bool = False,
        now: datetime | None = None,
    ) -> LedgerItem:
        """running (held by owner) -> error, or quarantined if permanent or attempts exhausted.

        Raises LeaseLost if the owner no longer holds the item.
        """
        ...

    def requeue(
        self,
        control_ids: Iterable[str] | None = None,
        *,
        table_name: str | None = None,
        layer: str | None = None,
        statuses: Iterable[Status] = (Status.QUARANTINED, Status.ERROR),
        now: datetime | None = None,
    ) -> list[LedgerItem]:
        """Bring matching items back to pending with attempt_count 0 (a person's decision)."""
        ...

    def claimable(
        self,
        layer: str,
        table_name: str | None = None,
        *,
        limit: int = 1000,
        now: datetime | None = None,
    ) -> list[LedgerItem]:
        """Items a worker could claim now (pending, error with attempts left, expired running),
        oldest created first."""
        ...

    def items(
        self,
        *,
        layer: str | None = None,
        table_name: str | None = None,
        status: Status | None = None,
        limit: int | None = None,
    ) -> list[LedgerItem]: ...

    def counts(self) -> dict[tuple[str, str, str], int]:
        """(layer, table_name, status) -> number of items."""
        ...

    def items_for_keys(self, layer: str, object_keys: Iterable[str]) -> list[LedgerItem]:
        """Every item of ``layer`` registered for one of ``object_keys`` (any status, any content)."""
        ...
