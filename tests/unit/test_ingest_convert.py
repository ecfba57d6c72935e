"""raw -> bronze conversion: readers, typing, rules, rejects, lineage, CDC forms, bad input."""

from __future__ import annotations

import gzip
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from datamaster_assets.contracts import get_contract
from datamaster_assets.ingest.convert import convert_to_bronze
from datamaster_assets.ingest.errors import BadInputError, SourceReadError
from datamaster_assets.ingest.masking import hmac_hex

INGESTED = datetime(2026, 11, 22, 4, 5, 1, tzinfo=timezone.utc)
LANDED = datetime(2026, 11, 22, 4, 0, 0, tzinfo=timezone.utc)
KEY = "test-pii-key"
HEADER = "review_id,brewery_id,beer_id,profile_id,review_overall,review_aroma,review_appearance,review_palate,review_taste,review_time"


def gz(text: str | bytes) -> bytes:
    return gzip.compress(text.encode() if isinstance(text, str) else text, mtime=0)


def review_line(i: int, overall: str = "4.5", time: str = "1073452775") -> str:
    return f"{i},{i + 10},{i + 20},{i + 30},{overall},4.0,3.5,3.0,2.5,{time}"


def run(tmp_path: Path, payload: bytes, *, table="review", fmt="csv", name="raw/review/f.csv.gz", batch_rows=1000):
    parquet_out = tmp_path / "out.parquet"
    rejects_out = tmp_path / "rejects.jsonl.gz"
    src = tmp_path / name.rsplit("/", 1)[-1]
    src.write_bytes(payload)
    outcome = convert_to_bronze(
        src, contract=table, file_format=fmt, source_key=name, control_id="b-test", ingested_at=INGESTED,
        batch_change_ts=LANDED, pii_key=KEY, parquet_out=parquet_out, rejects_out=rejects_out, batch_rows=batch_rows,
    )
    table_out = pq.read_table(parquet_out)
    rejects = [json.loads(x) for x in gzip.decompress(rejects_out.read_bytes()).splitlines()] if rejects_out.exists() else []
    return outcome, table_out, rejects


@pytest.mark.parametrize("batch_rows", [1, 2, 1000])
def test_clean_csv_is_typed_with_lineage(tmp_path, batch_rows):
    lines = [review_line(i) for i in range(1, 6)]
    outcome, table, rejects = run(tmp_path, gz(HEADER + "\n" + "\n".join(lines) + "\n"), batch_rows=batch_rows)
    assert (outcome.records_read, outcome.accepted, outcome.rejected) == (5, 5, 0)
    assert table.schema == get_contract("review").bronze_schema
    assert table.column("review_id").to_pylist() == [1, 2, 3, 4, 5]
    assert table.column("review_time")[0].as_py() == datetime(2004, 1, 7, 5, 19, 35, tzinfo=timezone.utc)
    assert set(table.column("_op").to_pylist()) == {"load"}
    assert set(table.column("_change_ts").to_pylist()) == {LANDED}
    assert set(table.column("_ingested_at").to_pylist()) == {INGESTED}
    assert set(table.column("_source_key").to_pylist()) == {"raw/review/f.csv.gz"}
    assert set(table.column("_control_id").to_pylist()) == {"b-test"}
    # physical line numbers: the header is line 1
    assert table.column("_source_line").to_pylist() == [2, 3, 4, 5, 6]
    assert table.column("_change_seq").to_pylist() == [0] * 5  # a CSV extract has no sequence: ties go to (file, line)
    assert rejects == []
    assert not (tmp_path / "rejects.jsonl.gz").exists()


