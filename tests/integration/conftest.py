"""Fixtures for calling the function's service and handler in-process against real servers."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from ingest.adapters.postgres import Database
from ingest.adapters.s3 import ObjectStore
from ingest.adapters.sns import Notifier
from ingest.contract import ContractRegistry, default_contracts_dir, parse_contract
from ingest.service import Dependencies

BUCKET = "ingest-test"


@dataclass
class Pipeline:
    deps: Dependencies
    aws: Any
    database_url: str
    bucket: str
    receipts_queue: str

    def change_users_contract(self, **changes: Any) -> None:
        """Replace the users contract by a copy with ``changes`` to its top-level settings."""
        users = self.deps.contracts["users"]
        data = tomllib.loads(Path(users.source).read_text(encoding="utf-8"))
        data.update(changes)
        self.deps.contracts = ContractRegistry([parse_contract("users", data, source=users.source)])

    def upload(self, key: str, data: bytes) -> None:
        self.aws.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        return self.aws.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def keys(self, prefix: str = "") -> list[str]:
        listing = self.aws.s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for o in listing.get("Contents", []))

    def query(self, statement: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]

    def receipts(self) -> list[dict[str, Any]]:
        """Every receipt published so far, in order, with its SNS subject and attributes."""
        out = []
        while True:
            batch = self.aws.sqs.receive_message(
                QueueUrl=self.receipts_queue, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not batch:
                return out
            for message in batch:
                envelope = json.loads(message["Body"])
                receipt = json.loads(envelope["Message"])
                receipt["_subject"] = envelope.get("Subject")
                receipt["_attributes"] = {k: v["Value"] for k, v in envelope.get("MessageAttributes", {}).items()}
                out.append(receipt)
                self.aws.sqs.delete_message(QueueUrl=self.receipts_queue, ReceiptHandle=message["ReceiptHandle"])


@pytest.fixture
def pipeline(aws, database_url, monkeypatch) -> Pipeline:
    aws.s3.create_bucket(Bucket=BUCKET)
    topic = aws.sns.create_topic(Name="ingest-receipts")["TopicArn"]
    queue = aws.sqs.create_queue(QueueName="receipts")["QueueUrl"]
    queue_arn = aws.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    aws.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    deps = Dependencies(
        contracts=ContractRegistry.from_directory(default_contracts_dir()),
        store=ObjectStore(aws.s3),
        database=Database(database_url),
        notifier=Notifier(aws.sns, topic),
    )
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("INGEST_TOPIC_ARN", topic)
    yield Pipeline(deps, aws, database_url, BUCKET, queue)
    deps.database.dispose()
