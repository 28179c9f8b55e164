"""A service out of reach, on both stacks: an instance of the function of its own is pointed at a black-holed
address (connections never answered, as in a VPC without a route) or a closed port, and invoked with an SQS
delivery. It must answer well before its deadline (its own ``timeout`` reason would say otherwise), name the
service and the likely cause in its receipt, ledger row (where the database answers) and log, and hand the
delivery back to be retried."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.e2e.conftest import ExtraFunction, Stack, unique_users

pytestmark = pytest.mark.stack


def delivery(stack: Stack, key: str) -> tuple[dict[str, Any], str]:
    """An SQS batch of one S3 notification for ``key``, as the event source hands it over; and its message id."""
    message_id = f"unreachable-{uuid.uuid4().hex[:8]}"
    body = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": "2026-12-05T00:00:00.000Z",
                "s3": {"bucket": {"name": stack.bucket}, "object": {"key": key, "size": 1}},
            }
        ]
    }
    record = {
        "messageId": message_id,
        "receiptHandle": "h",
        "body": json.dumps(body),
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:ingest-uploads",
        "awsRegion": "us-east-1",
    }
    return {"Records": [record]}, message_id


def retried(function: ExtraFunction, event: dict[str, Any], message_id: str) -> None:
    """The invocation answered, handing the message back to the queue (a batch item failure)."""
    invocation = function.invoke(event)
    assert invocation.ok, invocation.payload
    assert invocation.payload == {"batchItemFailures": [{"itemIdentifier": message_id}]}


def unreachable_receipt(stack: Stack, key: str, reason: str) -> dict[str, Any]:
    receipt = stack.receipts_for(key, timeout=90)[0]
    assert (receipt["status"], receipt["reason"]) == ("failed", reason), receipt
    assert "will be retried" in receipt["message"]
    return receipt


def test_s3_black_holed_is_named_with_its_likely_cause_and_retried(stack):
    key = f"incoming/users/s3_hole_{uuid.uuid4().hex[:8]}.csv"
    event, message_id = delivery(stack, key)
    with stack.black_hole() as hole, stack.function_with(AWS_ENDPOINT_URL_S3=f"http://{hole}") as function:
        retried(function, event, message_id)
        log = function.log()
    receipt = unreachable_receipt(stack, key, "s3_unreachable")
    assert receipt["message"].startswith("S3 did not accept a connection: no answer to the connection")
    assert "VPC endpoint" in receipt["message"] and "CreateVpcEndpoints" in receipt["message"]
    rows = stack.query("SELECT status, reason, error FROM ingest_ledger.ingest_files WHERE object_key = %s", key)
    assert [(r["status"], r["reason"]) for r in rows] == [("failed", "s3_unreachable")]
    assert '"reason":"s3_unreachable"' in log.replace(" ", "")


def test_s3_on_a_closed_port_is_named_as_refused(stack):
    key = f"incoming/users/s3_closed_{uuid.uuid4().hex[:8]}.csv"
    event, message_id = delivery(stack, key)
    with stack.function_with(AWS_ENDPOINT_URL_S3=f"http://{stack.closed_port()}") as function:
        retried(function, event, message_id)
    receipt = unreachable_receipt(stack, key, "s3_unreachable")
    assert "the connection was refused" in receipt["message"] and "AWS_ENDPOINT_URL" in receipt["message"]


def test_the_database_black_holed_is_named_in_the_receipt_and_log_and_retried(stack):
    key = f"incoming/users/db_hole_{uuid.uuid4().hex[:8]}.csv"
    event, message_id = delivery(stack, key)
    with stack.black_hole() as hole, stack.function_with(DATABASE_URL=f"postgresql://u:p@{hole}/db") as function:
        retried(function, event, message_id)
        log = function.log()
    receipt = unreachable_receipt(stack, key, "database_unreachable")
    assert receipt["message"].startswith("PostgreSQL did not accept a connection: no answer to the connection")
    assert "security group" in receipt["message"]
    assert stack.query("SELECT count(*) AS n FROM ingest_ledger.ingest_files WHERE object_key = %s", key)[0]["n"] == 0
    assert '"reason":"database_unreachable"' in log.replace(" ", "")


def test_secrets_manager_black_holed_is_named_in_the_receipt_and_retried(stack):
    key = f"incoming/users/secret_hole_{uuid.uuid4().hex[:8]}.csv"
    event, message_id = delivery(stack, key)
    secret = "arn:aws:secretsmanager:us-east-1:000000000000:secret:ingest-db"
    with (
        stack.black_hole() as hole,
        stack.function_with(
            DATABASE_URL="", DATABASE_SECRET_ARN=secret, AWS_ENDPOINT_URL_SECRETS_MANAGER=f"http://{hole}"
        ) as function,
    ):
        retried(function, event, message_id)
    receipt = unreachable_receipt(stack, key, "secrets_manager_unreachable")
    assert receipt["message"].startswith("Secrets Manager did not accept a connection: no answer")
    assert "the file was not read" in receipt["message"]


def test_sns_on_a_closed_port_the_file_loads_and_the_lost_receipt_is_in_the_log(stack):
    data, ids = unique_users(rows=3)
    key = f"incoming/users/sns_closed_{uuid.uuid4().hex[:8]}.csv"
    event, _message_id = delivery(stack, key)
    with stack.dispatcher_paused(), stack.function_with(AWS_ENDPOINT_URL_SNS=f"http://{stack.closed_port()}") as fn:
        stack.upload(key, data)  # its notification waits for the dispatcher: this instance loads it first
        invocation = fn.invoke(event)
        log = fn.log()
    assert invocation.ok and invocation.payload == {"batchItemFailures": []}, invocation.payload
    rows = stack.query("SELECT status FROM ingest_ledger.ingest_files WHERE object_key = %s ORDER BY id", key)
    assert rows[0]["status"] == "loaded"
    assert len(stack.query("SELECT id FROM users WHERE id = ANY(%s)", ids)) == 3
    line = next(json.loads(x) for x in log.splitlines() if '"could not publish the receipt"' in x)
    assert line["reason"] == "sns_unreachable" and line["receipt"]["status"] == "loaded"
    assert line["detail"].startswith("SNS did not accept a connection: the connection was refused")
