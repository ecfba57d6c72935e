"""The control ledger's contract (DESIGN section 3), run against both backends.

``sqlite``: a SqliteLedger file under tmp_path. ``dynamo``: a DynamoLedger on a moto server on
127.0.0.1 (the ``aws_env`` fixture sets AWS_ENDPOINT_URL; nothing here passes an endpoint).
Time is injected through ``now=`` instead of sleeping.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import boto3
import pytest

from datamaster_assets.lake import sqlite_ledger as sqlite_ledger_module
from datamaster_assets.lake.batching import plan_batches
from datamaster_assets.lake.dynamo_ledger import STATUS_INDEX, DynamoLedger, create_ledger_table
from datamaster_assets.lake.ledger import LeaseLost, Ledger, Registration, Status, make_control_id
from datamaster_assets.lake.sqlite_ledger import SqliteLedger

TABLE = "datamaster-control-test"
T0 = datetime(2024, 5, 1, 6, 0, tzinfo=timezone.utc)
LEASE = 60


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def reg(name: str, *, table: str = "review", layer: str = "bronze", checksum: str = "c0") -> Registration:
    return Registration(
        layer=layer,
        table_name=table,
        object_key=f"raw/{table}/{name}.json.gz",
        checksum=checksum,
        file_format="json",
        file_size=1234,
        record_count=63,
    )


LedgerFactory = Callable[..., Ledger]


@pytest.fixture(params=["sqlite", pytest.param("dynamo", marks=pytest.mark.aws)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def atomic_moto_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """DynamoDB applies a conditional write atomically; moto's threaded server does not (two
    concurrent UpdateItems can both pass the condition check before either writes). Serialise
    moto's write handlers so the concurrency tests exercise our conditions, not moto's races."""
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.RLock()
    for name in ("put_item", "update_item", "delete_item", "transact_write_items"):
        original = getattr(DynamoDBBackend, name)

        def locked(self, *args, __original=original, **kwargs):
            with lock:
                return __original(self, *args, **kwargs)

        monkeypatch.setattr(DynamoDBBackend, name, locked)


@pytest.fixture
def make_ledger(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> LedgerFactory:
    """Ledgers over ONE store (file / table) with a chosen max_attempts, like several workers."""
    if backend == "sqlite":
        return lambda max_attempts=3: SqliteLedger(tmp_path / "ledger.sqlite", max_attempts=max_attempts)
    request.getfixturevalue("aws_env")
    request.getfixturevalue("atomic_moto_writes")
    create_ledger_table(boto3.client("dynamodb"), TABLE)
    return lambda max_attempts=3: DynamoLedger(TABLE, max_attempts=max_attempts)


@pytest.fixture
def ledger(make_ledger: LedgerFactory) -> Ledger:
    return make_ledger()


def test_backend_satisfies_the_protocol(ledger: Ledger) -> None:
    assert isinstance(ledger, Ledger)
    assert ledger.max_attempts == 3


# ---- registration -----------------------------------------------------------------------------


def test_registering_the_same_object_twice_is_a_no_op(ledger: Ledger) -> None:
    first, created = ledger.register(reg("a"), now=T0)
    assert created and first.status is Status.PENDING and first.attempt_count == 0
    assert first.control_id == make_control_id("bronze", "raw/review/a.json.gz", "c0")
    assert first.created_at == T0 and first.record_count == 63 and first.file_size == 1234
    claimed = ledger.claim(first.control_id, "w1", LEASE, now=at(1))
    assert claimed is not None

    again, created_again = ledger.register(reg("a"), now=at(2))
    assert not created_again
    # the running item is untouched: still running, same attempt, same created_at
    assert again.status is Status.RUNNING and again.attempt_count == 1 and again.created_at == T0
    assert ledger.counts() == {("bronze", "review", "running"): 1}


def test_same_key_with_new_content_is_a_new_item(ledger: Ledger) -> None:
    old, _ = ledger.register(reg("a", checksum="c0"), now=T0)
    new, created = ledger.register(reg("a", checksum="c1"), now=at(1))
    assert created and new.control_id != old.control_id
    assert {i.checksum for i in ledger.items(table_name="review")} == {"c0", "c1"}


def test_items_for_keys_finds_every_registration_of_those_keys_only(ledger: Ledger) -> None:
    ledger.register(reg("a", checksum="c0"), now=T0)
    ledger.register(reg("a", checksum="c1"), now=at(1))  # the same key, new content
    ledger.register(reg("b"), now=at(2))
    ledger.register(reg("a", layer="silver"), now=at(3))
    found = ledger.items_for_keys("bronze", ["raw/review/a.json.gz", "raw/review/nope.json.gz"])
    assert sorted((i.object_key, i.checksum, i.layer) for i in found) == [
        ("raw/review/a.json.gz", "c0", "bronze"), ("raw/review/a.json.gz", "c1", "bronze")]
    assert ledger.items_for_keys("bronze", []) == []


def test_register_many_reports_created_per_registration(ledger: Ledger) -> None:
    ledger.register(reg("known"), now=T0)
    results = ledger.register_many([reg("x"), reg("known"), reg("y"), reg("x")], now=at(1))
    assert [(item.object_key, created) for item, created in results] == [
        ("raw/review/x.json.gz", True),
        ("raw/review/known.json.gz", False),
        ("raw/review/y.json.gz", True),
        ("raw/review/x.json.gz", False),
    ]
    assert ledger.counts() == {("bronze", "review", "pending"): 3}
    assert ledger.register_many([]) == []


def test_concurrent_registration_of_the_same_objects_creates_each_once(ledger: Ledger) -> None:
    batch = [reg(f"f{i}") for i in range(20)]
    barrier = threading.Barrier(2)
    created: list[int] = []

    def registrar() -> None:
        barrier.wait()
        created.append(sum(was_created for _, was_created in ledger.register_many(batch, now=T0)))

    threads = [threading.Thread(target=registrar) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(created) == 20
    assert ledger.counts() == {("bronze", "review", "pending"): 20}


def test_invalid_registration_is_refused_and_nothing_is_written(ledger: Ledger) -> None:
    bad = Registration("gold", "review", "raw/review/z.json.gz", "c0", "json", 10)
    with pytest.raises(ValueError, match=r"raw/review/z.json.gz.*layer='gold'"):
        ledger.register_many([reg("ok"), bad])
    assert ledger.counts() == {}


def test_naive_now_is_refused(ledger: Ledger) -> None:
    item, _ = ledger.register(reg("a"))
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.claim(item.control_id, "w1", LEASE, now=datetime(2024, 5, 1, 6, 0))
    assert ledger.get(item.control_id).status is Status.PENDING


# ---- claims and leases ------------------------------------------------------------------------


def test_claim_records_owner_lease_and_attempt(ledger: Ledger) -> None:
    item, _ = ledger.register(reg("a"), now=T0)
    claimed = ledger.claim(item.control_id, "run-1", LEASE, now=at(5))
    assert claimed.status is Status.RUNNING
    assert claimed.attempt_count == 1
    assert claimed.lease_owner == "run-1"
    assert claimed.started_at == at(5)
    assert claimed.lease_expires_at == at(5 + LEASE)
    assert ledger.claim(item.control_id, "run-2", LEASE, now=at(6)) is None
    assert ledger.claim("b-doesnotexist", "run-2", LEASE, now=at(6)) is None


@pytest.mark.parametrize("rounds", [30])
def test_two_concurrent_claimers_exactly_one_wins(ledger: Ledger, rounds: int) -> None:
    ids = [item.control_id for item, _ in ledger.register_many([reg(f"f{i}") for i in range(rounds)], now=T0)]
    for control_id in ids:
        barrier = threading.Barrier(2)
        results: dict[str, object] = {}

        def claimer(owner: str) -> None:
            barrier.wait()
            results[owner] = ledger.claim(control_id, owner, LEASE, now=at(1))

        threads = [threading.Thread(target=claimer, args=(owner,)) for owner in ("w1", "w2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [owner for owner, claimed in results.items() if claimed is not None]
        assert len(winners) == 1, f"{control_id}: winners {winners}"
        stored = ledger.get(control_id)
        assert stored.lease_owner == winners[0] and stored.attempt_count == 1


def test_expired_lease_makes_item_claimable_and_old_owner_loses(ledger: Ledger) -> None:
    item, _ = ledger.register(reg("a"), now=T0)
    ledger.claim(item.control_id, "w1", LEASE, now=at(0))
    assert ledger.claimable("bronze", now=at(LEASE - 1)) == []
    assert ledger.claim(item.control_id, "w2", LEASE, now=at(LEASE - 1)) is None

    assert [i.control_id for i in ledger.claimable("bronze", now=at(LEASE))] == [item.control_id]
    taken = ledger.claim(item.control_id, "w2", LEASE, now=at(LEASE + 1))
    assert taken.lease_owner == "w2" and taken.attempt_count == 2

    for late_call in (
        lambda: ledger.complete(
            item.control_id, "w1", record_count=1, rejected_count=0, output_key="x", duration_ms=1, now=at(LEASE + 2)
        ),
        lambda: ledger.renew(item.control_id, "w1", LEASE, now=at(LEASE + 2)),
        lambda: ledger.fail(item.control_id, "w1", "late", now=at(LEASE + 2)),
    ):
        with pytest.raises(LeaseLost, match="held by 'w2'"):
            late_call()
    done = ledger.complete(
        item.control_id, "w2", record_count=63, rejected_count=2, output_key="bronze/x.parquet",
        duration_ms=120, stats={"batches": 1}, now=at(LEASE + 3),
    )  # fmt: skip
    assert (done.status, done.record_count, done.rejected_count) == (Status.SUCCESS, 63, 2)
    assert (done.output_key, done.duration_ms, done.finished_at) == ("bronze/x.parquet", 120, at(LEASE + 3))
    assert done.stats == {"batches": 1} and done.lease_expires_at is None


def test_owner_cannot_finish_after_its_own_lease_expired(ledger: Ledger) -> None:
    item, _ = ledger.register(reg("a"), now=T0)
    ledger.claim(item.control_id, "w1", LEASE, now=at(0))
    with pytest.raises(LeaseLost, match="expired"):
        ledger.complete(item.control_id, "w1", record_count=1, rejected_count=0, output_key=None, duration_ms=1, now=at(LEASE))
    assert ledger.get(item.control_id).status is Status.RUNNING


def test_renew_extends_the_lease(ledger: Ledger) -> None:
    item, _ = ledger.register(reg("a"), now=T0)
    ledger.claim(item.control_id, "w1", LEASE, now=at(0))
    renewed = ledger.renew(item.control_id, "w1", LEASE, now=at(50))
    assert renewed.lease_expires_at == at(50 + LEASE)
    assert ledger.claim(item.control_id, "w2", LEASE, now=at(LEASE + 10)) is None
    done = ledger.complete(item.control_id, "w1", record_count=1, rejected_count=0, output_key=None, duration_ms=1, now=at(LEASE + 20))
    assert done.status is Status.SUCCESS and done.output_key is None
    with pytest.raises(LeaseLost, match="success"):
        ledger.renew(item.control_id, "w1", LEASE, now=at(LEASE + 21))


# ---- failures, quarantine, requeue ------------------------------------------------------------


def test_attempts_are_bounded_then_quarantined(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger(max_attempts=3)
    item, _ = ledger.register(reg("a"), now=T0)
    statuses = []
    for attempt in range(1, 4):
        claimed = ledger.claim(item.control_id, f"w{attempt}", LEASE, now=at(attempt * 10))
        assert claimed.attempt_count == attempt
        statuses.append(ledger.fail(item.control_id, f"w{attempt}", f"boom {attempt}", now=at(attempt * 10 + 1)).status)
    assert statuses == [Status.ERROR, Status.ERROR, Status.QUARANTINED]
    final = ledger.get(item.control_id)
    assert final.error_message == "boom 3" and final.attempt_count == 3 and final.lease_expires_at is None
    assert ledger.claim(item.control_id, "w4", LEASE, now=at(100)) is None
    assert ledger.claimable("bronze", now=at(100)) == []


def test_an_error_past_this_processs_max_attempts_is_quarantined_not_stranded(make_ledger: LedgerFactory) -> None:
    """A worker allowing 5 attempts fails an item twice; a process allowing 2 (another
    DATAMASTER_MAX_ATTEMPTS) must not leave it in error for nobody: its claim quarantines it."""
    lenient, strict = make_ledger(max_attempts=5), make_ledger(max_attempts=2)
    item, _ = lenient.register(reg("a"), now=T0)
    for attempt in (1, 2):
        lenient.claim(item.control_id, "lambda", LEASE, now=at(attempt * 10))
        assert lenient.fail(item.control_id, "lambda", "S3 throttled", now=at(attempt * 10 + 1)).status == Status.ERROR
    assert [i.control_id for i in strict.claimable("bronze", now=at(30))] == [item.control_id]
    assert strict.claim(item.control_id, "dagster", LEASE, now=at(30)) is None
    final = strict.get(item.control_id)
    assert (final.status, final.attempt_count) == (Status.QUARANTINED, 2)
    assert final.error_message.startswith("S3 throttled") and "this process allows 2" in final.error_message
    assert strict.claimable("bronze", now=at(31)) == [] and lenient.claimable("bronze", now=at(31)) == []


def test_error_item_keeps_last_error_while_retrying(ledger: Ledger) -> None:
    item, _ = ledger.register(reg("a"), now=T0)
    ledger.claim(item.control_id, "w1", LEASE, now=at(1))
    ledger.fail(item.control_id, "w1", "S3 throttled", now=at(2))
    assert [i.control_id for i in ledger.claimable("bronze", now=at(3))] == [item.control_id]
    retry = ledger.claim(item.control_id, "w2", LEASE, now=at(3))
    assert retry.attempt_count == 2 and retry.error_message == "S3 throttled"
    done = ledger.complete(item.control_id, "w2", record_count=5, rejected_count=0, output_key="o", duration_ms=9, stats={"n": 1}, now=at(4))
    assert done.error_message is None and done.stats == {"n": 1, "last_error": "S3 throttled"}


class LostFirstResponse:
    """A DynamoDB client whose next UpdateItem is applied but its response lost, so botocore's
    retry sends it again (and the retry then fails its condition)."""

    def __init__(self, client):
        self.client, self.armed = client, False

    def __getattr__(self, name):
        return getattr(self.client, name)

    def update_item(self, **kwargs):
        if self.armed:
            self.armed = False
            self.client.update_item(**kwargs)  # applied; its response never arrives
        return self.client.update_item(**kwargs)  # the retry


@pytest.mark.aws
def test_dynamo_claim_whose_response_was_lost_is_still_won(aws_env) -> None:
    """botocore resends an UpdateItem whose response was lost; the resent claim fails its condition
    because the first one was applied. The claim must still be this owner's."""
    real = boto3.client("dynamodb")
    create_ledger_table(real, TABLE)
    client = LostFirstResponse(real)
    ledger = DynamoLedger(TABLE, client=client)
    item, _ = ledger.register(reg("a"), now=T0)
    client.armed = True
    claimed = ledger.claim(item.control_id, "w1", LEASE, now=at(1))
    assert claimed is not None and (claimed.status, claimed.lease_owner, claimed.attempt_count) == (Status.RUNNING, "w1", 1)
    assert ledger.claim(item.control_id, "w2", LEASE, now=at(1)) is None  # still nobody else's