@pytest.mark.parametrize("batch_rows", [2, 1000])
def test_bad_rows_are_rejected_with_line_and_field(tmp_path, batch_rows):
    lines = [
        review_line(1),
        review_line(2, overall="7.5"),  # above max
        review_line(3, overall="abc"),  # wrong type
        "4,14,24,34,4.5,4.0",  # too few fields
        review_line(5, time=""),  # required value missing
        b"6,16,26,36,4.5,4.0,3.5,3.0,2.5,10734\xff52775".decode("latin-1"),
        review_line(7, overall="nan"),
        review_line(8),
        review_line(0),  # review_id below min 1
    ]
    payload = (HEADER + "\n" + "\n".join(lines) + "\n").encode("latin-1")
    payload = payload.replace("10734\xff52775".encode("latin-1"), b"10734\xff52775")
    outcome, table, rejects = run(tmp_path, gz(payload), batch_rows=batch_rows)
    assert outcome.records_read == 9
    assert outcome.accepted + outcome.rejected == outcome.records_read
    assert table.column("review_id").to_pylist() == [1, 8]
    assert table.column("_source_line").to_pylist() == [2, 9]
    by_line = {r["line"]: r for r in rejects}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 10]
    assert by_line[3]["field"] == "review_overall" and "above max 5" in by_line[3]["reason"]
    assert by_line[4]["field"] == "review_overall" and "not a number" in by_line[4]["reason"]
    assert by_line[5]["field"] is None and "expected 10 fields, found 6" in by_line[5]["reason"]
    assert by_line[6]["field"] == "review_time" and "missing" in by_line[6]["reason"]
    assert "UTF-8" in by_line[7]["reason"] and "\\xff" in by_line[7]["raw"]
    assert by_line[8]["field"] == "review_overall"
    assert by_line[10]["field"] == "review_id" and "below min 1" in by_line[10]["reason"]
    assert by_line[3]["raw"] == review_line(2, overall="7.5")
    assert all(r["source_key"] == "raw/review/f.csv.gz" and r["control_id"] == "b-test" for r in rejects)
    assert outcome.slow_batches >= 1


def test_blank_lines_skipped_and_line_numbers_kept(tmp_path):
    payload = HEADER + "\n" + review_line(1) + "\n\n" + review_line(2) + "\r\n" + review_line(3)
    outcome, table, _ = run(tmp_path, gz(payload))
    assert outcome.records_read == 3
    assert table.column("_source_line").to_pylist() == [2, 4, 5]


def test_columns_extra_and_missing_nullable_are_noted(tmp_path):
    header = "review_time,review_id,brewery_id,beer_id,profile_id,review_overall,review_aroma,comment"
    line = "1073452775,1,11,21,31,4.5,4.0,great"
    outcome, table, _ = run(tmp_path, gz(f"{header}\n{line}\n"))
    assert outcome.accepted == 1
    assert table.column("review_aroma").to_pylist() == [4.0]
    assert table.column("review_taste").to_pylist() == [None]
    assert any("extra columns ignored: comment" in n for n in outcome.notes)
    assert any("review_appearance" in n and "null" in n for n in outcome.notes)


def test_missing_required_column_is_bad_input(tmp_path):
    header = HEADER.replace("review_overall", "overall_rating")
    with pytest.raises(BadInputError) as exc:
        run(tmp_path, gz(f"{header}\n{review_line(1)}\n"))
    assert "raw/review/f.csv.gz" in str(exc.value) and "review_overall" in str(exc.value)
    assert exc.value.field == "review_overall" and exc.value.line == 1


@pytest.mark.parametrize(
    "payload, problem",
    [
        (b"", "empty file"),
        (b"review_id,brewery_id\n1,2\n", "not a gzip file"),
        (gz(HEADER + "\n" + "\n".join(review_line(i) for i in range(1, 2000)))[:-30], "truncated"),
        (gz(b""), "no header"),
    ],
)
def test_unprocessable_files_raise_bad_input_naming_the_file(tmp_path, payload, problem):
    with pytest.raises(BadInputError) as exc:
        run(tmp_path, payload)
    assert str(exc.value).startswith("raw/review/f.csv.gz")
    assert problem in str(exc.value)


def test_unknown_table_and_format_are_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="unknown table"):
        run(tmp_path, gz(HEADER + "\n"), table="nope")
    with pytest.raises(BadInputError, match="does not accept csv"):
        run(tmp_path, gz("beer_id\n1\n"), table="beer")
    with pytest.raises(BadInputError, match="unknown file format"):
        run(tmp_path, gz(HEADER + "\n"), fmt="xml")


def test_header_only_csv_gives_empty_bronze_file(tmp_path):
    outcome, table, _ = run(tmp_path, gz(HEADER + "\n"))
    assert (outcome.records_read, outcome.accepted) == (0, 0)
    assert table.num_rows == 0 and table.schema == get_contract("review").bronze_schema
    assert "header only, no data rows" in outcome.notes


