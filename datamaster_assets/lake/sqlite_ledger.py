"""The control ledger in a SQLite file (the local environment), see docs/ledger.md.

Every transition runs inside ``BEGIN IMMEDIATE`` (the write lock is taken before reading, so no
two writers interleave) and is itself a conditional ``UPDATE ... WHERE status=? AND ...`` whose
rowcount decides the outcome. WAL mode lets readers proceed while one writer holds the lock, and
``busy_timeout`` makes concurrent writers (threads or processes) queue instead of failing.
Each thread of each process gets its own connection.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from datamaster_assets.lake.ledger import LeaseLost, LedgerItem, Registration, Status
from datamaster_assets.lake.ledger_records import (
    completed_stats,
    failed_status,
    encode_stats,
    encode_ts,
    exhausted_error_message,
    expired_lease_message,
    item_from_record,
    lease_lost_message,
    lease_until,
    new_record,
    resolve_now,
    validate_owner,
    requeued_stats,
    with_last_error,
)

BUSY_TIMEOUT_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_items (
    control_id       TEXT PRIMARY KEY,
    layer            TEXT NOT NULL,
    table_name       TEXT NOT NULL,
    object_key       TEXT NOT NULL,
    checksum         TEXT NOT NULL,
    file_format      TEXT NOT NULL,
    file_size        INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending','running','success','error','quarantined')),
    attempt_count    INTEGER NOT NULL DEFAULT 0,
    compute_target   TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    record_count     INTEGER,
    rejected_count   INTEGER,
    lease_owner      TEXT,
    lease_expires_at TEXT,
    started_at       TEXT,
    finished_at      TEXT,
    duration_ms      INTEGER,
    error_message    TEXT,
    output_key       TEXT,
    stats            TEXT NOT NULL DEFAULT '{}'
);
-- claimable(): by layer and status, oldest first
CREATE INDEX IF NOT EXISTS ledger_items_claim ON ledger_items (layer, status, created_at, control_id);
-- items()/counts()/requeue() by table
CREATE INDEX IF NOT EXISTS ledger_items_table ON ledger_items (layer, table_name, status, created_at);
CREATE INDEX IF NOT EXISTS ledger_items_object ON ledger_items (object_key);
"""

KEYS_PER_QUERY = 500  # well under SQLite's limit on bound parameters