@pytest.mark.aws
def test_dynamo_complete_and_fail_whose_response_was_lost_still_land(aws_env) -> None:
    create_ledger_table(boto3.client("dynamodb"), TABLE)
    client = LostFirstResponse(boto3.client("dynamodb"))
    ledger = DynamoLedger(TABLE, client=client, max_attempts=3)
    done, failed = (ledger.register(reg(name), now=T0)[0] for name in ("done", "failed"))
    for item in (done, failed):
        ledger.claim(item.control_id, "w1", LEASE, now=at(1))
    client.armed = True
    completed = ledger.complete(done.control_id, "w1", record_count=63, rejected_count=0, output_key="bronze/x.parquet",
                                duration_ms=5, now=at(2))
    assert (completed.status, completed.output_key) == (Status.SUCCESS, "bronze/x.parquet")
    client.armed = True
    errored = ledger.fail(failed.control_id, "w1", "boom", now=at(2))
    assert (errored.status, errored.error_message) == (Status.ERROR, "boom")
    # a write that really lost to someone else still says so
    ledger.claim(failed.control_id, "w1", LEASE, now=at(3))
    assert ledger.claim(failed.control_id, "w2", LEASE, now=at(3 + LEASE + 1)) is not None
    client.armed = True
    with pytest.raises(LeaseLost):
        ledger.fail(failed.control_id, "w1", "late", now=at(3 + LEASE + 2))


