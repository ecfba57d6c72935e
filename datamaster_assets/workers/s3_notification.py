"""Lambda: register raw objects in the ledger as soon as S3 says they were created.

Handler: ``datamaster_assets.workers.s3_notification.handler``. Accepts the event shapes S3
notifications arrive in:

- a direct S3 notification (``{"Records": [{"eventSource": "aws:s3", ...}]}``), whose object
  keys are URL-encoded (``red flower.csv.gz`` arrives as ``red+flower.csv.gz``);
- the same wrapped by SQS (``Records[].body``) and/or SNS (``Records[].Sns.Message`` or an SNS
  envelope inside an SQS body), including S3's ``s3:TestEvent``;
- an EventBridge ``Object Created`` event (``{"source": "aws.s3", "detail": {...}}``).

Registration goes through ``landing.register_object_keys``, the same code the landing sensor
uses, so a key registered by both (the sensor is the reconciler for missed events) is one item.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import unquote_plus

from datamaster_assets.lake.factory import Lake, open_lake
from datamaster_assets.lake.landing import RAW_PREFIX, is_folder_marker, register_object_keys
from datamaster_assets.settings import Settings
from datamaster_assets.workers import emf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreatedObject:
    bucket: str
    # Spellings the key may have, most likely first. S3 notifications URL-encode keys; one decoded
    # spelling is certain. EventBridge events are documented as plain keys, so the key as sent is
    # tried first and the decoded form second (one extra HEAD only when the two differ).
    key_candidates: tuple[str, ...]


@dataclass
class ParsedEvent:
    objects: list[CreatedObject] = field(default_factory=list)
    ignored: Counter = field(default_factory=Counter)


def _s3_record(record: Mapping[str, Any], out: ParsedEvent) -> None:
    event_name = str(record.get("eventName", ""))
    if not event_name.startswith(("ObjectCreated:", "s3:ObjectCreated:")):
        out.ignored[f"event:{event_name or 'unnamed'}"] += 1
        return
    s3 = record.get("s3") or {}
    bucket = (s3.get("bucket") or {}).get("name")
    key = (s3.get("object") or {}).get("key")
    if not bucket or not key:
        out.ignored["malformed_s3_record"] += 1
        return
    out.objects.append(CreatedObject(bucket, (unquote_plus(key),)))


def _eventbridge(event: Mapping[str, Any], out: ParsedEvent) -> None:
    if event.get("detail-type") != "Object Created":
        out.ignored[f"event:{event.get('detail-type')}"] += 1
        return
    detail = event.get("detail") or {}
    bucket = (detail.get("bucket") or {}).get("name")
    key = (detail.get("object") or {}).get("key")
    if not bucket or not key:
        out.ignored["malformed_eventbridge_event"] += 1
        return
    decoded = unquote_plus(key)
    out.objects.append(CreatedObject(bucket, (key,) if decoded == key else (key, decoded)))


def _parse_json_text(text: Any, what: str, out: ParsedEvent) -> None:
    try:
        doc = json.loads(text)
    except (TypeError, ValueError):
        out.ignored[f"{what}_not_json"] += 1
        log.warning("ignoring a %s that is not JSON: %.200r", what, text)
        return
    _parse(doc, out)


def _parse(event: Any, out: ParsedEvent) -> None:
    if not isinstance(event, Mapping):
        out.ignored["not_an_object"] += 1
        return
    if event.get("Event") == "s3:TestEvent":
        out.ignored["s3_test_event"] += 1
        return
    if event.get("source") == "aws.s3" and "detail" in event:
        _eventbridge(event, out)
        return
    if event.get("Type") == "Notification" and "Message" in event:  # SNS envelope inside SQS
        _parse_json_text(event["Message"], "sns_message", out)
        return
    records = event.get("Records")
    if not isinstance(records, list):
        out.ignored["unknown_event_shape"] += 1
        return
    for record in records:
        if not isinstance(record, Mapping):
            out.ignored["not_an_object"] += 1
            continue
        source = record.get("eventSource") or record.get("EventSource")
        if source == "aws:s3":
            _s3_record(record, out)
        elif source == "aws:sqs":
            _parse_json_text(record.get("body"), "sqs_body", out)
        elif source == "aws:sns":
            _parse_json_text((record.get("Sns") or {}).get("Message"), "sns_message", out)
        else:
            out.ignored[f"source:{source}"] += 1


def parse_event(event: Any) -> ParsedEvent:
    """The created objects an event announces, and counted reasons for everything else. Pure."""
    out = ParsedEvent()
    _parse(event, out)
    return out


def _resolve_key(lake: Lake, obj: CreatedObject) -> str:
    if len(obj.key_candidates) == 1:
        return obj.key_candidates[0]
    for key in obj.key_candidates:
        if lake.raw.head(key) is not None:
            return key
    return obj.key_candidates[-1]


def register_event(lake: Lake, event: Any) -> dict[str, Any]:
    """Register the raw objects an event announces; counts of what happened to each."""
    parsed = parse_event(event)
    ignored = Counter(parsed.ignored)
    keys: list[str] = []
    for obj in parsed.objects:
        if obj.bucket != lake.settings.raw_bucket:
            ignored["other_bucket"] += 1
            continue
        if all(is_folder_marker(candidate) for candidate in obj.key_candidates):
            ignored["folder_marker"] += 1
            continue
        key = _resolve_key(lake, obj)
        if not key.startswith(RAW_PREFIX):
            ignored["outside_raw_prefix"] += 1
            continue
        keys.append(key)
    unique = list(dict.fromkeys(keys))
    registered = register_object_keys(lake.settings, lake.raw, lake.ledger, unique)
    return {
        "objects": len(parsed.objects),
        "keys": len(unique),
        "registered": len(registered),
        # Already in the ledger (duplicate event, or the sensor got there first) or deleted since.
        "not_new": len(unique) - len(registered),
        "registered_keys": [item.object_key for item in registered],
        "ignored": dict(ignored),
    }


_cached: tuple[Settings, Lake] | None = None


def _lake() -> Lake:
    """One Lake per warm Lambda container (boto3 clients are slow to build), rebuilt if env changes."""
    global _cached
    settings = Settings.from_env()
    if _cached is None or _cached[0] != settings:
        _cached = (settings, open_lake(settings))
    return _cached[1]


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    result = register_event(_lake(), event)
    counts = {k: v for k, v in result.items() if isinstance(v, int)}
    emf.emit("s3_notification", counts, {"ignored": result["ignored"]})
    return result
