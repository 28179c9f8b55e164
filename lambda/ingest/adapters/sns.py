"""SNS adapter: publish receipts on the topic subscribers watch."""

from __future__ import annotations

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