@pytest.mark.aws
def test_dynamo_register_many_reads_known_items_instead_of_writing_them(aws_env) -> None:
    """A reconcile re-lists every raw object: known ones are found with BatchGetItem (100 keys a
    call, unprocessed keys asked again), only new ones are written."""
    real = boto3.client("dynamodb")
    create_ledger_table(real, TABLE)
    calls: list[str] = []
    real.meta.events.register("before-call.dynamodb.*", lambda model, **_: calls.append(model.name))

    class ThrottledOnce:
        def __init__(self, client):
            self.client, self.throttled = client, False

        def __getattr__(self, name):
            return getattr(self.client, name)

        def batch_get_item(self, RequestItems):
            if self.throttled:
                return self.client.batch_get_item(RequestItems=RequestItems)
            self.throttled = True  # the first call comes back with half its keys unprocessed
            keys = RequestItems[TABLE]["Keys"]
            half = len(keys) // 2
            response = self.client.batch_get_item(RequestItems={TABLE: {**RequestItems[TABLE], "Keys": keys[:half]}})
            response["UnprocessedKeys"] = {TABLE: {**RequestItems[TABLE], "Keys": keys[half:]}}
            return response

    client = ThrottledOnce(real)
    ledger = DynamoLedger(TABLE, client=client)
    known = [reg(f"k{i}") for i in range(250)]
    assert all(created for _, created in ledger.register_many(known, now=T0))
    calls.clear()
    client.throttled = False
    fresh = [reg(f"n{i}") for i in range(3)]
    results = ledger.register_many(known + fresh, now=at(5))
    assert [created for _, created in results] == [False] * 250 + [True] * 3
    assert [item.created_at for item, _ in results[:250]] == [T0] * 250  # left untouched
    assert calls.count("PutItem") == 3
    assert calls.count("BatchGetItem") == 4  # 100 + 100 + 53 keys, one of them asked twice


