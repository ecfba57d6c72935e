"""Firehose data-transformation Lambda: DMS change records -> bronze-ready JSON lines.

Handler: ``datamaster_assets.workers.firehose_router.handler``. DMS writes one JSON document per
change to Kinesis (``{"data": {...}, "metadata": {"record-type", "operation", "table-name",
...}}``); Firehose hands them here in batches and writes what comes back to S3 under
``raw/<table_name>/``, using the ``table_name`` partition key returned for each record
(dynamic partitioning), gzip-compressed, as ``.json.gz`` files the landing sensor picks up.

Output: the DMS envelope itself, re-serialised compactly as one line ending in ``\\n`` (Firehose
concatenates records). The bronze reader (``ingest/cdc.py``) accepts the envelope, and keeping it
is lossless: every DMS metadata field survives for replay or audit, and no source column can
collide with a metadata name such as ``operation``, as it could in a flattened line.

Results per record:
- ``Ok``: a data change of a known table, with a known operation;
- ``Dropped``: DMS control records (create-table, awsdms_apply_exceptions ...), on purpose;
- ``ProcessingFailed``: anything malformed (not base64, not JSON, no metadata/table name/data,
  unknown table or operation). Firehose writes these, unchanged, under the error output prefix
  (``raw-errors/``), so nothing is lost and they can be replayed after a fix.
Every non-Ok record has a counted reason, returned by ``transform_event`` and logged as
CloudWatch metrics by ``handler``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Mapping

from datamaster_assets.contracts import CDC_OPERATIONS, load_contracts
from datamaster_assets.workers import emf

log = logging.getLogger(__name__)

OK = "Ok"
DROPPED = "Dropped"
FAILED = "ProcessingFailed"
PARTITION_KEY = "table_name"


@lru_cache(maxsize=1)
def source_tables() -> dict[tuple[str, str], str]:
    """(source schema, source table) -> contract name, from the contracts."""
    return {(c.source_schema, c.source_table): name for name, c in load_contracts().items()}


def table_for(metadata: Mapping[str, Any], tables: Mapping[tuple[str, str], str]) -> str | None:
    """The contract a DMS record belongs to; schema-name must match when DMS sends it."""
    table = metadata.get("table-name")
    schema = metadata.get("schema-name")
    for (src_schema, src_table), name in tables.items():
        if table == src_table and (not schema or schema == src_schema):
            return name
    return None


@dataclass(frozen=True)
class Routed:
    result: str
    reason: str  # "ok" for Ok records
    table_name: str | None = None
    line: bytes | None = None


def route_record(payload_b64: Any, tables: Mapping[tuple[str, str], str]) -> Routed:
    """One Firehose record's base64 payload -> its outcome. Pure."""
    try:
        raw = base64.b64decode(payload_b64, validate=True)
    except (binascii.Error, TypeError, ValueError):
        return Routed(FAILED, "not_base64")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return Routed(FAILED, "not_json")
    if not isinstance(doc, dict):
        return Routed(FAILED, "not_json_object")
    metadata = doc.get("metadata")
    if not isinstance(metadata, dict):
        return Routed(FAILED, "no_metadata")
    record_type = metadata.get("record-type", "data")
    if record_type == "control":
        return Routed(DROPPED, "control_record")
    if record_type != "data":
        return Routed(FAILED, "unknown_record_type")
    if not metadata.get("table-name"):
        return Routed(FAILED, "no_table_name")
    table = table_for(metadata, tables)
    if table is None:
        return Routed(FAILED, "unknown_table")
    if metadata.get("operation") not in CDC_OPERATIONS:
        return Routed(FAILED, "unknown_operation")
    if not isinstance(doc.get("data"), dict):
        return Routed(FAILED, "no_data")
    line = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    return Routed(OK, "ok", table, line)


@dataclass
class TransformResult:
    records: list[dict[str, Any]]
    results: Counter = field(default_factory=Counter)  # Ok / Dropped / ProcessingFailed -> n
    reasons: Counter = field(default_factory=Counter)  # reason -> n, for non-Ok records
    tables: Counter = field(default_factory=Counter)  # table -> Ok records


def transform_event(event: Mapping[str, Any], tables: Mapping[tuple[str, str], str] | None = None) -> TransformResult:
    """Firehose transformation event -> response records (same ids, same order) and counts."""
    tables = source_tables() if tables is None else tables
    out = TransformResult(records=[])
    for record in event.get("records", []):
        record_id = record["recordId"]  # without it Firehose cannot match the answer: let it fail loudly
        routed = route_record(record.get("data"), tables)
        out.results[routed.result] += 1
        if routed.result == OK:
            out.tables[routed.table_name] += 1
            out.records.append(
                {
                    "recordId": record_id,
                    "result": OK,
                    "data": base64.b64encode(routed.line).decode("ascii"),
                    "metadata": {"partitionKeys": {PARTITION_KEY: routed.table_name}},
                }
            )
            continue
        out.reasons[routed.reason] += 1
        # Failed records keep their original payload: Firehose writes it to the error prefix.
        data = record.get("data") if isinstance(record.get("data"), str) else ""
        out.records.append({"recordId": record_id, "result": routed.result, "data": data})
    return out


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    result = transform_event(event)
    counts = {
        "records": sum(result.results.values()),
        "ok": result.results[OK],
        "dropped": result.results[DROPPED],
        "processing_failed": result.results[FAILED],
    }
    if counts["processing_failed"]:
        log.warning(
            "firehose router: %d of %d record(s) ProcessingFailed (to the error prefix); reasons: %s",
            counts["processing_failed"], counts["records"], dict(result.reasons),
        )
    emf.emit(
        "firehose_router",
        counts,
        {"reasons": dict(result.reasons), "tables": dict(result.tables), "deliveryStreamArn": event.get("deliveryStreamArn")},
    )
    # Only "records": that is the whole response contract Firehose reads.
    return {"records": result.records}