def test_stream_source_and_plain_csv(tmp_path):
    parquet_out = tmp_path / "o.parquet"
    outcome = convert_to_bronze(
        io.BytesIO((HEADER + "\n" + review_line(1) + "\n").encode()), contract=get_contract("review"), file_format="csv",
        source_key="raw/review/plain.csv", control_id="b-x", ingested_at=INGESTED, batch_change_ts=LANDED,
        pii_key=KEY, parquet_out=parquet_out, rejects_out=tmp_path / "r.gz",
    )
    assert outcome.accepted == 1 and pq.read_table(parquet_out).column("review_id").to_pylist() == [1]


# ---- CDC JSON lines --------------------------------------------------------------------------

def envelope(op, row, ts="2012-01-31T10:00:00.000123Z", record_type="data", **meta):
    return json.dumps({"data": row, "metadata": {"timestamp": ts, "record-type": record_type, "operation": op,
                                                  "partition-key-type": "primary-key", "schema-name": "dm",
                                                  "table-name": "profile", "transaction-id": 77, **meta}})


def control_line():
    return json.dumps({"control": {"table-def": {}}, "metadata": {"timestamp": "2012-01-31T09:00:00Z",
                                                                   "record-type": "control", "operation": "create-table"}})


PROFILE_NAME = "raw/profile/p.json.gz"


@pytest.mark.parametrize("batch_rows", [1, 3, 1000])
def test_cdc_envelope_ops_control_lineage_and_masking(tmp_path, batch_rows):
    lines = [
        control_line(),
        envelope("load", {"profile_id": 1, "profile_name": "stcules", "email": "charles04@example.org", "state": "AR"}),
        envelope("insert", {"profile_id": 2, "profile_name": "bob"}),  # email/state absent -> null
        envelope("update", {"profile_id": 1, "profile_name": "stcules", "email": "new@example.net", "state": "OH"},
                 ts="2012-01-31T11:00:00Z", **{"transaction-record-id": 5}),
        envelope("delete", {"profile_id": 2}),  # key only
        envelope("update", {"profile_id": 3, "profile_name": "x", "state": "ZZ"}),  # not an allowed state
        envelope("insert", {"profile_name": "nokey"}),  # key missing
    ]
    outcome, table, rejects = run(tmp_path, gz("\n".join(lines) + "\n"), table="profile", fmt="json",
                                  name=PROFILE_NAME, batch_rows=batch_rows)
    assert outcome.control_records == 1
    assert (outcome.records_read, outcome.accepted, outcome.rejected) == (6, 4, 2)
    assert table.column("_op").to_pylist() == ["load", "insert", "update", "delete"]
    assert table.column("profile_id").to_pylist() == [1, 2, 1, 2]
    assert table.column("_source_line").to_pylist() == [2, 3, 4, 5]
    # no source-wide sequence: transaction-record-id restarts in every transaction, a line number in every file
    assert table.column("_change_seq").to_pylist() == [0, 0, 0, 0]
    assert table.column("_change_ts")[2].as_py() == datetime(2012, 1, 31, 11, tzinfo=timezone.utc)
    assert table.column("_change_ts")[0].as_py() == datetime(2012, 1, 31, 10, 0, 0, 123, tzinfo=timezone.utc)
    emails = table.column("email").to_pylist()
    assert emails[0] == hmac_hex(KEY.encode(), "charles04") + "@example.org"
    assert emails[1] is None and emails[3] is None
    assert {r["line"]: r["field"] for r in rejects} == {6: "state", 7: "profile_id"}


def test_a_delete_is_not_rejected_for_its_before_image(tmp_path):
    # a row loaded before a rule was tightened must still be deletable: only the key is checked
    lines = [
        envelope("delete", {"profile_id": 3, "profile_name": "x", "state": "ZZ"}),
        envelope("update", {"profile_id": 4, "profile_name": "y", "state": "ZZ"}),
        envelope("delete", {"profile_id": 0, "state": "ZZ"}),  # the key itself is still checked
    ]
    outcome, table, rejects = run(tmp_path, gz("\n".join(lines) + "\n"), table="profile", fmt="json",
                                  name=PROFILE_NAME)
    assert (outcome.accepted, outcome.rejected) == (1, 2)
    assert table.column("profile_id").to_pylist() == [3] and table.column("_op").to_pylist() == ["delete"]
    assert {r["line"]: r["field"] for r in rejects} == {2: "state", 3: "profile_id"}