def test_permanent_failure_quarantines_at_once(ledger: Ledger) -> None:
    item, _ = ledger.register(reg("a"), now=T0)
    ledger.claim(item.control_id, "w1", LEASE, now=at(1))
    failed = ledger.fail(item.control_id, "w1", "line 7: not JSON", permanent=True, now=at(2))
    assert failed.status is Status.QUARANTINED and failed.attempt_count == 1
    assert failed.error_message == "line 7: not JSON" and failed.finished_at == at(2)


def test_requeue_brings_quarantined_back_with_attempts_reset(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger(max_attempts=1)
    bad, _ = ledger.register(reg("bad"), now=T0)
    beer, _ = ledger.register(reg("beer1", table="beer"), now=at(1))
    ok, _ = ledger.register(reg("ok"), now=at(2))
    for item in (bad, beer):
        ledger.claim(item.control_id, "w1", LEASE, now=at(3))
        ledger.fail(item.control_id, "w1", f"{item.table_name} broke", now=at(4))
    ledger.claim(ok.control_id, "w1", LEASE, now=at(3))
    ledger.complete(ok.control_id, "w1", record_count=1, rejected_count=0, output_key="o", duration_ms=1, now=at(4))

    requeued = ledger.requeue(table_name="review", now=at(5))
    assert [i.control_id for i in requeued] == [bad.control_id]
    back = ledger.get(bad.control_id)
    assert (back.status, back.attempt_count, back.error_message) == (Status.PENDING, 0, None)
    assert back.stats["last_error"] == "review broke" and back.lease_expires_at is None
    # attempts are back to 0, yet the sensor must ask for a run Dagster has not seen (run keys are never rerun)
    assert back.stats["requeues"] == 1
    assert plan_batches([back], max_files=1, max_bytes=10**9)[0].run_key != \
        plan_batches([bad], max_files=1, max_bytes=10**9)[0].run_key
    assert ledger.get(beer.control_id).status is Status.QUARANTINED  # other table untouched
    assert ledger.get(ok.control_id).status is Status.SUCCESS  # success is never requeued by default
    assert ledger.claim(bad.control_id, "w2", LEASE, now=at(6)).attempt_count == 1

    assert [i.control_id for i in ledger.requeue([beer.control_id, ok.control_id])] == [beer.control_id]
    assert ledger.requeue([ok.control_id], statuses=[Status.SUCCESS])[0].status is Status.PENDING
    assert ledger.requeue([]) == []


# ---- listing ----------------------------------------------------------------------------------


def test_claimable_is_oldest_first_and_filtered(ledger: Ledger) -> None:
    newest, _ = ledger.register(reg("newest"), now=at(30))
    oldest, _ = ledger.register(reg("oldest"), now=at(10))
    beer, _ = ledger.register(reg("beer", table="beer"), now=at(20))
    silver, _ = ledger.register(reg("s", layer="silver"), now=at(5))
    held, _ = ledger.register(reg("held"), now=at(1))
    expired, _ = ledger.register(reg("expired"), now=at(2))
    done, _ = ledger.register(reg("done"), now=at(3))
    ledger.claim(held.control_id, "w", 1000, now=at(40))
    ledger.claim(expired.control_id, "w", 10, now=at(40))
    ledger.claim(done.control_id, "w", 10, now=at(40))
    ledger.complete(done.control_id, "w", record_count=1, rejected_count=0, output_key="o", duration_ms=1, now=at(41))

    now = at(60)
    assert [i.control_id for i in ledger.claimable("bronze", now=now)] == [
        expired.control_id, oldest.control_id, beer.control_id, newest.control_id,
    ]  # fmt: skip
    assert [i.control_id for i in ledger.claimable("bronze", "review", now=now)] == [
        expired.control_id, oldest.control_id, newest.control_id,
    ]  # fmt: skip
    assert [i.control_id for i in ledger.claimable("bronze", now=now, limit=2)] == [expired.control_id, oldest.control_id]
    assert [i.control_id for i in ledger.claimable("silver", now=now)] == [silver.control_id]
    assert ledger.claimable("bronze", "profile", now=now) == []


def test_items_and_counts(ledger: Ledger) -> None:
    a, _ = ledger.register(reg("a"), now=at(1))
    b, _ = ledger.register(reg("b"), now=at(2))
    ledger.register(reg("c", table="beer"), now=at(3))
    ledger.register(reg("s", layer="silver"), now=at(4))
    ledger.claim(a.control_id, "w", LEASE, now=at(5))
    ledger.claim(b.control_id, "w", LEASE, now=at(5))
    ledger.fail(b.control_id, "w", "x", permanent=True, now=at(6))

    assert ledger.counts() == {
        ("bronze", "review", "running"): 1,
        ("bronze", "review", "quarantined"): 1,
        ("bronze", "beer", "pending"): 1,
        ("silver", "review", "pending"): 1,
    }
    assert [i.object_key for i in ledger.items(layer="bronze")] == [
        "raw/review/a.json.gz", "raw/review/b.json.gz", "raw/beer/c.json.gz",
    ]  # fmt: skip
    assert [i.control_id for i in ledger.items(status=Status.QUARANTINED)] == [b.control_id]
    assert [i.object_key for i in ledger.items(status=Status.PENDING, layer="bronze")] == ["raw/beer/c.json.gz"]
    assert len(ledger.items(limit=2)) == 2
    assert ledger.items(table_name="profile") == []


# ---- fault injection --------------------------------------------------------------------------


def test_worker_crash_mid_item_is_recovered_after_lease_expiry(ledger: Ledger) -> None:
    item, _ = ledger.register(reg("a"), now=T0)
    ledger.claim(item.control_id, "crashed-run", LEASE, now=at(1))  # ... and the worker dies
    assert ledger.claimable("bronze", now=at(LEASE)) == []
    recovered = ledger.claimable("bronze", now=at(LEASE + 1))
    assert [i.control_id for i in recovered] == [item.control_id]
    retry = ledger.claim(item.control_id, "rescue-run", LEASE, now=at(LEASE + 1))
    assert retry.attempt_count == 2
    done = ledger.complete(item.control_id, "rescue-run", record_count=63, rejected_count=0, output_key="o", duration_ms=5, now=at(LEASE + 2))
    assert done.status is Status.SUCCESS


def test_crash_on_the_last_attempt_quarantines_instead_of_running_again(make_ledger: LedgerFactory) -> None:
    ledger = make_ledger(max_attempts=2)
    item, _ = ledger.register(reg("a"), now=T0)
    ledger.claim(item.control_id, "w1", LEASE, now=at(0))
    ledger.fail(item.control_id, "w1", "flaky", now=at(1))
    ledger.claim(item.control_id, "w2", LEASE, now=at(2))  # last attempt; w2 crashes
    later = at(2 + LEASE + 1)
    assert [i.control_id for i in ledger.claimable("bronze", now=later)] == [item.control_id]
    assert ledger.claim(item.control_id, "w3", LEASE, now=later) is None
    final = ledger.get(item.control_id)
    assert final.status is Status.QUARANTINED and final.attempt_count == 2
    assert "'w2' expired on attempt 2 of 2" in final.error_message
    assert final.stats["last_error"] == "flaky"
    assert ledger.claimable("bronze", now=later) == []


# ---- SQLite only: processes and transactions --------------------------------------------------


def _claim_all(path: str, ids: list[str], owner: str, start: multiprocessing.synchronize.Event, out) -> None:
    ledger = SqliteLedger(path)
    start.wait()
    out.put({cid: ledger.claim(cid, owner, LEASE, now=at(1)) is not None for cid in ids})


def test_sqlite_two_processes_claiming_the_same_items_each_win_exactly_once(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    ledger = SqliteLedger(path)
    ids = [item.control_id for item, _ in ledger.register_many([reg(f"f{i}") for i in range(60)], now=T0)]
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(path, ids, owner, start, out)) for owner in ("p1", "p2")]
    for p in procs:
        p.start()
    start.set()
    won = [out.get(timeout=60), out.get(timeout=60)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    for cid in ids:
        assert won[0][cid] != won[1][cid], f"{cid}: both or neither claimed it"
    assert ledger.counts() == {("bronze", "review", "running"): 60}
    assert {i.attempt_count for i in ledger.items()} == {1}
    assert sum(won[0].values()) + sum(won[1].values()) == 60


def _register_all(path: str, names: list[str], start: multiprocessing.synchronize.Event, out) -> None:
    ledger = SqliteLedger(path)
    start.wait()
    out.put(sum(created for _, created in ledger.register_many([reg(n) for n in names], now=T0)))


def test_sqlite_two_processes_registering_the_same_objects_create_each_once(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    SqliteLedger(path)
    names = [f"f{i}" for i in range(50)]
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_register_all, args=(path, names, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    created = out.get(timeout=60) + out.get(timeout=60)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert created == 50
    assert SqliteLedger(path).counts() == {("bronze", "review", "pending"): 50}


def _hold_write_lock_uncommitted(path: str, control_id: str, locked: multiprocessing.synchronize.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE ledger_items SET status = 'success', attempt_count = 9 WHERE control_id = ?", (control_id,))
    locked.set()
    threading.Event().wait(60)  # killed long before this returns


def test_sqlite_process_killed_inside_a_transaction_leaves_ledger_consistent(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.sqlite")
    ledger = SqliteLedger(path)
    item, _ = ledger.register(reg("a"), now=T0)
    ctx = multiprocessing.get_context("fork")
    locked = ctx.Event()
    child = ctx.Process(target=_hold_write_lock_uncommitted, args=(path, item.control_id, locked))
    child.start()
    assert locked.wait(30)
    os.kill(child.pid, signal.SIGKILL)
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL

    assert ledger.get(item.control_id).status is Status.PENDING  # uncommitted write is gone
    claimed = ledger.claim(item.control_id, "w1", LEASE, now=at(1))  # and the write lock was released
    assert claimed is not None and claimed.attempt_count == 1
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sqlite_exception_between_statements_rolls_the_transition_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite", max_attempts=1)
    a, _ = ledger.register(reg("a"), now=T0)
    b, _ = ledger.register(reg("b"), now=at(1))
    for item in (a, b):
        ledger.claim(item.control_id, "w", LEASE, now=at(2))
        ledger.fail(item.control_id, "w", "bad", now=at(3))

    real = sqlite_ledger_module.requeued_stats
    calls = []

    def crash_on_second_item(stats, error_message):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected crash after the first UPDATE")
        return real(stats, error_message)

    monkeypatch.setattr(sqlite_ledger_module, "requeued_stats", crash_on_second_item)
    with pytest.raises(RuntimeError, match="injected"):
        ledger.requeue()
    # all-or-nothing: the first item's UPDATE was rolled back with the rest
    assert [i.status for i in ledger.items()] == [Status.QUARANTINED, Status.QUARANTINED]

    # a crash after a claim's UPDATE but before it returns leaves the item unclaimed
    c, _ = ledger.register(reg("c"), now=at(4))
    monkeypatch.setattr(SqliteLedger, "_fetch", staticmethod(lambda conn, cid: (_ for _ in ()).throw(OSError("disk gone"))))
    with pytest.raises(OSError):
        ledger.claim(c.control_id, "w", LEASE, now=at(5))
    monkeypatch.undo()
    assert ledger.get(c.control_id).status is Status.PENDING and ledger.get(c.control_id).attempt_count == 0
    assert len(ledger.requeue()) == 2  # and the connection is usable again (no transaction left open)


def test_sqlite_ledger_pickles_and_reopens(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite", max_attempts=4)
    item, _ = ledger.register(reg("a"), now=T0)
    copy = pickle.loads(pickle.dumps(ledger))
    assert copy.max_attempts == 4 and copy.get(item.control_id) == item


def test_sqlite_stores_readable_utc_text(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.sqlite")
    item, _ = ledger.register(reg("a"), now=datetime(2024, 5, 1, 8, 0, tzinfo=timezone(timedelta(hours=2))))
    row = sqlite3.connect(tmp_path / "ledger.sqlite").execute("SELECT created_at, stats FROM ledger_items").fetchone()
    assert row == ("2024-05-01T06:00:00.000000Z", "{}")
    assert item.created_at == T0 and item.created_at.tzinfo is not None
    mode = sqlite3.connect(tmp_path / "ledger.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


# ---- DynamoDB only: table bootstrap -----------------------------------------------------------


@pytest.mark.aws
def test_create_ledger_table_is_idempotent_and_on_demand(aws_env: str) -> None:
    client = boto3.client("dynamodb")
    first = create_ledger_table(client, TABLE)
    second = create_ledger_table(client, TABLE)
    assert first["TableName"] == second["TableName"] == TABLE
    assert second["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    gsi = {g["IndexName"]: g for g in second["GlobalSecondaryIndexes"]}[STATUS_INDEX]
    assert [k["AttributeName"] for k in gsi["KeySchema"]] == ["status", "created_at"]
    assert client.list_tables()["TableNames"] == [TABLE]


@pytest.mark.aws
def test_create_ledger_table_refuses_a_foreign_table(aws_env: str) -> None:
    client = boto3.client("dynamodb")
    client.create_table(
        TableName="other",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "control_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "control_id", "KeyType": "HASH"}],
    )
    with pytest.raises(ValueError, match="'other' exists but has no"):
        create_ledger_table(client, "other")
