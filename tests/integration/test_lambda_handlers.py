"""The S3-notification and Firehose-router Lambda handlers on real event shapes, against moto."""

from __future__ import annotations

import base64
import gzip
import json
from urllib.parse import quote_plus

import boto3
import pytest

from datamaster_assets.lake.bootstrap import bootstrap_aws
from datamaster_assets.lake.factory import open_lake
from datamaster_assets.lake.landing import LandingCursor, register_new_objects
from datamaster_assets.lake.ledger import Status
from datamaster_assets.settings import Settings
from datamaster_assets.workers import firehose_router, s3_notification

RAW = "dm-lambda-raw"


# ---- S3 notification -------------------------------------------------------------------------
@pytest.fixture
def aws_lake(aws_env, tmp_path, monkeypatch):
    monkeypatch.setenv("DATAMASTER_ENV", "aws")
    monkeypatch.setenv("DATAMASTER_HOME", str(tmp_path))
    monkeypatch.setenv("DATAMASTER_PII_KEY", "test-key")
    monkeypatch.setenv("DATAMASTER_RAW_BUCKET", RAW)
    monkeypatch.setenv("DATAMASTER_LAKE_BUCKET", "dm-lambda-lake")
    monkeypatch.setenv("DATAMASTER_LEDGER_TABLE", "dm-lambda-control")
    monkeypatch.setattr(s3_notification, "_cached", None)
    settings = Settings.from_env()
    bootstrap_aws(settings)
    return open_lake(settings)