def test_cdc_flattened_form_and_bad_lines(tmp_path):
    lines = [
        json.dumps({"review_id": 1, "brewery_id": 2, "beer_id": 3, "profile_id": 4, "review_overall": 4.5,
                    "review_time": 1073452775, "operation": "insert", "timestamp": "2012-01-31T10:00:00Z",
                    "transaction-id": 9, "mood": "happy"}),
        "this is not json",
        json.dumps({"review_id": 2, "brewery_id": 2, "beer_id": 3, "profile_id": 4, "review_overall": "high",
                    "review_time": 1073452775, "operation": "update", "timestamp": "2012-01-31T10:00:00Z"}),
        json.dumps([1, 2]),
        json.dumps({"review_id": 3, "operation": "DELETE", "timestamp": "2012-01-31T12:00:00Z"}),
        json.dumps({"review_id": 4, "brewery_id": 2, "beer_id": 3, "profile_id": 4, "review_overall": 3,
                    "review_time": 1073452775, "operation": "merge", "timestamp": "2012-01-31T10:00:00Z"}),
    ]
    outcome, table, rejects = run(tmp_path, gz("\n".join(lines)), fmt="json", name="raw/review/c.json.gz")
    assert (outcome.records_read, outcome.accepted, outcome.rejected) == (6, 2, 4)
    assert table.column("review_id").to_pylist() == [1, 3]
    assert table.column("_op").to_pylist() == ["insert", "delete"]
    assert table.column("review_overall").to_pylist() == [4.5, None]
    by_line = {r["line"]: r for r in rejects}
    assert "not JSON" in by_line[2]["reason"]
    assert by_line[3]["field"] == "review_overall"
    assert "not a JSON object" in by_line[4]["reason"]
    assert by_line[6]["field"] == "operation" and "merge" in by_line[6]["reason"]
    assert any("extra fields ignored: mood" in n for n in outcome.notes)


def test_cdc_fast_path_clean_envelope(tmp_path):
    rows = [envelope("insert", {"brewery_id": i, "brewery_name": f"B{i}"}) for i in range(1, 101)]
    outcome, table, _ = run(tmp_path, gz("\n".join(rows) + "\n"), table="brewery", fmt="json",
                            name="raw/brewery/b.json.gz", batch_rows=40)
    assert outcome.accepted == 100 and outcome.slow_batches == 0 and outcome.batches >= 3
    assert table.column("_source_line").to_pylist() == list(range(1, 101))


def test_pii_detector_flags_untagged_columns(tmp_path):
    rows = [envelope("insert", {"brewery_id": i, "brewery_name": f"owner{i}@mail.example.com"}) for i in range(1, 11)]
    outcome, table, _ = run(tmp_path, gz("\n".join(rows)), table="brewery", fmt="json", name="raw/brewery/b.json.gz")
    assert outcome.accepted == 10
    assert any("brewery_name" in n and "email address" in n for n in outcome.notes)
    assert table.column("brewery_name")[0].as_py() == "owner1@mail.example.com"  # reported, not masked


class _NonSeekable(io.RawIOBase):
    """Like an S3 streaming body: short reads, no seek."""

    def __init__(self, data: bytes):
        self._data = io.BytesIO(data)

    def readable(self):
        return True

    def read(self, size=-1):
        return self._data.read(min(size, 1000) if size and size > 0 else 1000)


def test_non_seekable_gzip_stream(tmp_path):
    payload = gz(HEADER + "\n" + "\n".join(review_line(i) for i in range(1, 3001)) + "\n")
    parquet_out = tmp_path / "o.parquet"
    outcome = convert_to_bronze(
        _NonSeekable(payload), contract="review", file_format="csv", source_key="raw/review/s.csv.gz",
        control_id="b-s", ingested_at=INGESTED, batch_change_ts=LANDED, pii_key=KEY,
        parquet_out=parquet_out, rejects_out=tmp_path / "r.gz", batch_rows=500,
    )
    assert outcome.accepted == 3000 and outcome.batches >= 5 and outcome.slow_batches == 0
    assert pq.read_table(parquet_out, columns=["_source_line"]).column(0).to_pylist() == list(range(2, 3002))


class _TimesOut(_NonSeekable):
    """An S3 body whose connection times out after ``fail_after`` bytes (botocore's ReadTimeoutError
    is an OSError, like the errors of a damaged gzip stream)."""

    def __init__(self, data: bytes, fail_after: int):
        super().__init__(data)
        self._left = fail_after

    def read(self, size=-1):
        if self._left <= 0:
            raise OSError("Read timeout on endpoint URL")
        chunk = super().read(size)
        self._left -= len(chunk)
        return chunk


