"""The deterministic change scenario landed by ``seed_raw(changes=True)`` (docs/data.md).

The builder produces the change files (as ``Change`` lists) and, from the same changes, the
expected final silver state of every key they touch: the change with the latest timestamp wins
(insert/update/load -> live with that row image, delete -> soft-deleted with its before-image).
That rule is DESIGN section 6; the scenario only guarantees every interesting case occurs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datamaster_assets.seed.cdc import TXN_SIZE, Change, create_table_control_line, from_epoch_us, to_epoch_us
from datamaster_assets.seed.dims import DIM_KEYS, load_dim
from datamaster_assets.seed.review_files import updated_rows
from datamaster_assets.seed.reviews import REVIEW_SCHEMA, draw_reviews, review_model

MIN_REVIEWS_FOR_CHANGES = 100
_STREAM_SCENARIO = 2
# Microseconds between consecutive changes inside one change file.
CHANGE_STEP_US = 1_000

# Review change counts (fixed, so tests can assert exact numbers).
REVIEW_UPDATES = 40  # R1 updates of existing reviews
REVIEW_DELETES = 12  # R1 deletes of existing reviews
REVIEW_INSERTS = 30  # R1 inserts of new ids
REVIEW_LOADS = 20  # R3 load of new ids
REVIEW_LOAD_OVERLAP = 10  # of which R4 inserts again (newer image wins)
REVIEW_LATE_INSERTS = 10  # R4 brand-new ids


@dataclass(frozen=True)
class ExpectedRow:
    """Final state of one key after every change file is applied."""

    key: int
    deleted: bool
    values: Mapping[str, Any]  # the winning change's full row image (None = null); review_time in epoch seconds
    change_ts: datetime  # the winning change's timestamp: silver's updated_at, or deleted_at when deleted
    new: bool  # the key did not exist before the changes


@dataclass(frozen=True)
class TableScenario:
    table: str
    key_column: str
    base_rows: int  # rows before the changes (initial load / extract)
    updated: tuple[int, ...]  # pre-existing keys changed by updates, live at the end
    deleted: tuple[int, ...]  # keys deleted and still deleted at the end (includes insert-then-delete)
    revived: tuple[int, ...]  # deleted, then re-inserted: live
    updated_after_delete: tuple[int, ...]  # deleted, then updated: live (update is an upsert)
    inserted: tuple[int, ...]  # keys new to the table, live at the end
    load_then_insert: tuple[int, ...]  # loaded, then inserted again with a newer image (insert wins)
    out_of_order_applied: tuple[int, ...]  # changed by the out-of-order file, nothing newer: applied
    out_of_order_ignored: tuple[int, ...]  # changed by the out-of-order file but a newer change exists
    expected: Mapping[int, ExpectedRow]  # every key any change file touches

    @property
    def new_keys(self) -> tuple[int, ...]:
        return tuple(k for k, row in self.expected.items() if row.new)

    @property
    def rows(self) -> int:
        """Rows in silver after the changes, soft-deleted ones included."""
        return self.base_rows + len(self.new_keys)

    @property
    def deleted_rows(self) -> int:
        return sum(1 for row in self.expected.values() if row.deleted)

    @property
    def live_rows(self) -> int:
        return self.rows - self.deleted_rows


@dataclass(frozen=True)
class ChangeFile:
    """One change file as it will be landed (``key`` is filled in once it has been)."""

    table: str
    name: str
    kind: str  # changes | duplicate | out-of-order
    envelope: bool
    changes: tuple[Change, ...]
    control_lines: tuple[str, ...] = ()
    duplicate_of: str | None = None  # name of the file whose bytes this one repeats
    key: str | None = None

    @property
    def first_change_ts(self) -> datetime:
        return from_epoch_us(min(c.timestamp_us for c in self.changes))

    @property
    def last_change_ts(self) -> datetime:
        return from_epoch_us(max(c.timestamp_us for c in self.changes))


@dataclass(frozen=True)
class ChangeScenario:
    tables: Mapping[str, TableScenario]
    files: tuple[ChangeFile, ...]  # in landing order

    def file(self, name: str) -> ChangeFile:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def duplicates(self) -> dict[str, str]:
        """Landed key of each duplicate -> landed key of the original."""
        by_name = {f.name: f for f in self.files}
        return {f.key or f.name: by_name[f.duplicate_of].key or f.duplicate_of for f in self.files if f.duplicate_of}

    @property
    def out_of_order(self) -> tuple[str, ...]:
        return tuple(f.key or f.name for f in self.files if f.kind == "out-of-order")


# ---- building ---------------------------------------------------------------------------


@dataclass
class _Clock:
    """Hands out change timestamps and transaction ids."""

    transaction_id: int = 1_000_000

    def changes(self, table: str, start_us: int, items: list[tuple[str, Mapping[str, Any]]]) -> tuple[Change, ...]:
        out = []
        for i, (op, row) in enumerate(items):
            out.append(Change(table, op, dict(row), start_us + i * CHANGE_STEP_US, self.transaction_id + i // TXN_SIZE))
        self.transaction_id += len(items) // TXN_SIZE + 1
        return tuple(out)


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def _expected(table: str, files: list[ChangeFile], new_keys: set[int]) -> dict[int, ExpectedRow]:
    key_column = DIM_KEYS.get(table, "review_id")
    winners: dict[int, Change] = {}
    for f in files:
        for change in f.changes:
            key = change.row[key_column]
            if key not in winners or change.timestamp_us > winners[key].timestamp_us:
                winners[key] = change
    return {
        key: ExpectedRow(
            key=key,
            deleted=c.operation == "delete",
            values=dict(c.row),
            change_ts=from_epoch_us(c.timestamp_us),
            new=key in new_keys,
        )
        for key, c in sorted(winners.items())
    }


def _pick(rng: np.random.Generator, candidates: np.ndarray, k: int, what: str) -> list[int]:
    if len(candidates) < k:
        raise ValueError(f"need {k} {what} for the change scenario, only {len(candidates)} available")
    return sorted(int(x) for x in rng.choice(np.sort(candidates), size=k, replace=False))


def build_change_scenario(base_reviews: pa.Table, seed: int, changes_start: datetime) -> ChangeScenario:
    """All change files, timestamps from ``changes_start`` on (file order = landing order)."""
    n = base_reviews.num_rows
    if n < MIN_REVIEWS_FOR_CHANGES:
        raise ValueError(f"the change scenario needs at least {MIN_REVIEWS_FOR_CHANGES} base reviews, got {n}")
    rng = np.random.default_rng([seed, _STREAM_SCENARIO])
    model = review_model(seed)
    clock = _Clock()
    t0 = to_epoch_us(changes_start)
    minute = 60_000_000

    # ---- reviews -----------------------------------------------------------------------
    picked = rng.choice(np.arange(1, n + 1), size=REVIEW_UPDATES + REVIEW_DELETES + 10, replace=False)
    upd, dele, fresh_upd, fresh_del = (
        sorted(int(x) for x in picked[:REVIEW_UPDATES]),
        sorted(int(x) for x in picked[REVIEW_UPDATES : REVIEW_UPDATES + REVIEW_DELETES]),
        sorted(int(x) for x in picked[REVIEW_UPDATES + REVIEW_DELETES : REVIEW_UPDATES + REVIEW_DELETES + 8]),
        sorted(int(x) for x in picked[REVIEW_UPDATES + REVIEW_DELETES + 8 :]),
    )
    base_by_id = lambda ids: base_reviews.take(pa.array(np.asarray(ids, dtype=np.int64) - 1))  # noqa: E731
    last_months = len(model.month_p) - 2 + rng.integers(0, 2, 10_000)
    new_ids = iter(range(n + 1, n + 1 + REVIEW_INSERTS + REVIEW_LOADS + REVIEW_LATE_INSERTS))

    def new_reviews(k: int) -> pa.Table:
        ids = np.array([next(new_ids) for _ in range(k)], dtype=np.int64)
        return draw_reviews(model, rng, ids, months=last_months[:k])

    r1_updates = updated_rows(rng, base_by_id(upd))
    r1_inserts = new_reviews(REVIEW_INSERTS)
    inserted_r1 = [r["review_id"] for r in _rows(r1_inserts)]
    r1 = [("update", r) for r in _rows(r1_updates)] + [("delete", r) for r in _rows(base_by_id(dele))]
    r1 += [("insert", r) for r in _rows(r1_inserts)]

    revived, upd_after_del, still_deleted = dele[:4], dele[4:7], dele[7:]
    revived_rows = draw_reviews(model, rng, np.array(revived, dtype=np.int64), months=last_months[:4])
    twice_updated = upd[:10]
    r2 = [("insert", r) for r in _rows(revived_rows)]
    r2 += [("update", r) for r in _rows(updated_rows(rng, base_by_id(upd_after_del)))]
    r1_by_id = {r["review_id"]: r for _, r in r1}
    r2 += [("update", r) for r in _rows(updated_rows(rng, pa.Table.from_pylist([r1_by_id[k] for k in twice_updated])))]
    r2 += [("delete", r1_by_id[k]) for k in inserted_r1[:5]]

    r3_rows = new_reviews(REVIEW_LOADS)
    loaded = [r["review_id"] for r in _rows(r3_rows)]
    r3 = [("load", r) for r in _rows(r3_rows)]
    overlap = loaded[:REVIEW_LOAD_OVERLAP]
    r4 = [("insert", r) for r in _rows(updated_rows(rng, r3_rows.slice(0, REVIEW_LOAD_OVERLAP)))]
    r4_new = new_reviews(REVIEW_LATE_INSERTS)
    r4 += [("insert", r) for r in _rows(r4_new)]

    r2_by_id = {r["review_id"]: r for _, r in r2}
    ooo_ignored_upd = twice_updated[:6]
    ooo = [("update", r) for r in _rows(updated_rows(rng, pa.Table.from_pylist([r1_by_id[k] for k in ooo_ignored_upd])))]
    ooo += [("delete", r2_by_id[k]) for k in revived[:2]]
    ooo += [("update", r) for r in _rows(updated_rows(rng, base_by_id(fresh_upd)))]
    ooo += [("delete", r) for r in _rows(base_by_id(fresh_del))]
    ooo += [("update", r) for r in _rows(updated_rows(rng, pa.Table.from_pylist([r1_by_id[k] for k in inserted_r1[5:8]])))]

    # ---- dimensions (deleted ones are never referenced by a review) -------------------------
    all_reviews = [base_reviews] + [pa.Table.from_pylist([r for _, r in part]) for part in (r1, r2, r3, r4)]
    referenced_beers = np.unique(np.concatenate([t.column("beer_id").to_numpy() for t in all_reviews]))
    referenced_profiles = np.unique(np.concatenate([t.column("profile_id").to_numpy() for t in all_reviews]))
    brewery, beer, profile = load_dim("brewery"), load_dim("beer"), load_dim("profile")

    brewery_ids = brewery.column("brewery_id").to_numpy()
    renamed = _pick(rng, brewery_ids, 3, "breweries")
    brewery_by_id = {r["brewery_id"]: r for r in _rows(brewery.filter(pc.is_in(brewery.column("brewery_id"), pa.array(renamed))))}
    new_brewery, popup_brewery = int(brewery_ids.max()) + 1, int(brewery_ids.max()) + 2
    b1 = [("update", {**brewery_by_id[k], "brewery_name": f"{brewery_by_id[k]['brewery_name']} {suffix}"})
          for k, suffix in zip(renamed, ("Brewing Co.", "(Brauerei Überraschung)", "& Taproom"))]
    b1 += [("insert", {"brewery_id": new_brewery, "brewery_name": "Seedling Brewing Company"}),
           ("insert", {"brewery_id": popup_brewery, "brewery_name": "Seedling Pop-up, \"Summer\" Taproom"}),
           ("delete", {"brewery_id": popup_brewery, "brewery_name": "Seedling Pop-up, \"Summer\" Taproom"})]

    beer_ids = beer.column("beer_id").to_numpy()
    beer_by_id = {r["beer_id"]: r for r in _rows(beer)}
    null_abv = beer.filter(pc.is_null(beer.column("beer_abv"))).column("beer_id").to_numpy()
    abv_beers = _pick(rng, np.setdiff1d(beer_ids, null_abv), 2, "beers") + _pick(rng, null_abv, 1, "beers without abv")
    restyled = _pick(rng, np.setdiff1d(beer_ids, abv_beers), 1, "beers")
    unreviewed_beers = np.setdiff1d(beer_ids, np.concatenate([referenced_beers, abv_beers, restyled]))
    dropped_beers = _pick(rng, unreviewed_beers, 3, "unreviewed beers")
    new_beer = int(beer_ids.max()) + 1
    a1 = [("update", {**beer_by_id[k], "beer_abv": round((beer_by_id[k]["beer_abv"] or 5.0) + 0.5, 2)}) for k in abv_beers]
    a1 += [("update", {**beer_by_id[k], "beer_style": "American Double / Imperial IPA"}) for k in restyled]
    a1 += [("delete", beer_by_id[k]) for k in dropped_beers]
    a1 += [("insert", {"beer_id": new_beer, "brewery_id": new_brewery, "beer_name": "Seedling Pale Ale",
                       "beer_style": "American Pale Ale (APA)", "beer_abv": 5.2}),
           ("insert", {"beer_id": new_beer + 1, "brewery_id": int(brewery_ids.min()), "beer_name": "Seedling Lager",
                       "beer_style": "Czech Pilsener", "beer_abv": None})]
    beer_revived, beer_upd_after_del, beer_still_deleted = dropped_beers
    a2 = [("insert", beer_by_id[beer_revived]),
          ("update", {**beer_by_id[beer_upd_after_del], "beer_style": "Kellerbier / Zwickelbier"})]

    profile_ids = profile.column("profile_id").to_numpy()
    profile_by_id = {r["profile_id"]: r for r in _rows(profile)}
    moved = _pick(rng, profile_ids, 3, "profiles")
    unreviewed_profiles = np.setdiff1d(profile_ids, np.concatenate([referenced_profiles, moved]))
    dropped_profiles = _pick(rng, unreviewed_profiles, 2, "unreviewed profiles")
    new_profile = int(profile_ids.max()) + 1
    p1 = [("update", {**profile_by_id[moved[0]], "state": "VT" if profile_by_id[moved[0]]["state"] != "VT" else "ME"}),
          ("update", {**profile_by_id[moved[1]], "state": "OR" if profile_by_id[moved[1]]["state"] != "OR" else "WA"}),
          ("update", {**profile_by_id[moved[2]], "email": f"moved.{moved[2]}@example.com"})]
    p1 += [("delete", profile_by_id[k]) for k in dropped_profiles]
    p1 += [("insert", {"profile_id": new_profile, "profile_name": "seedling_drinker", "email": "seedling@example.net", "state": None})]

    # ---- files in landing order ---------------------------------------------------------
    def cf(table: str, name: str, offset_min: float, items, *, envelope: bool, kind: str = "changes",
           control: tuple[str, ...] = ()) -> ChangeFile:
        return ChangeFile(table, name, kind, envelope, clock.changes(table, t0 + int(offset_min * minute), items), control)

    review_control = (create_table_control_line("review", REVIEW_SCHEMA, ["review_id"], t0 + 10 * minute - 1),)
    files = [
        cf("brewery", "brewery-cdc-0001.json.gz", 0, b1, envelope=True),
        cf("beer", "beer-cdc-0001.json.gz", 1, a1, envelope=True),
        cf("profile", "profile-cdc-0001.json.gz", 2, p1, envelope=True),
        cf("beer", "beer-cdc-0002.json.gz", 3, a2, envelope=True),
        cf("review", "review-cdc-0001.json.gz", 10, r1, envelope=True, control=review_control),
        cf("review", "review-cdc-0002.json.gz", 20, r2, envelope=False),
        cf("review", "review-cdc-0003.json.gz", 30, r3, envelope=True),
    ]
    r2_file = files[5]
    files.append(ChangeFile("review", "review-cdc-0002-redelivered.json.gz", "duplicate", False, r2_file.changes,
                            duplicate_of=r2_file.name))
    files.append(cf("review", "review-cdc-0004.json.gz", 40, r4, envelope=False))
    files.append(cf("review", "review-cdc-0005.json.gz", 15, ooo, envelope=True, kind="out-of-order"))

    def table_files(table: str) -> list[ChangeFile]:
        return [f for f in files if f.table == table]

    new_review_ids = set(range(n + 1, n + 1 + REVIEW_INSERTS + REVIEW_LOADS + REVIEW_LATE_INSERTS))
    tables = {
        "review": TableScenario(
            "review", "review_id", n,
            updated=tuple(sorted(upd + fresh_upd)),
            deleted=tuple(sorted(still_deleted + fresh_del + inserted_r1[:5])),
            revived=tuple(revived),
            updated_after_delete=tuple(upd_after_del),
            inserted=tuple(sorted(set(inserted_r1[5:]) | set(loaded) | {r["review_id"] for r in _rows(r4_new)})),
            load_then_insert=tuple(overlap),
            out_of_order_applied=tuple(sorted(fresh_upd + fresh_del + inserted_r1[5:8])),
            out_of_order_ignored=tuple(sorted(ooo_ignored_upd + revived[:2])),
            expected=_expected("review", table_files("review"), new_review_ids),
        ),
        "brewery": TableScenario(
            "brewery", "brewery_id", brewery.num_rows,
            updated=tuple(renamed), deleted=(popup_brewery,), revived=(), updated_after_delete=(),
            inserted=(new_brewery,), load_then_insert=(), out_of_order_applied=(), out_of_order_ignored=(),
            expected=_expected("brewery", table_files("brewery"), {new_brewery, popup_brewery}),
        ),
        "beer": TableScenario(
            "beer", "beer_id", beer.num_rows,
            updated=tuple(sorted(abv_beers + restyled)), deleted=(beer_still_deleted,), revived=(beer_revived,),
            updated_after_delete=(beer_upd_after_del,), inserted=(new_beer, new_beer + 1), load_then_insert=(),
            out_of_order_applied=(), out_of_order_ignored=(),
            expected=_expected("beer", table_files("beer"), {new_beer, new_beer + 1}),
        ),
        "profile": TableScenario(
            "profile", "profile_id", profile.num_rows,
            updated=tuple(moved), deleted=tuple(dropped_profiles), revived=(), updated_after_delete=(),
            inserted=(new_profile,), load_then_insert=(), out_of_order_applied=(), out_of_order_ignored=(),
            expected=_expected("profile", table_files("profile"), {new_profile}),
        ),
    }
    return ChangeScenario(tables=tables, files=tuple(files))
