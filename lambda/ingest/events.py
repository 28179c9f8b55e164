"""Event intake: every shape that can carry an S3 upload to the function, reduced to (bucket, key).

Shapes: an S3 notification (direct trigger); an SNS envelope around one; an EventBridge "Object Created"
event; and an SQS message whose body is any of those. ``s3:TestEvent`` is acknowledged and yields
nothing, and so does a folder (a key ending with ``/``, as the S3 console's "Create folder" makes: no
file). Keys arrive URL-encoded (``quote_plus``) and are decoded here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes import S3Event, S3EventBridgeNotificationEvent, SNSEvent


class UnknownEvent(ValueError):
    """An event of no shape this function understands; it is never guessed at."""


@dataclass(frozen=True)
class ObjectRef:
    bucket: str
    key: str
    event_name: str = ""
    event_time: datetime | None = None  # when S3 says the object was created (the metrics' lag starts there)


def is_sqs_batch(event: Any) -> bool:
    records = event.get("Records") if isinstance(event, dict) else None
    return (
        isinstance(records, list)
        and bool(records)
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)
    )


def object_refs(event: Any) -> list[ObjectRef]:
    """The uploaded objects an (already JSON-decoded) event announces; [] for test and non-create events."""
    if not isinstance(event, dict):
        raise UnknownEvent(f"expected a JSON object, got {type(event).__name__}")
    if event.get("Event") == "s3:TestEvent":
        return []
    if event.get("Type") == "Notification" and "Message" in event:  # SNS envelope (raw SQS subscription)
        return object_refs(_json(event["Message"], "SNS Message"))
    if event.get("source") == "aws.s3" and "detail-type" in event:
        if event["detail-type"] != "Object Created":
            return []
        detail = S3EventBridgeNotificationEvent(event).detail
        return _files([ObjectRef(detail.bucket.name, detail.object.key, "Object Created", _time(event.get("time")))])
    records = event.get("Records")
    if isinstance(records, list) and records:
        source = records[0].get("EventSource") or records[0].get("eventSource")
        if source == "aws:sns":
            refs = []
            for record in SNSEvent(event).records:
                refs += object_refs(_json(record.sns.message, "SNS Message"))
            return refs
        if source == "aws:s3":
            return _files(
                [
                    ObjectRef(
                        r.s3.bucket.name,
                        unquote_plus(r.s3.get_object.key),
                        r.event_name,
                        _time(r.raw_event.get("eventTime")),
                    )
                    for r in S3Event(event).records
                    if r.event_name.startswith("ObjectCreated:")
                ]
            )
        if source == "aws:sqs":
            raise UnknownEvent("an SQS batch must go through the batch processor, not object_refs")
    raise UnknownEvent(f"not an S3, SNS, EventBridge or SQS event (keys: {sorted(event)[:10]})")


def _files(refs: list[ObjectRef]) -> list[ObjectRef]:
    """The objects that are files: not a folder (a key ending with "/")."""
    return [ref for ref in refs if not ref.key.endswith("/")]


def _time(text: Any) -> datetime | None:
    """An event's ISO 8601 time (``2026-12-04T23:19:43.123Z``); None if absent or unreadable."""
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _json(text: Any, what: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise UnknownEvent(f"{what} is not JSON: {exc}") from None
