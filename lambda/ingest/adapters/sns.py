"""SNS adapter: publish receipts on the topic subscribers watch."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from ..deadlines import bounded
from ..receipt import Receipt
from .network import Reaching


class PublishCutOff(TimeoutError):
    """SNS had not answered the publish of a receipt when the invocation was about to end."""


class Notifier:
    def __init__(self, client: Any, topic_arn: str | None):
        self.client = Reaching(client, "SNS")  # a failed connection raises ServiceUnreachable("SNS")
        self.topic_arn = topic_arn

    def publish(self, receipt: Receipt, until: float | None = None) -> str | None:
        """Publish ``receipt``; with ``until`` (a ``time.monotonic()`` value: the end of the invocation), wait
        for SNS's answer until then and no longer (PublishCutOff). A stalled answer would otherwise hold the
        function for the client's read timeout (a minute, and again for each retry) until the runtime kills
        it: the handler would not return, and a file loaded and on record would be delivered again."""
        if not self.topic_arn:
            return None

        def request() -> Any:
            return self.client.publish(
                TopicArn=self.topic_arn,
                Subject=receipt.subject,
                Message=receipt.to_json(),
                MessageAttributes=receipt.attributes,
            )

        cut_off = f"SNS did not answer the publish of the receipt of {receipt.key} before the invocation's end"
        return str(bounded(request, until, lambda: PublishCutOff(cut_off), "sns-publish")["MessageId"])


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
