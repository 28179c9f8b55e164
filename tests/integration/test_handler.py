"""The Lambda handler with every event shape that can carry an upload, against real servers."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from urllib.parse import quote_plus

import pytest

from ingest import bootstrap
from ingest.handler import ObjectsFailed, lambda_handler
from tests.conftest import SAMPLES


@dataclass
class Context:
    function_name: str = "ingest"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:ingest"
    aws_request_id: str = "req-123"


@pytest.fixture(autouse=True)
def fresh_bootstrap(pipeline):
    bootstrap.dependencies.cache_clear()
    yield
    if bootstrap.dependencies.cache_info().currsize:
        bootstrap.dependencies().database.dispose()
    bootstrap.dependencies.cache_clear()


def s3_event(bucket: str, *keys: str, event_name: str = "ObjectCreated:Put") -> dict:
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2026-01-01T00:00:00.000Z",
                "eventName": event_name,
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "ingest",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": quote_plus(key), "size": 1, "eTag": "x", "sequencer": "0"},
                },
            }
            for key in keys
        ]
    }


def sns_envelope(message: dict) -> dict:
    return {
        "Type": "Notification",
        "MessageId": "m",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:t",
        "Subject": "Amazon S3 Notification",
        "Message": json.dumps(message),
        "Timestamp": "2026-01-01T00:00:00Z",
    }


def sns_event(message: dict) -> dict:
    envelope = sns_envelope(message)
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": "arn:x",
                "Sns": {
                    **envelope,
                    "MessageAttributes": {},
                    "SignatureVersion": "1",
                    "Signature": "",
                    "SigningCertUrl": "",
                    "UnsubscribeUrl": "",
                },
            }
        ]
    }


def eventbridge_event(bucket: str, key: str) -> dict:
    return {
        "version": "0",
        "id": "e",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2026-01-01T00:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": quote_plus(key), "size": 1, "etag": "x"},
            "request-id": "r",
            "requester": "me",
            "reason": "PutObject",
        },
    }


def sqs_event(*bodies: str) -> dict:
    return {
        "Records": [
            {
                "messageId": f"msg-{i}",
                "receiptHandle": "h",
                "body": body,
                "attributes": {},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q",
                "awsRegion": "us-east-1",
            }
            for i, body in enumerate(bodies)
        ]
    }


def test_direct_s3_event_with_an_encoded_key(pipeline):
    key = "incoming/users/Grüße + more 1.csv"
    pipeline.upload(key, (SAMPLES / "users.csv").read_bytes())
    result = lambda_handler(s3_event(pipeline.bucket, key), Context())
    [receipt] = result["receipts"]
    assert receipt["status"] == "loaded" and receipt["key"] == key
    assert pipeline.query("SELECT request_id FROM ingest_ledger.ingest_files") == [{"request_id": "req-123"}]


def test_sns_wrapped_and_eventbridge_events(pipeline):
    pipeline.upload("incoming/users.csv", (SAMPLES / "users.csv").read_bytes())
    pipeline.upload("incoming/test.csv", (SAMPLES / "test.csv").read_bytes())
    first = lambda_handler(sns_event(s3_event(pipeline.bucket, "incoming/users.csv")), Context())
    second = lambda_handler(eventbridge_event(pipeline.bucket, "incoming/test.csv"), Context())
    assert first["receipts"][0]["status"] == second["receipts"][0]["status"] == "loaded"


def test_test_event_and_removals_are_acknowledged_and_ignored(pipeline):
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": pipeline.bucket}
    assert lambda_handler(test_event, Context()) == {"receipts": []}
    removed = s3_event(pipeline.bucket, "incoming/users.csv", event_name="ObjectRemoved:Delete")
    assert lambda_handler(removed, Context()) == {"receipts": []}
    assert lambda_handler(sqs_event(json.dumps(test_event)), Context()) == {"batchItemFailures": []}


def test_every_upload_under_incoming_gets_a_verdict_and_a_folder_none(pipeline):
    # The notification filtered on .csv: a .tsv upload got no event, no receipt, no ledger row. Every object
    # under incoming/ now notifies; one that no contract claims is rejected, saying so. A folder the S3
    # console makes ("incoming/exports/", no bytes) is no file and is acknowledged without a verdict.
    pipeline.upload("incoming/exports/title.basics.tsv", b"tconst\ttitle\ntt1\tCarmencita\n")
    pipeline.upload("incoming/exports/", b"")
    assert lambda_handler(s3_event(pipeline.bucket, "incoming/exports/"), Context()) == {"receipts": []}
    assert lambda_handler(eventbridge_event(pipeline.bucket, "incoming/exports/"), Context()) == {"receipts": []}
    [receipt] = lambda_handler(s3_event(pipeline.bucket, "incoming/exports/title.basics.tsv"), Context())["receipts"]
    assert (receipt["status"], receipt["reason"]) == ("rejected", "no_contract")


def test_sqs_batch_reports_only_the_failed_records(pipeline):
    pipeline.upload("incoming/users.csv", (SAMPLES / "users.csv").read_bytes())
    pipeline.upload("incoming/inventory.csv", (SAMPLES / "inventory.csv").read_bytes())
    event = sqs_event(
        json.dumps(s3_event(pipeline.bucket, "incoming/users.csv")),
        "this is not json",
        json.dumps(sns_envelope(s3_event(pipeline.bucket, "incoming/inventory.csv"))),  # rejected, not failed
        json.dumps(s3_event(pipeline.bucket, "incoming/users/missing.csv")),  # object does not exist
    )
    result = lambda_handler(event, Context())
    assert result == {"batchItemFailures": [{"itemIdentifier": "msg-1"}, {"itemIdentifier": "msg-3"}]}
    statuses = {
        r["object_key"]: r["status"]
        for r in pipeline.query("SELECT object_key, status FROM ingest_ledger.ingest_files")
    }
    assert statuses == {
        "incoming/users.csv": "loaded",
        "incoming/inventory.csv": "rejected",
        "incoming/users/missing.csv": "failed",
    }


def test_one_bad_object_in_a_direct_event_does_not_block_the_others(pipeline):
    pipeline.upload("incoming/users.csv", (SAMPLES / "users.csv").read_bytes())
    with pytest.raises(ObjectsFailed, match=r"missing\.csv"):
        lambda_handler(s3_event(pipeline.bucket, "incoming/users/missing.csv", "incoming/users.csv"), Context())
    assert pipeline.query("SELECT count(*) AS n FROM users")[0]["n"] == 5


def test_unknown_event_shapes_fail_clearly(pipeline):
    with pytest.raises(ValueError, match="not an S3, SNS, EventBridge or SQS event"):
        lambda_handler({"hello": "world"}, Context())


def test_the_database_url_can_come_from_secrets_manager(pipeline, monkeypatch):
    import boto3

    secrets = boto3.session.Session(region_name="us-east-1").client(
        "secretsmanager", endpoint_url=pipeline.aws.endpoint
    )
    arn = secrets.create_secret(Name="ingest/database", SecretString=pipeline.database_url)["ARN"]
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.setenv("DATABASE_SECRET_ARN", arn)
    bootstrap.dependencies.cache_clear()
    pipeline.upload("incoming/users.csv", (SAMPLES / "users.csv").read_bytes())
    [receipt] = lambda_handler(s3_event(pipeline.bucket, "incoming/users.csv"), Context())["receipts"]
    assert receipt["status"] == "loaded"


def test_without_any_database_setting_the_function_says_so(pipeline, monkeypatch):
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.delenv("DATABASE_SECRET_ARN", raising=False)
    bootstrap.dependencies.cache_clear()
    pipeline.upload("incoming/users.csv", (SAMPLES / "users.csv").read_bytes())
    with pytest.raises(ObjectsFailed, match="ConfigurationError: neither DATABASE_URL nor DATABASE_SECRET_ARN"):
        lambda_handler(s3_event(pipeline.bucket, "incoming/users.csv"), Context())
    (receipt,) = pipeline.receipts()
    assert (receipt["status"], receipt["reason"]) == ("failed", "configuration_error")
    assert receipt["message"].startswith("neither DATABASE_URL nor DATABASE_SECRET_ARN is set")


def test_a_batch_whose_dependencies_are_out_of_reach_waits_once_and_says_so_for_every_record(pipeline, monkeypatch):
    from ingest.adapters.network import ServiceUnreachable

    calls = []

    def unreachable():
        calls.append(1)  # each try would wait ~10 s for a black-holed Secrets Manager
        raise ServiceUnreachable("Secrets Manager", "ConnectTimeoutError: Connect timeout", "timeout")

    monkeypatch.setattr(bootstrap, "dependencies", functools.lru_cache(maxsize=1)(unreachable))  # as it is
    bodies = [json.dumps(s3_event(pipeline.bucket, f"incoming/users_{i}.csv")) for i in range(3)]
    result = lambda_handler(sqs_event(*bodies), Context())
    assert result == {"batchItemFailures": [{"itemIdentifier": f"msg-{i}"} for i in range(3)]}
    assert calls == [1]
    receipts = pipeline.receipts()
    assert [(r["status"], r["reason"]) for r in receipts] == [("failed", "secrets_manager_unreachable")] * 3
    assert lambda_handler(sqs_event(bodies[0]), Context())["batchItemFailures"] and calls == [1, 1]  # tried again


def test_a_service_found_out_of_reach_fails_the_rest_of_the_batch_at_once_on_record(pipeline, monkeypatch):
    from ingest.adapters.network import ServiceUnreachable
    from ingest.adapters.s3 import ObjectStore

    heads = []

    def unreachable(self, bucket, key, deadline=None):
        heads.append(key)  # each would wait ~10 s for a black-holed S3
        raise ServiceUnreachable("S3", "ConnectTimeoutError: Connect timeout", "timeout")

    monkeypatch.setattr(ObjectStore, "head", unreachable)
    bodies = [json.dumps(s3_event(pipeline.bucket, f"incoming/users_{i}.csv")) for i in range(3)]
    result = lambda_handler(sqs_event(*bodies), Context())
    assert result == {"batchItemFailures": [{"itemIdentifier": f"msg-{i}"} for i in range(3)]}
    assert heads == ["incoming/users_0.csv"]
    assert [(r["status"], r["reason"]) for r in pipeline.receipts()] == [("failed", "s3_unreachable")] * 3
    rows = pipeline.query("SELECT object_key, reason FROM ingest_ledger.ingest_files ORDER BY id")
    assert [(r["object_key"], r["reason"]) for r in rows] == [
        (f"incoming/users_{i}.csv", "s3_unreachable") for i in range(3)
    ]