@pytest.mark.parametrize("fail_after", [0, 20_000])
def test_a_failing_source_read_is_retryable_not_bad_input(tmp_path, fail_after):
    body = gzip.compress((HEADER + "\n" + "\n".join(review_line(i) for i in range(1, 20001)) + "\n").encode())
    with pytest.raises(SourceReadError, match=r"raw/review/s.csv.gz: reading the object failed: OSError: Read timeout"):
        convert_to_bronze(
            _TimesOut(body, fail_after), contract="review", file_format="csv", source_key="raw/review/s.csv.gz",
            control_id="b-s", ingested_at=INGESTED, batch_change_ts=LANDED, pii_key=KEY,
            parquet_out=tmp_path / "o.parquet", rejects_out=tmp_path / "r.gz", batch_rows=500,
        )


def test_truncation_after_good_chunks_is_still_bad_input(tmp_path):
    body = HEADER + "\n" + "\n".join(review_line(i) for i in range(1, 20001)) + "\n"
    with pytest.raises(BadInputError, match=r"truncated gzip stream .* after line \d+"):
        run(tmp_path, gzip.compress(body.encode())[:-5000], batch_rows=1000)


def test_epoch_out_of_range_is_rejected_not_overflowed(tmp_path):
    payload = HEADER + "\n" + review_line(1, time="99999999999999999") + "\n" + review_line(2, time="1") + "\n" + review_line(3)
    outcome, table, rejects = run(tmp_path, gz(payload))
    assert table.column("review_id").to_pylist() == [3]
    reasons = {r["line"]: r["reason"] for r in rejects}
    assert "out of range" in reasons[2]
    assert "review_time" in reasons[3] and "below min" in reasons[3]


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_epoch_beyond_year_9999_is_a_rejected_row_not_a_crash(tmp_path, fmt):
    # epoch milliseconds by mistake: fits int64 microseconds, but is year 41,757
    if fmt == "csv":
        payload = HEADER + "\n" + review_line(1) + "\n" + review_line(2, time="1255599527000") + "\n"
        name = "raw/review/ms.csv.gz"
    else:
        row = dict(FLAT)
        payload = "\n".join(json.dumps({**row, "review_id": i, "review_time": t, "operation": "insert"})
                             for i, t in ((1, 1073452775), (2, 1255599527000))) + "\n"
        name = "raw/review/ms.json.gz"
    outcome, table, rejects = run(tmp_path, gz(payload), fmt=fmt, name=name)
    assert (outcome.records_read, outcome.accepted, outcome.rejected) == (2, 1, 1)
    assert table.column("review_id").to_pylist() == [1]
    assert rejects[0]["field"] == "review_time" and "out of range" in rejects[0]["reason"]


def test_cdc_forms_mixed_in_one_file(tmp_path):
    flat = {"brewery_id": 1, "brewery_name": "A", "operation": "insert", "timestamp": "2012-01-31T10:00:00Z"}
    lines = [json.dumps(flat), envelope("update", {"brewery_id": 1, "brewery_name": "B"}),
             json.dumps({**flat, "brewery_id": 2})]
    outcome, table, rejects = run(tmp_path, gz("\n".join(lines)), table="brewery", fmt="json", name="raw/brewery/m.json.gz")
    assert rejects == [] and outcome.accepted == 3
    assert table.column("brewery_name").to_pylist() == ["A", "B", "A"]
    assert table.column("_op").to_pylist() == ["insert", "update", "insert"]


# ---- a value gets the same verdict whichever path its chunk takes ------------------------------
# Alone, a line may take the typed (pyarrow) fast path; next to a malformed line the whole chunk
# goes row by row. Both must load or reject it the same way.

