"""SNS adapter: publish receipts on the topic subscribers watch."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from ..receipt import Receipt


class Notifier:
    def __init__(self, client: Any, topic_arn: str | None):
        self.client = client
        self.topic_arn = topic_arn

    def publish(self, receipt: Receipt) -> str | None:
        if not self.topic_arn:
            return None
        response = self.client.publish(
            TopicArn=self.topic_arn,
            Subject=receipt.subject,
            Message=receipt.to_json(),
            MessageAttributes=receipt.attributes,
        )
        return str(response["MessageId"])


def wait_for_receipt(
    sqs: Any, queue_url: str, key: str, since: datetime, timeout: float = 120
) -> dict[str, Any] | None:
    """The first receipt for ``key`` published at or after ``since``, read from an SQS subscription of the
    receipts topic (the stacks' ``ingest-receipts-tap``). Others' receipts are left for their readers. The
    receipt comes back with its SNS subject under ``"_subject"``."""
    deadline = time.monotonic() + timeout
    since = since.replace(microsecond=0)
    while time.monotonic() < deadline:
        for message in sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        ):
            envelope = json.loads(message["Body"])
            receipt = json.loads(envelope["Message"])
            published = datetime.fromisoformat(envelope["Timestamp"].replace("Z", "+00:00"))
            if receipt.get("key") == key and published >= since:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
                return {**receipt, "_subject": envelope.get("Subject", "")}
            sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
            )
    return None
