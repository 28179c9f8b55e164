"""The Lambda entrypoint: decode the event, hand each object to the service, report per-record failures.

Handler string: ``ingest.handler.lambda_handler``.
- SQS batch: returns ``{"batchItemFailures": [...]}`` so that only failed messages are retried. Each record's
  message id and receive count go with its objects (``Delivery``), so that a delivery finds the earlier ones
  that died (``INGEST_MAX_RECEIVE_COUNT``, the queue's maxReceiveCount, says which delivery is the last).
- Direct S3 / SNS / EventBridge event: returns the receipts; raises if any object failed, after every
  object of the event was tried (one bad file never blocks the others).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from . import bootstrap
from .adapters.network import ServiceUnreachable
from .events import ObjectRef, UnknownEvent, is_sqs_batch, object_refs
from .log import logger
from .receipt import Receipt
from .service import Delivery, could_not_start, ingest_object

# Return batchItemFailures even when every record failed: the outcome is the same (all retried) and the
# response shape stays one thing for callers.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


class ObjectsFailed(RuntimeError):
    pass


#: Kept at the end of an invocation for the handler to return its answer after the last wait.
RETURN_RESERVE_MS = 250


def time_limits(context: Any) -> tuple[float | None, float | None]:
    """``(deadline, ends)`` as ``time.monotonic()`` values, from the time the Lambda context says is left:
    - deadline: when the function must give up a file, less a margin to roll back, write the ledger and
      publish the receipt (10% of the time left, 1 to 10 seconds; ``INGEST_DEADLINE_MARGIN_MS`` overrides);
    - ends: when the runtime ends this invocation, less RETURN_RESERVE_MS to return the handler's answer:
      the last moment to wait for anything (the receipt's publish).
    Both None without a Lambda context."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return None, None
    now, left_ms = time.monotonic(), int(remaining())
    margin_ms = int(os.environ.get("INGEST_DEADLINE_MARGIN_MS") or min(max(left_ms // 10, 1000), 10_000))
    return now + max(left_ms - margin_ms, 0) / 1000, now + max(left_ms - RETURN_RESERVE_MS, 0) / 1000


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request_id = getattr(context, "aws_request_id", None)
    deadline, ends = time_limits(context)
    if is_sqs_batch(event):
        out_of_reach = OutOfReach()
        return process_partial_response(  # type: ignore[return-value]
            event=event,
            record_handler=lambda record: _sqs_record(record, request_id, deadline, ends, out_of_reach),
            processor=processor,
            context=context,
        )
    receipts, failures = _ingest_all(object_refs(event), request_id, deadline, ends)
    if failures:
        raise ObjectsFailed("; ".join(failures))
    return {"receipts": [r.to_dict() for r in receipts]}


def _sqs_record(
    record: SQSRecord,
    request_id: str | None,
    deadline: float | None,
    ends: float | None,
    out_of_reach: OutOfReach | None = None,
) -> list[dict[str, Any]]:
    try:
        body = json.loads(record.body)
    except ValueError as exc:
        raise UnknownEvent(f"SQS message {record.message_id} body is not JSON: {exc}") from None
    count = (record.raw_event.get("attributes") or {}).get("ApproximateReceiveCount")
    delivery = Delivery(record.message_id, _number(count), max_receives())
    receipts, failures = _ingest_all(object_refs(body), request_id, deadline, ends, delivery, out_of_reach)
    if failures:
        raise ObjectsFailed("; ".join(failures))
    return [r.to_dict() for r in receipts]


def max_receives() -> int | None:
    """The uploads queue's maxReceiveCount, when the deployment says it (INGEST_MAX_RECEIVE_COUNT)."""
    return _number(os.environ.get("INGEST_MAX_RECEIVE_COUNT"))


def _number(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


@dataclass
class OutOfReach:
    """What one invocation found out of reach: why its dependencies could not be built, the first service
    that did not answer."""

    dependencies: Exception | None = None
    service: ServiceUnreachable | None = None


def _ingest_all(
    refs: list[ObjectRef],
    request_id: str | None,
    deadline: float | None = None,
    ends: float | None = None,
    delivery: Delivery | None = None,
    out_of_reach: OutOfReach | None = None,
) -> tuple[list[Receipt], list[str]]:
    """Ingest each object; ``out_of_reach`` (one per invocation) keeps what was found out of reach (the
    dependencies could not be built, or S3 or PostgreSQL did not answer), so that the other records of a
    batch fail at once with that reason rather than wait again: ten records each waiting ~10 s for a
    black-holed service would outlast the invocation, and end as timeouts. The next invocation tries again."""
    if not refs:
        logger.info("nothing to ingest in this event (test event or not an object creation)")
        return [], []
    out_of_reach = out_of_reach or OutOfReach()
    try:
        if out_of_reach.dependencies is not None:
            raise out_of_reach.dependencies  # an earlier record of this batch found them out of reach
        deps = bootstrap.dependencies()
    except Exception as exc:  # nothing can be read or recorded: each file's receipt says why, then retried
        out_of_reach.dependencies = exc
        for ref in refs:
            could_not_start(ref.bucket, ref.key, exc, bootstrap.notifier(), ends)
        return [], [f"s3://{ref.bucket}/{ref.key}: {type(exc).__name__}: {exc}" for ref in refs]
    receipts, failures = [], []
    for ref in refs:
        try:
            receipts.append(
                ingest_object(
                    ref.bucket,
                    ref.key,
                    deps,
                    request_id,
                    deadline,
                    ends,
                    delivery,
                    ref.event_time,
                    unreachable=out_of_reach.service,
                )
            )
        except Exception as exc:
            if isinstance(exc, ServiceUnreachable) and out_of_reach.service is None:
                out_of_reach.service = exc
            failures.append(f"s3://{ref.bucket}/{ref.key}: {type(exc).__name__}: {exc}")
    return receipts, failures