FLAT = {"review_id": 1, "brewery_id": 2, "beer_id": 3, "profile_id": 4, "review_overall": 4.5, "review_time": 1073452775}
SAME_VERDICT_CASES = [
    # (contract, format, line as bytes, expected (accepted review_id/profile_id or None), reason fragment)
    ("review", "csv", b"0x10,2,3,4,4.5,4,4,4,4,1073452775,n", None, "'0x10' is not an integer"),
    ("review", "csv", b'"1"2,2,3,4,4.5,4,4,4,4,1073452775,n', None, "malformed CSV"),
    ("review", "csv", b"1_0,2,3,4,4.5,4,4,4,4,1073452775,n", None, "'1_0' is not an integer"),
    ("review", "csv", b"9223372036854775808,2,3,4,4.5,4,4,4,4,1073452775,n", None, "out of range for int64"),
    ("review", "csv", b"7,2,3,4,4.5,4,4,4,4,1073452775,caf\xe9", None, "invalid UTF-8"),  # in an extra column
    ("review", "csv", b'7,2,3,4,4.5,4,4,4,4,1073452775,"never closed', None, "malformed CSV"),  # pyarrow: EOF closes it
    ("review", "json", json.dumps({**FLAT, "review_id": 2**63}).encode(), None, "out of range for int64"),
    ("review", "json", json.dumps({**FLAT, "review_overall": 10**400}).encode(), None, "inf is above max 5"),
    ("review", "json", json.dumps({**FLAT, "seq": 4.7}).encode(), None, "sequence: 4.7 is not an integer"),
    ("review", "json", json.dumps({**FLAT, "seq": True}).encode(), None, "sequence: True is not an integer"),
    ("review", "json", json.dumps(FLAT)[:-1].encode() + b', "note": "\xff"}', None, "invalid UTF-8"),
    ("profile", "json", b'{"profile_id": 5, "profile_name": "x\\ud800y"}', None, "lone surrogate"),
    ("profile", "json", b'{"profile_id": 5, "profile_name": true}', None, "True is not a string"),
    ("profile", "json", b'{"profile_id": 5, "profile_name": 1e2}', None, "100.0 is not a string"),
    ("profile", "json", b'{"profile_id": 5, "profile_name": 123}', 5, None),  # an integer keeps its digits
    ("review", "json", json.dumps({**FLAT, "review_id": 1e2}).encode(), 100, None),  # integral: loads
    # a name that matters given twice: which value is meant is not knowable (pyarrow refuses it too)
    ("review", "json", json.dumps(FLAT)[:-1].encode() + b', "operation": "insert", "operation": "delete"}', None,
     "operation: given more than once"),
    ("review", "json", json.dumps(FLAT)[:-1].encode() + b', "review_overall": 1.0}', None,
     "review_overall: given more than once"),
    ("profile", "json", b'{"data": {"profile_id": 5, "profile_id": 6}, "metadata": {"operation": "insert"}}', None,
     "profile_id: given more than once"),
    ("profile", "json", b'{"data": {"profile_id": 5}, "metadata": {"operation": "insert", "operation": "delete"}}',
     None, "operation: given more than once"),
    # ...one that does not (an ignored key) is ignored on both paths
    ("profile", "json", b'{"data": {"profile_id": 5, "profile_name": "x"}, "metadata": {"schema-name": "a", "schema-name": "b"}}',
     5, None),
    ("profile", "json", b'{"profile_id": 5, "profile_name": "x", "mood": 1, "mood": 2}', 5, None),
    ("profile", "json", b'{"data": {"profile_id": 5}, "metadata": "insert"}', None, "metadata: not a JSON object"),
]


@pytest.mark.parametrize(("table", "fmt", "line", "accepted", "reason"), SAME_VERDICT_CASES)
@pytest.mark.parametrize("neighbour", [False, True])
def test_a_value_gets_the_same_verdict_on_either_path(tmp_path, table, fmt, line, accepted, reason, neighbour):
    header = {"review": HEADER + ",note", "profile": "profile_id,profile_name"}[table]
    body = (header.encode() + b"\n" if fmt == "csv" else b"") + line + b"\n" + (b"{broken\n" if neighbour else b"")
    name = f"raw/{table}/f." + ("csv.gz" if fmt == "csv" else "jsonl.gz")
    outcome, out, rejects = run(tmp_path, gz(body), table=table, fmt=fmt, name=name)
    key = get_contract(table).primary_key[0]
    first_line = 2 if fmt == "csv" else 1
    if accepted is None:
        assert out.column(key).to_pylist() == []
        assert rejects[0]["line"] == first_line and reason in rejects[0]["reason"]
    else:
        assert out.column(key).to_pylist() == [accepted]
        assert all(r["line"] != first_line for r in rejects)
    assert outcome.rejected == (accepted is None) + neighbour