class SqliteLedger:
    """``Ledger`` backed by one SQLite file, safe across threads and processes."""

    def __init__(self, path: str | os.PathLike[str], max_attempts: int = 3) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.path = Path(path)
        self.max_attempts = max_attempts
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._create_schema()

    # ---- connections ---------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # WAL: a crash cannot corrupt the file; NORMAL may lose the last commits on power loss,
        # which only means a file is processed again (outputs are idempotent).
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        """This thread's connection; a forked child opens its own instead of sharing the parent's."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = self._connect()
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        """Close the calling thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "max_attempts": self.max_attempts}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.max_attempts = state["path"], state["max_attempts"]
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path)!r}, max_attempts={self.max_attempts})"

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (the item is left as it was)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _create_schema(self) -> None:
        conn = self._conn
        # Switching to WAL needs a moment without other writers; busy_timeout covers the race
        # of several processes opening a new ledger at once.
        conn.execute("PRAGMA journal_mode = WAL")
        with self._transaction() as tx:
            # (executescript would COMMIT on its own; run the statements one by one instead)
            for statement in filter(str.strip, _SCHEMA.split(";")):
                tx.execute(statement)

    # ---- reads ---------------------------------------------------------------------------
    @staticmethod
    def _fetch(conn: sqlite3.Connection, control_id: str) -> LedgerItem | None:
        row = conn.execute("SELECT * FROM ledger_items WHERE control_id = ?", (control_id,)).fetchone()
        return None if row is None else item_from_record(dict(row))

    def get(self, control_id: str) -> LedgerItem | None:
        return self._fetch(self._conn, control_id)

    def items(
        self,
        *,
        layer: str | None = None,
        table_name: str | None = None,
        status: Status | None = None,
        limit: int | None = None,
    ) -> list[LedgerItem]:
        where, params = _filters(layer=layer, table_name=table_name, status=status)
        sql = f"SELECT * FROM ledger_items {where} ORDER BY created_at, control_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [item_from_record(dict(r)) for r in self._conn.execute(sql, params)]

    def claimable(
        self,
        layer: str,
        table_name: str | None = None,
        *,
        limit: int = 1000,
        now: datetime | None = None,
    ) -> list[LedgerItem]:
        now_ts = encode_ts(resolve_now(now))
        where, params = _filters(layer=layer, table_name=table_name)
        sql = (
            # the IN lets SQLite seek (layer, status) in ledger_items_claim instead of reading
            # every finished item of the layer
            f"SELECT * FROM ledger_items {where} AND status IN ('pending', 'error', 'running') AND ("
            " status = 'pending'"
            " OR status = 'error'"
            " OR (status = 'running' AND lease_expires_at <= ?))"
            " ORDER BY created_at, control_id LIMIT ?"
        )
        rows = self._conn.execute(sql, [*params, now_ts, limit])
        return [item_from_record(dict(r)) for r in rows]

    def counts(self) -> dict[tuple[str, str, str], int]:
        rows = self._conn.execute(
            "SELECT layer, table_name, status, COUNT(*) AS n FROM ledger_items GROUP BY layer, table_name, status"
        )
        return {(r["layer"], r["table_name"], r["status"]): r["n"] for r in rows}

    def items_for_keys(self, layer: str, object_keys: Iterable[str]) -> list[LedgerItem]:
        keys = list(dict.fromkeys(object_keys))
        found: list[LedgerItem] = []
        for start in range(0, len(keys), KEYS_PER_QUERY):
            part = keys[start : start + KEYS_PER_QUERY]
            rows = self._conn.execute(  # the ledger_items_object index
                f"SELECT * FROM ledger_items WHERE object_key IN ({', '.join('?' * len(part))}) AND layer = ?",
                [*part, layer],
            )
            found.extend(item_from_record(dict(r)) for r in rows)
        return found

    # ---- registration --------------------------------------------------------------------
    def register(self, reg: Registration, *, now: datetime | None = None) -> tuple[LedgerItem, bool]:
        return self.register_many([reg], now=now)[0]

    def register_many(
        self, regs: Iterable[Registration], *, now: datetime | None = None
    ) -> list[tuple[LedgerItem, bool]]:
        """One transaction for the whole batch; an already known control_id is left untouched."""
        created_at = resolve_now(now)
        records = [new_record(reg, created_at) for reg in regs]  # validates all before writing any
        results: list[tuple[LedgerItem, bool]] = []
        with self._transaction() as tx:
            for record in records:
                cols = ", ".join(record)
                marks = ", ".join("?" for _ in record)
                cur = tx.execute(
                    f"INSERT INTO ledger_items ({cols}) VALUES ({marks}) ON CONFLICT (control_id) DO NOTHING",
                    list(record.values()),
                )
                item = self._fetch(tx, record["control_id"])
                assert item is not None
                results.append((item, cur.rowcount == 1))
        return results

    # ---- transitions ---------------------------------------------------------------------
    def claim(self, control_id: str, owner: str, lease_seconds: int, now: datetime | None = None) -> LedgerItem | None:
        """pending | error (attempts left) | running with an expired lease (attempts left) -> running.

        A running item whose lease expired with its attempts used up is quarantined instead (its
        worker died on the last attempt), and so is an error item past this ledger's max_attempts
        (failed by a worker that allowed more); None is returned.
        """
        validate_owner(owner)
        now = resolve_now(now)
        now_ts = encode_ts(now)
        expires_ts = encode_ts(lease_until(now, lease_seconds))
        with self._transaction() as tx:
            cur = tx.execute(
                "UPDATE ledger_items SET status = 'running', attempt_count = attempt_count + 1,"
                " lease_owner = ?, lease_expires_at = ?, started_at = ?, finished_at = NULL, duration_ms = NULL"
                " WHERE control_id = ? AND (status = 'pending'"
                "  OR (status = 'error' AND attempt_count < ?)"
                "  OR (status = 'running' AND lease_expires_at <= ? AND attempt_count < ?))",
                (owner, expires_ts, now_ts, control_id, self.max_attempts, now_ts, self.max_attempts),
            )
            if cur.rowcount == 1:
                return self._fetch(tx, control_id)
            current = self._fetch(tx, control_id)
            if (
                current is not None
                and current.status is Status.RUNNING
                and current.lease_expires_at is not None
                and current.lease_expires_at <= now
            ):
                tx.execute(
                    "UPDATE ledger_items SET status = 'quarantined', error_message = ?, lease_expires_at = NULL,"
                    " finished_at = ?, stats = ?"
                    " WHERE control_id = ? AND status = 'running' AND lease_expires_at <= ? AND attempt_count >= ?",
                    (
                        expired_lease_message(current, self.max_attempts),
                        now_ts,
                        encode_stats(with_last_error(current.stats, current.error_message)),
                        control_id,
                        now_ts,
                        self.max_attempts,
                    ),
                )
            elif current is not None and current.status is Status.ERROR and current.attempt_count >= self.max_attempts:
                tx.execute(
                    "UPDATE ledger_items SET status = 'quarantined', error_message = ?, finished_at = ?"
                    " WHERE control_id = ? AND status = 'error' AND attempt_count = ?",
                    (exhausted_error_message(current, self.max_attempts), now_ts, control_id, current.attempt_count),
                )
            return None

    def _held_update(
        self,
        control_id: str,
        owner: str,
        now: datetime,
        assignments: Callable[[LedgerItem], tuple[str, tuple[Any, ...]]],
    ) -> LedgerItem:
        """Apply ``assignments(current)`` only while ``owner`` holds an unexpired lease; else LeaseLost."""
        with self._transaction() as tx:
            current = self._fetch(tx, control_id)
            if current is None:
                raise LeaseLost(lease_lost_message(control_id, owner, current, now))
            sql, params = assignments(current)
            cur = tx.execute(
                f"UPDATE ledger_items SET {sql}"
                " WHERE control_id = ? AND status = 'running' AND lease_owner = ? AND lease_expires_at > ?",
                (*params, control_id, owner, encode_ts(now)),
            )
            if cur.rowcount != 1:
                raise LeaseLost(lease_lost_message(control_id, owner, current, now))
            updated = self._fetch(tx, control_id)
            assert updated is not None
            return updated

    def renew(self, control_id: str, owner: str, lease_seconds: int, now: datetime | None = None) -> LedgerItem:
        validate_owner(owner)
        now = resolve_now(now)
        expires_ts = encode_ts(lease_until(now, lease_seconds))
        return self._held_update(control_id, owner, now, lambda _: ("lease_expires_at = ?", (expires_ts,)))

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
        validate_owner(owner)
        now = resolve_now(now)

        def success(current: LedgerItem) -> tuple[str, tuple[Any, ...]]:
            merged = completed_stats(current, stats)
            return (
                "status = 'success', record_count = ?, rejected_count = ?, output_key = ?, duration_ms = ?,"
                " finished_at = ?, lease_expires_at = NULL, error_message = NULL, stats = ?",
                (record_count, rejected_count, output_key, duration_ms, encode_ts(now), encode_stats(merged)),
            )

        return self._held_update(control_id, owner, now, success)

    def fail(
        self,
        control_id: str,
        owner: str,
        error_message: str,
        *,
        permanent: bool = False,
        now: datetime | None = None,
    ) -> LedgerItem:
        """-> quarantined if ``permanent`` or this was attempt ``max_attempts``; else -> error."""
        validate_owner(owner)
        now = resolve_now(now)
        return self._held_update(
            control_id,
            owner,
            now,
            lambda current: (
                "status = ?, error_message = ?, finished_at = ?, lease_expires_at = NULL",
                (failed_status(current, permanent, self.max_attempts).value, error_message, encode_ts(now)),
            ),
        )

    def requeue(
        self,
        control_ids: Iterable[str] | None = None,
        *,
        table_name: str | None = None,
        layer: str | None = None,
        statuses: Iterable[Status] = (Status.QUARANTINED, Status.ERROR),
        now: datetime | None = None,
    ) -> list[LedgerItem]:
        """All matching items -> pending with attempts reset, in one transaction (all or none).
        The cleared error message is kept in ``stats['last_error']``."""
        status_values = [Status(s).value for s in statuses]
        if not status_values:
            return []
        resolve_now(now)  # validates an injected now; requeue itself records no timestamp
        where, params = _filters(layer=layer, table_name=table_name)
        where += f" AND status IN ({', '.join('?' for _ in status_values)})"
        params.extend(status_values)
        if control_ids is not None:
            ids = list(dict.fromkeys(control_ids))
            if not ids:
                return []
            where += f" AND control_id IN ({', '.join('?' for _ in ids)})"
            params.extend(ids)
        requeued: list[LedgerItem] = []
        with self._transaction() as tx:
            rows = tx.execute(f"SELECT * FROM ledger_items {where} ORDER BY created_at, control_id", params)
            for item in [item_from_record(dict(r)) for r in rows]:
                cur = tx.execute(
                    "UPDATE ledger_items SET status = 'pending', attempt_count = 0, error_message = NULL,"
                    " lease_owner = NULL, lease_expires_at = NULL, stats = ?"
                    " WHERE control_id = ? AND status = ?",
                    (encode_stats(requeued_stats(item.stats, item.error_message)), item.control_id, item.status.value),
                )
                if cur.rowcount == 1:
                    requeued.append(self._fetch(tx, item.control_id))  # type: ignore[arg-type]
        return requeued


def _filters(
    *, layer: str | None = None, table_name: str | None = None, status: Status | None = None
) -> tuple[str, list[Any]]:
    clauses, params = ["1 = 1"], []
    for column, value in (("layer", layer), ("table_name", table_name)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if status is not None:
        clauses.append("status = ?")
        params.append(Status(status).value)
    return "WHERE " + " AND ".join(clauses), params
