"""The pure silver CDC merge: exact resulting state for every ordering/replay case."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from datamaster_assets.contracts import get_contract, parse_contract
from datamaster_assets.transform.silver import (
    CHANGE_ORDER,
    MAX_CHUNKS,
    OUTCOMES,
    latest_change_per_key,
    merge_changes,
    silver_schema,
    validate_changes,
)
from tests.benchmarks.silver_data import BASE_TS, bronze_table

BREWERY = get_contract("brewery")


def secs(ts):
    return None if ts is None else (ts - BASE_TS).total_seconds()


def state(table: pa.Table) -> dict[int, tuple]:
    """brewery_id -> (name, created, updated, deleted, watermark) with times as seconds after BASE_TS."""
    out = {}
    for r in table.to_pylist():
        assert r["brewery_id"] not in out, f"duplicate row for key {r['brewery_id']}"
        out[r["brewery_id"]] = (
            r["brewery_name"], secs(r["created_at"]), secs(r["updated_at"]), secs(r["deleted_at"]), secs(r["_change_ts"])
        )
    return out


def apply(*files: list[dict], start: pa.Table | None = None):
    """Apply each file as its own merge, in the given order; returns (table, results)."""
    table, results = start, []
    for i, changes in enumerate(files):
        result = merge_changes(table, bronze_table("brewery", changes, source_key=f"raw/brewery/f{i}.json.gz"), BREWERY)
        table = result.table
        results.append(result)
    return table, results


def test_schema_has_audit_and_watermark_columns_and_required_key():
    schema = silver_schema(BREWERY)
    assert schema.names == ["brewery_id", "brewery_name", "created_at", "updated_at", "deleted_at",
                            "_change_ts", "_change_seq", "_source_key"]
    assert not schema.field("brewery_id").nullable
    assert schema.field("brewery_name").nullable  # checks report nulls instead of failing the write
    assert schema.field("deleted_at").type == pa.timestamp("us", tz="UTC")
    assert silver_schema(get_contract("review")).field("review_time").type == pa.timestamp("us", tz="UTC")


def test_source_key_is_a_dictionary_of_the_files_rows_still_come_from():
    insert = [{"op": "insert", "t": 1, "brewery_id": i, "brewery_name": f"b{i}"} for i in (1, 2, 3)]
    table, _ = apply(insert, [{"op": "update", "t": 2, "brewery_id": 2, "brewery_name": "x"}],
                     [{"op": "update", "t": 3, "brewery_id": i, "brewery_name": "y"} for i in (1, 3)])
    source = table["_source_key"]
    assert source.type == pa.dictionary(pa.int32(), pa.string())
    assert dict(zip(table["brewery_id"].to_pylist(), source.to_pylist())) == {
        1: "raw/brewery/f2.json.gz", 2: "raw/brewery/f1.json.gz", 3: "raw/brewery/f2.json.gz"}
    # f0 no longer supplies any row: its key is gone from the dictionary, not just unreferenced
    assert sorted(v for chunk in source.chunks for v in chunk.dictionary.to_pylist()) == [
        "raw/brewery/f1.json.gz", "raw/brewery/f2.json.gz"]
    assert table.cast(silver_schema(BREWERY)).schema == silver_schema(BREWERY)


def test_insert_update_delete_within_one_file():
    table, (r,) = apply([
        {"op": "insert", "t": 1, "brewery_id": 1, "brewery_name": "A"},
        {"op": "update", "t": 2, "brewery_id": 1, "brewery_name": "A2"},
        {"op": "insert", "t": 3, "brewery_id": 2, "brewery_name": "B"},
        {"op": "delete", "t": 4, "brewery_id": 2},
        {"op": "load", "t": 0, "brewery_id": 3, "brewery_name": "C"},
    ])
    assert state(table) == {
        1: ("A2", 1, 2, None, 2),  # created_at of the first insert, updated_at of the update
        2: ("B", 3, 4, 4, 4),  # delete keeps the values the row had
        3: ("C", 0, 0, None, 0),
    }
    assert r.counts() == dict.fromkeys(OUTCOMES, 0) | {"superseded": 2, "inserted": 2, "deleted": 1}


def test_out_of_order_files_give_the_same_live_state():
    older = [{"op": "insert", "t": 10, "brewery_id": 1, "brewery_name": "old"},
             {"op": "insert", "t": 10, "brewery_id": 2, "brewery_name": "two"}]
    newer = [{"op": "update", "t": 20, "brewery_id": 1, "brewery_name": "new"},
             {"op": "delete", "t": 20, "brewery_id": 2}]
    in_order, _ = apply(older, newer)
    reversed_, (r_new, r_old) = apply(newer, older)
    assert state(in_order) == {1: ("new", 10, 20, None, 20), 2: ("two", 10, 20, 20, 20)}
    # The late file is entirely stale: key 1 keeps the newer values, key 2 stays deleted
    # (its delete arrived first and left a tombstone).
    assert r_old.counts()["stale_ignored"] == 2 and not r_old.changed
    assert state(reversed_) == {1: ("new", 20, 20, None, 20), 2: (None, None, 20, 20, 20)}
    assert r_new.counts()["tombstoned"] == 1


def test_same_file_applied_twice_changes_nothing():
    changes = [{"op": "insert", "t": 1, "brewery_id": i, "brewery_name": f"b{i}"} for i in range(1, 6)]
    changes += [{"op": "delete", "t": 2, "brewery_id": 3}, {"op": "delete", "t": 2, "brewery_id": 99}]
    bronze_file = bronze_table("brewery", changes, source_key="raw/brewery/f0.json.gz")
    once = merge_changes(None, bronze_file, BREWERY).table
    again = merge_changes(once, bronze_file, BREWERY)
    assert again.table.sort_by("brewery_id").equals(once.sort_by("brewery_id"))
    assert again.table.num_rows == 6  # five breweries + the tombstone of 99, no duplicates
    assert again.counts()["stale_ignored"] == len(changes) and not again.changed


def test_equal_time_and_sequence_from_two_files_resolve_the_same_however_batched():
    a = [{"op": "update", "t": 5, "seq": 1, "brewery_id": 1, "brewery_name": "from f0"}]
    b = [{"op": "update", "t": 5, "seq": 1, "brewery_id": 1, "brewery_name": "from f1"}]
    one_batch = merge_changes(None, pa.concat_tables([bronze_table("brewery", a, source_key="raw/brewery/f0.json.gz"),
                                                      bronze_table("brewery", b, source_key="raw/brewery/f1.json.gz")]),
                              BREWERY).table
    in_order, _ = apply(a, b)
    reversed_order = merge_changes(merge_changes(None, bronze_table("brewery", b, source_key="raw/brewery/f1.json.gz"),
                                                 BREWERY).table,
                                   bronze_table("brewery", a, source_key="raw/brewery/f0.json.gz"), BREWERY)
    # CHANGE_ORDER breaks the tie on the file: the later file's change wins, in every batching
    assert one_batch["brewery_name"].to_pylist() == ["from f1"]
    assert in_order["brewery_name"].to_pylist() == ["from f1"]
    assert reversed_order.table["brewery_name"].to_pylist() == ["from f1"]
    assert reversed_order.counts()["stale_ignored"] == 1
    assert state(in_order) == reference([a, b])


def test_stored_row_without_a_watermark_takes_any_change():
    table, _ = apply([{"op": "insert", "t": 1, "brewery_id": 1, "brewery_name": "a"}])
    i = table.schema.get_field_index("_change_ts")
    foreign = table.set_column(i, table.field(i), pa.nulls(1, table.field(i).type))  # written by another tool
    result = merge_changes(foreign, bronze_table("brewery", [{"op": "update", "t": 9, "brewery_id": 1,
                                                              "brewery_name": "new"}]), BREWERY)
    assert result.table["brewery_name"].to_pylist() == ["new"] and result.counts()["stale_ignored"] == 0


def test_duplicated_rows_in_one_batch_are_not_duplicated():
    change = {"op": "insert", "t": 1, "brewery_id": 7, "brewery_name": "x"}
    table, (r,) = apply([change, change, change])
    assert state(table) == {7: ("x", 1, 1, None, 1)}
    assert r.counts()["superseded"] == 2 and r.counts()["inserted"] == 1


def test_update_of_a_deleted_key_revives_it_keeping_created_at():
    table, (_, _, r) = apply(
        [{"op": "insert", "t": 1, "brewery_id": 1, "brewery_name": "A"}],
        [{"op": "delete", "t": 2, "brewery_id": 1}],
        [{"op": "update", "t": 3, "brewery_id": 1, "brewery_name": "A3"}],
    )
    assert state(table) == {1: ("A3", 1, 3, None, 3)}
    assert r.counts()["revived"] == 1


def test_delete_then_reinsert_within_and_across_files():
    across, _ = apply(
        [{"op": "insert", "t": 1, "brewery_id": 1, "brewery_name": "A"}],
        [{"op": "delete", "t": 2, "brewery_id": 1}],
        [{"op": "insert", "t": 3, "brewery_id": 1, "brewery_name": "again"}],
    )
    within, (r,) = apply([
        {"op": "insert", "t": 1, "brewery_id": 1, "brewery_name": "A"},
        {"op": "delete", "t": 2, "brewery_id": 1},
        {"op": "insert", "t": 3, "brewery_id": 1, "brewery_name": "again"},
    ])
    assert state(across) == state(within) == {1: ("again", 1, 3, None, 3)}
    assert r.counts()["inserted"] == 1 and r.counts()["superseded"] == 2


def test_second_delete_keeps_the_first_deletion_time():
    table, (_, r) = apply(
        [{"op": "insert", "t": 1, "brewery_id": 1, "brewery_name": "A"}, {"op": "delete", "t": 2, "brewery_id": 1}],
        [{"op": "delete", "t": 5, "brewery_id": 1}],
    )
    assert state(table) == {1: ("A", 1, 2, 2, 5)}  # only the watermark moves
    assert r.counts()["unchanged"] == 1


def test_load_overlapping_later_inserts():
    load = [{"op": "load", "t": 5, "brewery_id": i, "brewery_name": f"load{i}"} for i in (1, 2, 3)]
    cdc = [{"op": "insert", "t": 10, "brewery_id": 3, "brewery_name": "cdc3"},
           {"op": "insert", "t": 11, "brewery_id": 4, "brewery_name": "cdc4"}]
    table, (_, r_cdc) = apply(load, cdc)
    assert state(table) == {
        1: ("load1", 5, 5, None, 5), 2: ("load2", 5, 5, None, 5),
        3: ("cdc3", 5, 10, None, 10), 4: ("cdc4", 11, 11, None, 11),
    }
    assert r_cdc.counts()["updated"] == 1 and r_cdc.counts()["inserted"] == 1
    # The same load re-delivered later is older than key 3's row: only that key is protected.
    again, (r_again,) = apply(load, start=table)
    assert state(again) == state(table)
    assert r_again.counts()["stale_ignored"] == 3


def test_change_older_than_the_stored_row_is_ignored():
    table, (_, r) = apply(
        [{"op": "update", "t": 10, "seq": 7, "brewery_id": 1, "brewery_name": "current"}],
        [{"op": "update", "t": 9, "brewery_id": 1, "brewery_name": "older"},
         {"op": "update", "t": 10, "seq": 6, "brewery_id": 1, "brewery_name": "same time, lower seq"}],
    )
    assert state(table) == {1: ("current", 10, 10, None, 10)}
    assert r.counts()["stale_ignored"] == 2


def test_same_time_ordered_by_sequence_then_file_then_line():
    table, _ = apply([
        {"op": "update", "t": 1, "seq": 2, "brewery_id": 1, "brewery_name": "seq2"},
        {"op": "update", "t": 1, "seq": 1, "brewery_id": 1, "brewery_name": "seq1"},
        {"op": "update", "t": 1, "seq": 3, "line": 9, "brewery_id": 2, "brewery_name": "line9"},
        {"op": "update", "t": 1, "seq": 3, "line": 8, "brewery_id": 2, "brewery_name": "line8"},
        {"op": "update", "t": 1, "seq": 3, "src": "raw/brewery/b", "brewery_id": 3, "brewery_name": "file b"},
        {"op": "update", "t": 1, "seq": 3, "src": "raw/brewery/a", "brewery_id": 3, "brewery_name": "file a"},
    ])
    assert {k: v[0] for k, v in state(table).items()} == {1: "seq2", 2: "line9", 3: "file b"}


def test_tombstone_protects_against_an_older_insert():
    table, (r1, r2) = apply(
        [{"op": "delete", "t": 5, "brewery_id": 8}],
        [{"op": "insert", "t": 3, "brewery_id": 8, "brewery_name": "late"}],
    )
    assert state(table) == {8: (None, None, 5, 5, 5)}
    assert r1.counts()["tombstoned"] == 1 and r2.counts()["stale_ignored"] == 1


def test_written_rows_and_unchanged_rows_kept():
    base, _ = apply([{"op": "insert", "t": 1, "brewery_id": i, "brewery_name": str(i)} for i in range(1, 4)])
    table, (r,) = apply([{"op": "update", "t": 2, "brewery_id": 2, "brewery_name": "two"}], start=base)
    assert r.written["brewery_id"].to_pylist() == [2]
    assert state(table) == {1: ("1", 1, 1, None, 1), 2: ("two", 1, 2, None, 2), 3: ("3", 1, 1, None, 1)}
    assert table["brewery_id"].to_pylist() == [1, 2, 3]  # stored in key order


def test_many_small_chunks_are_made_contiguous():
    base, _ = apply([{"op": "insert", "t": 1, "brewery_id": i, "brewery_name": str(i)} for i in range(1, 201)])
    fragmented = pa.Table.from_batches(base.to_batches(max_chunksize=2))  # 100 chunks per column
    assert fragmented["brewery_id"].num_chunks > MAX_CHUNKS
    table, _ = apply([{"op": "update", "t": 2, "brewery_id": 5, "brewery_name": "five"}], start=fragmented)
    assert all(column.num_chunks == 1 for column in table.columns)
    assert state(table)[5] == ("five", 1, 2, None, 2) and table.num_rows == 200


def test_per_file_counts_by_row_slice():
    changes = pa.concat_tables([
        bronze_table("brewery", [{"op": "insert", "t": 1, "brewery_id": 1, "brewery_name": "a"}], source_key="f1"),
        bronze_table("brewery", [{"op": "update", "t": 2, "brewery_id": 1, "brewery_name": "b"},
                                 {"op": "insert", "t": 2, "brewery_id": 2, "brewery_name": "c"}], source_key="f2"),
    ])
    r = merge_changes(None, changes, BREWERY)
    assert r.counts(slice(0, 1)) == dict.fromkeys(OUTCOMES, 0) | {"superseded": 1}
    assert r.counts(slice(1, 3)) == dict.fromkeys(OUTCOMES, 0) | {"inserted": 2}


def test_validate_changes_names_field_and_line():
    good = bronze_table("brewery", [{"op": "insert", "t": 1, "brewery_id": 1, "brewery_name": "a"}])
    assert validate_changes(good, BREWERY) == []
    bad = bronze_table("brewery", [
        {"op": "insert", "t": 1, "brewery_id": 1, "brewery_name": "a", "line": 4},
        {"op": "upsert", "t": 1, "brewery_id": None, "brewery_name": "a", "line": 7},
    ])
    problems = validate_changes(bad, BREWERY)
    assert problems == [
        "1 row(s) with null brewery_id (first at _source_line 7)",
        "1 row(s) with _op not in ['insert', 'update', 'delete', 'load'] (first at _source_line 7)",
    ]
    assert validate_changes(good.drop_columns(["_change_seq"]), BREWERY) == ["missing columns ['_change_seq']"]


def test_composite_key_merge():
    contract = parse_contract({
        "name": "pair", "primary_key": ["a", "b"],
        "columns": [{"name": "a", "type": "int64", "nullable": False},
                    {"name": "b", "type": "string", "nullable": False},
                    {"name": "v", "type": "int64"}],
    })
    schema = contract.bronze_schema

    def rows(*items):
        return pa.Table.from_pylist([
            {"a": a, "b": b, "v": v, "_source_key": "k", "_control_id": "c", "_ingested_at": BASE_TS, "_op": op,
             "_change_ts": BASE_TS, "_change_seq": seq, "_source_line": seq} for a, b, v, op, seq in items
        ], schema=schema)

    first = merge_changes(None, rows((1, "x", 1, "insert", 1), (1, "y", 2, "insert", 2), (1, "x", 3, "update", 3)),
                          contract)
    second = merge_changes(first.table, rows((1, "y", 0, "delete", 4), (2, "x", 5, "insert", 5)), contract)
    got = {(r["a"], r["b"]): (r["v"], r["deleted_at"] is not None) for r in second.table.to_pylist()}
    assert got == {(1, "x"): (3, False), (1, "y"): (2, True), (2, "x"): (5, False)}
    assert latest_change_per_key(rows((1, "x", 1, "insert", 2), (1, "x", 9, "update", 1)), ("a", "b"))["v"].to_pylist() == [1]


# ---- against a row-at-a-time reference --------------------------------------------------------

def reference(files: list[list[dict]]) -> dict[int, tuple]:
    """Apply the changes one at a time in CHANGE_ORDER (the definition the merge must equal)."""
    rows = [dict(c, src=f"raw/brewery/f{i}.json.gz", line=j + 1) for i, f in enumerate(files) for j, c in enumerate(f)]
    rows.sort(key=lambda c: (c["t"], c.get("seq", int(c["t"])), c["src"], c["line"]))
    assert [name for name in CHANGE_ORDER] == ["_change_ts", "_change_seq", "_source_key", "_source_line"]
    state: dict[int, list] = {}
    for c in rows:
        k, wm = c["brewery_id"], (c["t"], c.get("seq", int(c["t"])), c["src"])  # the stored watermark
        s = state.get(k)
        if s is not None and wm <= s[5]:
            continue
        if c["op"] != "delete":
            created = s[1] if s is not None and s[1] is not None else c["t"]
            state[k] = [c["brewery_name"], created, c["t"], None, c["t"], wm]
        elif s is None:
            state[k] = [c.get("brewery_name"), None, c["t"], c["t"], c["t"], wm]
        elif s[3] is not None:
            s[4], s[5] = c["t"], wm
        else:
            state[k] = [s[0], s[1], c["t"], c["t"], c["t"], wm]
    return {k: tuple(v[:5]) for k, v in state.items()}


def random_files(seed: int) -> list[list[dict]]:
    """Source changes have distinct (time, seq); ~15 % of lines replay an earlier change verbatim."""
    rng = random.Random(seed)
    files, seen = [], []
    t = seq = 0
    for _ in range(rng.randint(1, 5)):
        changes = []
        for _ in range(rng.randint(1, 25)):
            if seen and rng.random() < 0.15:
                changes.append(dict(rng.choice(seen)))
                continue
            t += rng.choice([0, 1, 1, 2])
            seq += 1
            op = rng.choice(["insert", "update", "delete", "load"])
            change = {"op": op, "t": t, "seq": seq, "brewery_id": rng.randint(1, 6),
                      "brewery_name": None if op == "delete" else f"n{rng.randint(0, 99)}"}
            changes.append(change)
            seen.append(change)
        files.append(changes)
    return files


@pytest.mark.parametrize("seed", range(40))
def test_batches_in_order_equal_one_change_at_a_time(seed):
    files = random_files(seed)
    expected = reference(files)
    # All files in one merge, and one merge per file: both equal the reference exactly.
    one = merge_changes(None, pa.concat_tables([bronze_table("brewery", f, source_key=f"raw/brewery/f{i}.json.gz")
                                                for i, f in enumerate(files)]), BREWERY)
    assert state(one.table) == expected
    per_file, _ = apply(*files)
    assert state(per_file) == expected
    assert sum(one.counts().values()) == one.changes_read


@pytest.mark.parametrize("seed", range(40))
def test_files_in_any_order_agree_on_live_rows(seed):
    files = random_files(seed)
    expected = reference(files)
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    table = None
    for i in order:
        table = merge_changes(table, bronze_table("brewery", files[i], source_key=f"raw/brewery/f{i}.json.gz"),
                              BREWERY).table
    got = state(table)
    assert {k for k, v in got.items() if v[3] is None} == {k for k, v in expected.items() if v[3] is None}
    # Live rows carry the latest values and update time; every key's watermark is the newest change.
    for k, v in expected.items():
        if v[3] is None:
            assert got[k][0] == v[0] and got[k][2] == v[2]
        assert got[k][4] == v[4]


def test_review_merge_at_scale_keeps_row_count_and_values():
    from tests.benchmarks.silver_data import review_changes

    load = review_changes(np.arange(1, 20_001), op="load", seed=1, change_ts=BASE_TS, source_key="raw/review/a")
    review = get_contract("review")
    first = merge_changes(None, load, review)
    updates = review_changes(np.arange(2, 20_001, 2), op="update", seed=2, change_ts=BASE_TS.replace(day=2),
                             source_key="raw/review/b")
    second = merge_changes(first.table, updates, review)
    assert second.table.num_rows == 20_000
    assert second.counts()["updated"] == 10_000
    by_id = second.table.sort_by("review_id")
    assert by_id["review_overall"].to_pylist()[1::2] == updates["review_overall"].to_pylist()
    assert by_id["review_overall"].to_pylist()[0::2] == load["review_overall"].to_pylist()[0::2]


def test_integer_key_tables_stay_sorted_by_key_through_merges():
    rng = random.Random(7)
    first = [{"op": "insert", "t": 1, "brewery_id": k, "brewery_name": str(k)} for k in rng.sample(range(1, 400), 150)]
    table, _ = apply(first)
    assert table["brewery_id"].to_pylist() == sorted(r["brewery_id"] for r in first)  # an unsorted load is sorted
    second = ([{"op": "update", "t": 2, "brewery_id": r["brewery_id"], "brewery_name": "u"} for r in first[:40]]
              + [{"op": "delete", "t": 2, "brewery_id": r["brewery_id"]} for r in first[40:60]]
              + [{"op": "insert", "t": 2, "brewery_id": k, "brewery_name": "n"} for k in range(400, 450)]
              + [{"op": "delete", "t": 2, "brewery_id": 1000}])  # a tombstone
    rng.shuffle(second)
    table, (r,) = apply(second, start=table)
    keys = table["brewery_id"].to_pylist()
    assert keys == sorted(keys) and len(keys) == 150 + 50 + 1
    assert r.counts() == dict.fromkeys(OUTCOMES, 0) | {"updated": 40, "deleted": 20, "inserted": 50, "tombstoned": 1}


def test_binary_search_and_hash_lookups_give_the_same_merge():
    """A sorted stored table takes the binary-search path; the same rows shuffled take the hash
    path (and come back sorted). Both must give the same rows and outcomes."""
    rng = random.Random(11)
    base, _ = apply([{"op": "insert", "t": 1, "brewery_id": k, "brewery_name": str(k)} for k in range(1, 301)])
    shuffled = base.take(pa.array(rng.sample(range(base.num_rows), base.num_rows)))
    changes = []
    for k in rng.sample(range(1, 400), 200):
        op = rng.choice(["update", "delete", "insert", "load"])
        changes.append({"op": op, "t": rng.choice([0, 1, 2, 3]), "brewery_id": k, "brewery_name": f"v{k}"})
    sorted_result = merge_changes(base, bronze_table("brewery", changes, source_key="f"), BREWERY)
    hashed_result = merge_changes(shuffled, bronze_table("brewery", changes, source_key="f"), BREWERY)
    assert state(sorted_result.table) == state(hashed_result.table)
    assert sorted_result.table.equals(hashed_result.table)
    assert np.array_equal(sorted_result.outcomes, hashed_result.outcomes)
    assert sorted_result.counts()["stale_ignored"] > 0 and sorted_result.counts()["updated"] > 0