@pytest.mark.parametrize("final_newline", [True, False])
def test_a_quote_left_open_at_a_chunk_end_does_not_depend_on_batch_size(tmp_path, final_newline):
    # a quoted newline in an ignored free-text column: with one line per chunk the first half ended
    # a chunk and pyarrow took the end of the buffer as the closing quote, loading review 3
    lines = [HEADER + ",note"] + [review_line(i) + ",ok" for i in range(1, 6)]
    lines[3] = review_line(3) + ',"first half'
    lines.insert(4, 'second half"')
    body = "\n".join(lines) + ("\n" if final_newline else "")
    results = []
    for batch_rows in (1, 2, 3, 1000):
        outcome, out, rejects = run(tmp_path, gz(body), batch_rows=batch_rows)
        results.append((out.column("review_id").to_pylist(), [(r["line"], r["reason"]) for r in rejects]))
    assert results[0][0] == [1, 2, 4, 5]
    assert [line for line, _ in results[0][1]] == [4, 5]
    assert all(r == results[0] for r in results)
    # the same line alone at the end of the file
    outcome, out, rejects = run(tmp_path, gz(HEADER + ",note\n" + review_line(1) + ',"open' + ("\n" if final_newline else "")))
    assert out.num_rows == 0 and rejects[0]["line"] == 2 and "malformed CSV" in rejects[0]["reason"]


def test_repeated_ignored_columns_are_extra_columns_but_a_repeated_contract_column_is_bad_input(tmp_path):
    # Excel writes trailing empty columns as ",,": two columns named ""
    outcome, out, rejects = run(tmp_path, gz(HEADER + ",note,note,,\n" + review_line(1) + ",a,b,,\n"))
    assert out.column("review_id").to_pylist() == [1] and not rejects
    assert "extra columns ignored: note, (unnamed)" in outcome.notes[0]
    with pytest.raises(BadInputError, match=r"duplicate header columns \['review_id'\]"):
        run(tmp_path, gz(HEADER + ",review_id\n" + review_line(1) + ",1\n"))


def test_bare_cr_line_ends_are_named_as_such(tmp_path):
    with pytest.raises(BadInputError, match=r"line 1: header is not valid CSV: .*bare CR"):
        run(tmp_path, gz((HEADER + "\r" + review_line(1) + "\r").encode()))
    outcome, out, rejects = run(tmp_path, gz((HEADER + "\n" + review_line(1) + "\r" + review_line(2) + "\n").encode()))
    assert out.num_rows == 0 and rejects[0]["line"] == 2 and "bare CR" in rejects[0]["reason"]


def test_a_header_that_is_not_csv_is_bad_input(tmp_path):
    with pytest.raises(BadInputError, match=r"line 1: header is not valid CSV"):
        run(tmp_path, gz(b'review_id,"brew\rery_id"x\n1,2\n'))


@pytest.mark.parametrize("blank", ["", " ", "\t"])
def test_two_objects_on_one_line_are_rejected_even_when_a_blank_line_evens_the_count(tmp_path, blank):
    # pyarrow reads `{..}{..}` as two rows and skips a blank line: in one chunk the row count still
    # equals the line count, which once let the chunk through with every later line number one off
    rows = [envelope("insert", {"brewery_id": i, "brewery_name": f"B{i}"}) for i in range(1, 6)]
    text = "\n".join([rows[0], rows[1] + rows[2], blank, rows[3], rows[4]]) + "\n"
    outcome, table, rejects = run(tmp_path, gz(text), table="brewery", fmt="json", name="raw/brewery/b.json.gz")
    assert (outcome.records_read, outcome.accepted, outcome.rejected) == (4, 3, 1)
    assert table.column("brewery_id").to_pylist() == [1, 4, 5]
    assert table.column("_source_line").to_pylist() == [1, 4, 5]
    assert [(r["line"], r["reason"].split(":")[0]) for r in rejects] == [(2, "not JSON")]


def test_an_object_split_over_two_lines_cannot_even_out_two_objects_on_one_line(tmp_path):
    # the second part of the split line starts with "{", so "every line starts with {" holds and
    # pyarrow's row count (one for the split object, two for the doubled line) equals the lines
    rows = [envelope("insert", {"brewery_id": i, "brewery_name": f"B{i}"}) for i in range(1, 6)]
    cut = rows[1].index('"metadata": ') + len('"metadata": ')
    text = "\n".join([rows[0], rows[1][:cut], rows[1][cut:], rows[2] + rows[3], rows[4]]) + "\n"
    outcome, table, rejects = run(tmp_path, gz(text), table="brewery", fmt="json", name="raw/brewery/b.json.gz")
    assert (outcome.records_read, outcome.accepted, outcome.rejected) == (5, 2, 3)
    assert table.column("brewery_id").to_pylist() == [1, 5]
    assert table.column("_source_line").to_pylist() == [1, 5]
    assert [r["line"] for r in rejects] == [2, 3, 4]


