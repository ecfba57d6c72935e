"""The converter's concurrency and its cheap checks: chunks are parsed two at a time but written in
file order, a failure in any chunk stops the conversion, and the blank-line and newline shortcuts
give the same answers as the slow way."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datamaster_assets.ingest import convert as convert_module
from datamaster_assets.ingest.convert import convert_to_bronze
from datamaster_assets.ingest.stream import count_newlines, iter_chunks

NOW = datetime(2026, 11, 22, 4, 0, tzinfo=timezone.utc)
HEADER = "review_id,brewery_id,beer_id,profile_id,review_overall,review_aroma,review_appearance,review_palate,review_taste,review_time"


def review_line(i: int, overall: str = "4.5") -> str:
    return f"{i},{i + 10},{i + 20},{i + 30},{overall},4.0,3.5,3.0,2.5,1073452775"


def convert(tmp_path: Path, text: str, *, fmt="csv", batch_rows=1000, on_batch=None):
    src = tmp_path / ("in.csv.gz" if fmt == "csv" else "in.json.gz")
    src.write_bytes(gzip.compress(text.encode()))
    outcome = convert_to_bronze(
        src, contract="review", file_format=fmt, source_key=f"raw/review/{src.name}", control_id="b-1",
        ingested_at=NOW, batch_change_ts=NOW, pii_key="k", parquet_out=tmp_path / "out.parquet",
        rejects_out=tmp_path / "rejects.jsonl.gz", batch_rows=batch_rows, on_batch=on_batch,
    )
    rejects_path = tmp_path / "rejects.jsonl.gz"
    rejects = [json.loads(x) for x in gzip.decompress(rejects_path.read_bytes()).splitlines()] if rejects_path.exists() else []
    return outcome, pq.read_table(tmp_path / "out.parquet"), rejects


def test_many_chunks_keep_file_order_for_rows_rejects_and_row_groups(tmp_path):
    # every 7th row is out of range: rejects land in most of the ~50 chunks, parsed two at a time
    lines = [review_line(i, overall="9.0" if i % 7 == 0 else "4.5") for i in range(1, 501)]
    batches = []
    outcome, table, rejects = convert(tmp_path, HEADER + "\n" + "\n".join(lines) + "\n", batch_rows=10,
                                      on_batch=batches.append)
    bad = [i for i in range(1, 501) if i % 7 == 0]
    assert (outcome.records_read, outcome.accepted, outcome.rejected) == (500, 500 - len(bad), len(bad))
    assert outcome.batches >= 40  # chunks are cut by bytes from the mean line length: about 10 lines each
    assert table.column("review_id").to_pylist() == [i for i in range(1, 501) if i % 7]
    assert table.column("_source_line").to_pylist() == [i + 1 for i in range(1, 501) if i % 7]
    assert [r["line"] for r in rejects] == [i + 1 for i in bad]
    assert all(r["raw"] == review_line(r["line"] - 1, overall="9.0") for r in rejects)
    assert batches == sorted(batches) and batches[-1] == 500  # on_batch sees running totals in order
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == outcome.batches


def test_parse_chunk_size_is_capped_whatever_batch_rows_asks(tmp_path, monkeypatch):
    monkeypatch.setattr(convert_module, "PARSE_CHUNK_ROWS", 100)
    lines = [review_line(i) for i in range(1, 1001)]
    outcome, table, _ = convert(tmp_path, HEADER + "\n" + "\n".join(lines) + "\n", batch_rows=1_000_000)
    assert outcome.accepted == 1000 and outcome.batches >= 10
    assert table.column("review_id").to_pylist() == list(range(1, 1001))


def test_failure_in_a_chunk_stops_the_conversion_and_leaves_a_closed_file(tmp_path):
    lines = [review_line(i) for i in range(1, 201)]

    def lease_lost(records: int) -> None:
        if records >= 50:
            raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError, match="lease lost"):
        convert(tmp_path, HEADER + "\n" + "\n".join(lines) + "\n", batch_rows=10, on_batch=lease_lost)
    written = pq.read_table(tmp_path / "out.parquet")  # a valid (closed) file, though not published
    assert written.num_rows < 200


def test_blank_lines_anywhere_are_skipped_but_a_line_of_empty_fields_is_rejected(tmp_path):
    empty_fields = "," * 9
    text = (HEADER + "\r\n" + review_line(1) + "\r\n\r\n" + review_line(2) + "\n" + empty_fields + "\n\n"
            + review_line(3) + "\n")
    outcome, table, rejects = convert(tmp_path, text)
    assert (outcome.accepted, outcome.rejected) == (3, 1)
    assert table.column("_source_line").to_pylist() == [2, 4, 7]
    assert rejects[0]["line"] == 5 and rejects[0]["raw"] == empty_fields
    assert rejects[0]["field"] == "review_id" and "required value is missing" in rejects[0]["reason"]


def test_clean_chunks_stay_on_the_fast_path(tmp_path):
    lines = [review_line(i) for i in range(1, 101)]
    outcome, _, _ = convert(tmp_path, HEADER + "\n" + "\n".join(lines) + "\n", batch_rows=25)
    assert outcome.slow_batches == 0 and outcome.accepted == 100


@pytest.mark.parametrize("data", [b"", b"a", b"\n", b"a\nb\n", b"a\r\nb", bytearray(b"x\n" * 1000 + b"y")])
def test_count_newlines_matches_bytes_count(data):
    assert count_newlines(data) == data.count(b"\n")


def test_chunks_cover_every_line_once(tmp_path):
    body = "".join(f"line {i}\n" for i in range(1, 10_001)) + "last without newline"
    src = tmp_path / "f.txt.gz"
    src.write_bytes(gzip.compress(body.encode()))
    chunks = list(iter_chunks(src, "raw/x/f.txt.gz", 777))
    assert sum(c.line_count for c in chunks) == 10_001
    assert [c.first_line for c in chunks] == [1] + [sum(c.line_count for c in chunks[:k]) + 1 for k in range(1, len(chunks))]
    assert b"".join(bytes(c.data) for c in chunks) == body.encode()


@pytest.mark.parametrize("ending", [b"\n\n", b"\n", b""])
def test_a_long_line_near_the_end_of_the_file_is_still_chunked(tmp_path, monkeypatch, ending):
    """At end of file the rest of the buffer must be handed over whole, even when the last cut
    lands after a long line (this raised "unreachable" and failed the file)."""
    from datamaster_assets.ingest import stream

    monkeypatch.setattr(stream, "FIRST_READ_BYTES", 8)  # the byte target comes out at 56
    body = b"x" * 20 + b"\n" + b"x" * 100 + b"\n" + b"x" + ending
    src = tmp_path / "f.txt.gz"
    src.write_bytes(gzip.compress(body))
    chunks = list(iter_chunks(src, "raw/x/f.txt.gz", 7))
    assert b"".join(bytes(c.data) for c in chunks) == body
    assert sum(c.line_count for c in chunks) == body.count(b"\n") + (not body.endswith(b"\n"))
    assert [c.first_line for c in chunks] == [1] + [sum(c.line_count for c in chunks[:k]) + 1 for k in range(1, len(chunks))]


def test_bronze_file_keeps_statistics_on_contract_and_time_columns(tmp_path):
    lines = [review_line(i) for i in range(1, 51)]
    convert(tmp_path, HEADER + "\n" + "\n".join(lines) + "\n")
    row_group = pq.ParquetFile(tmp_path / "out.parquet").metadata.row_group(0)
    columns = {row_group.column(i).path_in_schema: row_group.column(i) for i in range(row_group.num_columns)}
    assert columns["review_id"].statistics.min == 1 and columns["review_id"].statistics.max == 50
    assert columns["review_id"].compression == "ZSTD"
    assert columns["_change_ts"].is_stats_set and columns["_ingested_at"].is_stats_set
    assert columns["_source_line"].compression == "UNCOMPRESSED"


def flat_line(i: int, **extra) -> str:
    row = {"review_id": i, "brewery_id": i + 10, "beer_id": i + 20, "profile_id": i + 30, "review_overall": 4.5,
           "review_time": 1073452775, "operation": "insert", "timestamp": f"2024-01-01T00:00:{i % 60:02d}Z"}
    return json.dumps({**row, **extra})


def test_flattened_cdc_stays_on_the_fast_path_and_catches_envelope_lines(tmp_path):
    lines = [flat_line(i) for i in range(1, 61)]
    outcome, table, _ = convert(tmp_path, "\n".join(lines) + "\n", fmt="json", batch_rows=20)
    assert outcome.slow_batches == 0 and outcome.accepted == 60
    assert set(table.column("_op").to_pylist()) == {"insert"}

    envelope = json.dumps({"data": json.loads(flat_line(99)), "metadata": {"operation": "update",
                                                                           "timestamp": "2024-01-02T00:00:00Z"}})
    outcome, table, _ = convert(tmp_path, "\n".join(lines[:30] + [envelope] + lines[30:]) + "\n", fmt="json", batch_rows=20)
    assert outcome.accepted == 61 and outcome.slow_batches >= 1
    assert table.column("review_id").to_pylist()[30] == 99 and table.column("_op").to_pylist()[30] == "update"


def test_flattened_line_with_a_null_data_key_is_a_row_not_an_envelope(tmp_path):
    text = flat_line(1) + "\n" + json.dumps({"data": None, "operation": "insert"}) + "\n"
    outcome, table, rejects = convert(tmp_path, text, fmt="json")
    assert (outcome.accepted, outcome.rejected) == (1, 1)
    assert rejects[0]["line"] == 2 and "required value is missing" in rejects[0]["reason"]


def test_rows_lost_between_parse_and_file_break_the_count_reconciliation(tmp_path, monkeypatch):
    """records_read is counted at the parser, accepted from the written file's footer: a row lost in
    between (here: the writer dropping every other chunk) shows, and fails the counts_reconcile check."""
    from datamaster_assets.defs.bronze import bronze_check_results
    from datamaster_assets.defs.compute import ItemOutcome

    real_write = convert_module._ParquetOutput.write
    calls = []

    def lossy_write(self, table):
        calls.append(1)
        if len(calls) % 2:
            real_write(self, table)

    monkeypatch.setattr(convert_module._ParquetOutput, "write", lossy_write)
    lines = [review_line(i) for i in range(1, 41)] + [review_line(41, overall="9")]
    outcome, table, rejects = convert(tmp_path, HEADER + "\n" + "\n".join(lines) + "\n", batch_rows=10)
    assert outcome.records_read == 41 and outcome.rejected == len(rejects) == 1
    assert outcome.accepted == table.num_rows < 40
    metadata = {"control_id": "b-1", "records_read": outcome.records_read, "accepted": outcome.accepted,
                "rejected": outcome.rejected}
    reconcile, _ = bronze_check_results([ItemOutcome("b-1", "inprocess", "success", metadata)], 0.5)
    assert not reconcile.passed and reconcile.metadata["unbalanced"].value == "b-1"