def s3_record(key: str, bucket: str = RAW, event_name: str = "ObjectCreated:Put") -> dict:
    """One record as S3 sends it: the key URL-encoded ('/' kept, space -> '+', '+' -> '%2B')."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-22T04:05:01.123Z",
        "eventName": event_name,
        "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
        "requestParameters": {"sourceIPAddress": "10.0.0.1"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "raw-object-created",
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                       "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key, safe="/"), "size": 9, "eTag": "0123456789abcdef",
                       "sequencer": "0A1B2C3D4E5F678901"},
        },
    }


def test_notification_registers_url_encoded_keys_once(aws_lake):
    keys = [
        "raw/review/20261122T040501000000Z-red flower.json.gz",
        "raw/beer/20261122T040502000000Z-c++ (1).csv.gz",
        "raw/profile/20261122T040503000000Z-ünï=côdé.csv.gz",
    ]
    for key in keys:
        aws_lake.raw.put_bytes(key, gzip.compress(key.encode()))
    event = {"Records": [s3_record(k) for k in keys]}
    assert "red+flower" in event["Records"][0]["s3"]["object"]["key"]  # really encoded

    result = s3_notification.handler(event, None)
    assert result["registered"] == 3 and result["not_new"] == 0 and result["ignored"] == {}
    assert sorted(result["registered_keys"]) == sorted(keys)
    items = {i.object_key: i for i in aws_lake.ledger.items(layer="bronze")}
    assert set(items) == set(keys)
    review = items[keys[0]]
    assert (review.table_name, review.file_format, review.status) == ("review", "json", Status.PENDING)
    assert review.compute_target == "lambda"
    assert review.checksum == aws_lake.raw.head(keys[0]).etag
    assert items[keys[1]].table_name == "beer" and items[keys[1]].file_format == "csv"

    # S3 delivers at least once: the same event again registers nothing new.
    again = s3_notification.handler(event, None)
    assert (again["registered"], again["not_new"]) == (0, 3)
    assert len(aws_lake.ledger.items(layer="bronze")) == 3


def test_notification_ignores_and_counts_what_it_cannot_register(aws_lake):
    aws_lake.raw.put_bytes("raw/review/ok.json.gz", b"1")
    event = {"Records": [
        s3_record("raw/review/ok.json.gz"),
        s3_record("raw/review/gone.json.gz"),  # deleted before the event was handled
        s3_record("raw/review/ok.json.gz", bucket="someone-elses-bucket"),
        s3_record("bronze/review/x.parquet"),
        s3_record("raw/review/ok.json.gz", event_name="ObjectRemoved:Delete"),
        {"eventSource": "aws:dynamodb"},
    ]}
    result = s3_notification.handler(event, None)
    assert result["registered"] == 1 and result["keys"] == 2 and result["not_new"] == 1
    assert result["ignored"] == {
        "other_bucket": 1,
        "outside_raw_prefix": 1,
        "event:ObjectRemoved:Delete": 1,
        "source:aws:dynamodb": 1,
    }


def test_a_console_folder_marker_is_ignored_by_the_notification_and_the_sensor(aws_lake):
    boto3.client("s3").put_object(Bucket=RAW, Key="raw/review/", Body=b"")  # S3 console "Create folder"
    aws_lake.raw.put_bytes("raw/review/a.json.gz", b"1")
    result = s3_notification.handler({"Records": [s3_record("raw/review/"), s3_record("raw/review/a.json.gz")]}, None)
    assert result["registered_keys"] == ["raw/review/a.json.gz"] and result["ignored"] == {"folder_marker": 1}

    listed = register_new_objects(aws_lake.settings, aws_lake.raw, aws_lake.ledger, LandingCursor({}, 0))
    assert listed.registered == [] and listed.already_known == 1  # the listing saw the marker and skipped it
    assert [i.object_key for i in aws_lake.ledger.items(layer="bronze")] == ["raw/review/a.json.gz"]


def test_notification_through_sqs_sns_and_eventbridge(aws_lake):
    keys = ["raw/review/a b.json.gz", "raw/review/c+d.json.gz", "raw/brewery/e.csv.gz"]
    for key in keys:
        aws_lake.raw.put_bytes(key, b"x" + key.encode())
    s3_event = {"Records": [s3_record(keys[0])]}
    sns_envelope = {"Type": "Notification", "MessageId": "m1", "TopicArn": "arn:aws:sns:us-east-1:1:t",
                    "Message": json.dumps({"Records": [s3_record(keys[1])]})}
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": RAW}
    sqs_event = {"Records": [
        {"messageId": "1", "eventSource": "aws:sqs", "body": json.dumps(s3_event)},
        {"messageId": "2", "eventSource": "aws:sqs", "body": json.dumps(sns_envelope)},
        {"messageId": "3", "eventSource": "aws:sqs", "body": json.dumps(test_event)},
        {"messageId": "4", "eventSource": "aws:sqs", "body": "not json"},
    ]}
    result = s3_notification.handler(sqs_event, None)
    assert sorted(result["registered_keys"]) == sorted(keys[:2])
    assert result["ignored"] == {"s3_test_event": 1, "sqs_body_not_json": 1}

    eventbridge = {
        "version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103", "detail-type": "Object Created",
        "source": "aws.s3", "account": "123456789012", "time": "2026-11-22T04:05:01Z", "region": "us-east-1",
        "resources": [f"arn:aws:s3:::{RAW}"],
        "detail": {"version": "0", "bucket": {"name": RAW},
                   "object": {"key": keys[2], "size": 21, "etag": "x", "sequencer": "00617F08299329D189"},
                   "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012", "reason": "PutObject"},
    }
    assert s3_notification.handler(eventbridge, None)["registered_keys"] == [keys[2]]
    # An EventBridge key with '+' that is really a '+' resolves to the existing object.
    eventbridge["detail"]["object"]["key"] = keys[1]
    assert s3_notification.handler(eventbridge, None)["not_new"] == 1
    assert len(aws_lake.ledger.items(layer="bronze")) == 3


def test_parse_event_is_pure_and_decodes_keys():
    parsed = s3_notification.parse_event({"Records": [s3_record("raw/x/a b%c.json.gz")]})
    assert [o.key_candidates for o in parsed.objects] == [("raw/x/a b%c.json.gz",)]
    assert s3_notification.parse_event("nonsense").ignored == {"not_an_object": 1}
    assert s3_notification.parse_event({"foo": 1}).ignored == {"unknown_event_shape": 1}


# ---- Firehose router -------------------------------------------------------------------------
def dms(table: str | None, operation: str = "insert", record_type: str = "data", data: dict | None = None,
        schema: str = "dm") -> dict:
    metadata = {"timestamp": "2026-11-22T04:05:01.123456Z", "record-type": record_type, "operation": operation,
                "partition-key-type": "schema-table", "schema-name": schema,
                "transaction-id": 8589934592}
    if table is not None:
        metadata["table-name"] = table
    return {"data": data if data is not None else {"review_id": 1, "review_overall": 4.5}, "metadata": metadata}


def firehose_event(payloads: list[bytes | str]) -> dict:
    records = []
    for i, payload in enumerate(payloads):
        data = payload if isinstance(payload, str) else base64.b64encode(payload).decode()
        records.append({"recordId": f"rec-{i}", "approximateArrivalTimestamp": 1795147501123 + i, "data": data,
                        "kinesisRecordMetadata": {"sequenceNumber": str(i), "subsequenceNumber": 0,
                                                  "partitionKey": "dm.review", "shardId": "shardId-000000000000",
                                                  "approximateArrivalTimestamp": 1795147501123 + i}})
    return {"invocationId": "0a1b2c3d-inv", "sourceKinesisStreamArn": "arn:aws:kinesis:us-east-1:123456789012:stream/dm-cdc",
            "deliveryStreamArn": "arn:aws:firehose:us-east-1:123456789012:deliverystream/datamaster-cdc",
            "region": "us-east-1", "records": records}


def test_firehose_router_routes_good_drops_control_and_fails_malformed(capsys):
    good_review = dms("review", "update", data={"review_id": 7, "review_overall": 3.5, "review_aroma": None})
    good_beer = dms("beer", "delete", data={"beer_id": 3})
    payloads = [
        json.dumps(good_review).encode(),
        json.dumps(good_beer).encode(),
        json.dumps(dms("awsdms_apply_exceptions", "create-table", record_type="control")).encode(),
        "!!! not base64 !!!",
        b"{not json",
        json.dumps(dms(None)).encode(),
        json.dumps(dms("invoices")).encode(),
        json.dumps(dms("review", schema="other")).encode(),
        json.dumps(dms("review", operation="truncate")).encode(),
        json.dumps([1, 2]).encode(),
        b"\xff\x00\xfe\x81",  # base64 fine, bytes not text
    ]
    event = firehose_event(payloads)
    response = firehose_router.handler(event, None)

    records = response["records"]
    assert set(response) == {"records"}
    assert [r["recordId"] for r in records] == [f"rec-{i}" for i in range(len(payloads))]
    assert [r["result"] for r in records] == ["Ok", "Ok", "Dropped"] + ["ProcessingFailed"] * 8

    line = base64.b64decode(records[0]["data"])
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == good_review  # the envelope, unchanged
    assert records[0]["metadata"] == {"partitionKeys": {"table_name": "review"}}
    assert records[1]["metadata"] == {"partitionKeys": {"table_name": "beer"}}
    # Failed records go back unchanged, for Firehose's error output prefix.
    assert records[4]["data"] == event["records"][4]["data"]

    result = firehose_router.transform_event(event)
    assert dict(result.results) == {"Ok": 2, "Dropped": 1, "ProcessingFailed": 8}
    assert dict(result.reasons) == {
        "control_record": 1,
        "not_base64": 1,
        "not_json": 2,
        "no_table_name": 1,
        "unknown_table": 2,
        "unknown_operation": 1,
        "not_json_object": 1,
    }
    assert dict(result.tables) == {"review": 1, "beer": 1}

    emf_line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (emf_line["ok"], emf_line["dropped"], emf_line["processing_failed"]) == (2, 1, 8)
    assert emf_line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "datamaster"


def test_firehose_router_output_is_valid_gzip_json_lines_when_concatenated():
    payloads = [json.dumps(dms("review", data={"review_id": i})).encode() for i in range(5)]
    response = firehose_router.handler(firehose_event(payloads), None)
    # What Firehose writes to S3: the Ok records' data, concatenated, then gzip-compressed.
    body = gzip.compress(b"".join(base64.b64decode(r["data"]) for r in response["records"]))
    lines = gzip.decompress(body).decode().splitlines()
    assert [json.loads(line)["data"]["review_id"] for line in lines] == list(range(5))


def test_router_output_is_read_by_the_bronze_cdc_reader():
    """What Firehose writes from the router's Ok records parses as typed rows in bronze."""
    import io

    from datamaster_assets.contracts import get_contract
    from datamaster_assets.ingest.cdc import CdcReader
    from datamaster_assets.ingest.stream import iter_chunks

    row = {"review_id": 7, "brewery_id": 1, "beer_id": 2, "profile_id": 3, "review_overall": 4.5,
           "review_time": 1325376000}
    payloads = [
        json.dumps(dms("review", "insert", data=row)).encode(),
        json.dumps(dms("review", "update", data={**row, "review_overall": 3.0})).encode(),
        json.dumps(dms("review", "delete", data={"review_id": 7})).encode(),
        json.dumps(dms("awsdms_status", "create-table", record_type="control")).encode(),
    ]
    response = firehose_router.handler(firehose_event(payloads), None)
    written = gzip.compress(b"".join(base64.b64decode(r["data"]) for r in response["records"] if r["result"] == "Ok"))

    reader = CdcReader(get_contract("review"))
    batches = [reader.parse(chunk) for chunk in iter_chunks(io.BytesIO(written), "raw/review/x.json.gz", 1000)]
    assert sum(b.columns.num_rows for b in batches) == 3 and not any(b.rejects for b in batches)
    [batch] = batches
    assert batch.ops.to_pylist() == ["insert", "update", "delete"]
    assert batch.columns.column("review_overall").to_pylist() == [4.5, 3.0, None]