@pytest.mark.parametrize(("text", "frame", "expected"), [
    (b'{"a":1}\n{"a":2}\n', b"{}", (2, True)),
    (b'{"a":1}\n{"a":2}', b"{}", (2, True)),
    (b'{"a":1}\r\n{"a":2}\r\n', b"{}", (2, True)),
    (b'{"a":1}\n{"a":2}\r', b"{}", (2, True)),
    (b'{"a":1}\n\n{"a":2}\n', b"{}", (3, False)),  # a blank line
    (b' {"a":1}\n', b"{}", (1, False)),
    (b'{"a":1}\n {"a":2}', b"{}", (2, False)),
    (b'{"a":1} \n', b"{}", (1, False)),
    (b'{"a":\n{"b":2}}\n', b"{}", (2, False)),  # an object split over two lines
    (b'{\n', b"{}", (1, False)),
    (b"", b"{}", (1, False)),
    (b'{"a":1}\n{"a":2}\n', None, (2, False)),  # not asked
])
def test_count_lines_tells_whether_every_line_is_framed(text, frame, expected):
    from datamaster_assets.ingest.stream import count_lines

    assert count_lines(text, frame) == expected


@pytest.mark.parametrize("bad", [b"\xed\xa0\x80", b"\xed\xbf\xbf"])
def test_encoded_surrogates_are_invalid_utf8_even_in_an_ignored_field(tmp_path, bad):
    good = envelope("insert", {"brewery_id": 1, "brewery_name": "A"}).encode()
    worse = envelope("insert", {"brewery_id": 2, "brewery_name": "B"}).encode().replace(b'"dm"', b'"d' + bad + b'm"')
    outcome, table, rejects = run(tmp_path, gz(good + b"\n" + worse + b"\n"), table="brewery", fmt="json",
                                  name="raw/brewery/s.json.gz")
    assert (outcome.accepted, outcome.rejected) == (1, 1)
    assert rejects[0]["line"] == 2 and "invalid UTF-8" in rejects[0]["reason"]


def test_a_utf16_line_is_not_taken_for_json(tmp_path):
    line = envelope("insert", {"brewery_id": 1, "brewery_name": "A"}).encode("utf-16-le")
    outcome, table, rejects = run(tmp_path, gz(line + b"\n"), table="brewery", fmt="json", name="raw/brewery/u.json.gz")
    assert (outcome.accepted, outcome.rejected) == (0, 1)


def test_equal_change_times_across_files_follow_file_order_not_line_numbers(tmp_path):
    # sources with 1 s timestamps (MySQL binlog, Oracle) give many changes the same time; a later
    # file's change on line 1 must win over an earlier file's change on line 6
    from datamaster_assets.transform.silver import merge_changes

    ts = "2012-01-31T10:00:00Z"
    first = [envelope("insert", {"brewery_id": i, "brewery_name": f"B{i}"}, ts=ts) for i in range(1, 6)]
    first.append(envelope("update", {"brewery_id": 1, "brewery_name": "older"}, ts=ts, **{"transaction-record-id": 9}))
    second = [envelope("update", {"brewery_id": 1, "brewery_name": "newer"}, ts=ts, **{"transaction-record-id": 0})]
    tables = []
    for name, lines in (("raw/brewery/20120131T100001Z-a.json.gz", first), ("raw/brewery/20120131T100002Z-b.json.gz", second)):
        sub = tmp_path / name.rsplit("/", 1)[-1].split(".")[0]
        sub.mkdir()
        tables.append(run(sub, gz("\n".join(lines) + "\n"), table="brewery", fmt="json", name=name)[1])
    contract = get_contract("brewery")
    together = merge_changes(None, pa.concat_tables(tables), contract).table
    one_by_one = merge_changes(merge_changes(None, tables[0], contract).table, tables[1], contract).table
    for silver in (together, one_by_one):
        row = silver.filter(pc.equal(silver["brewery_id"], 1)).to_pylist()[0]
        assert row["brewery_name"] == "newer"
