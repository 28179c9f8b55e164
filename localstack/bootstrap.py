#!/usr/bin/env python3
"""Create the pipeline's bucket, queues, topic and wiring from resources.json. Applying twice changes nothing.

Needs only boto3, so it runs inside the LocalStack container (compose ready.d hook) as well as on the
host (the embedded stack). The endpoint comes from AWS_ENDPOINT_URL (or --endpoint-url).

    python localstack/bootstrap.py [--endpoint-url http://127.0.0.1:4566] [--print-env]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

DEFINITION = Path(__file__).resolve().with_name("resources.json")


def load_definition(path: Path = DEFINITION) -> dict[str, Any]:
    return json.loads(path.read_text())


def apply(endpoint_url: str | None = None, definition: dict[str, Any] | None = None) -> dict[str, str]:
    """Create or update every resource; return their names, URLs and ARNs (read from the API)."""
    d = definition or load_definition()
    session = boto3.session.Session(region_name=os.environ.get("AWS_DEFAULT_REGION") or d["region"])
    s3 = session.client("s3", endpoint_url=endpoint_url)
    sqs = session.client("sqs", endpoint_url=endpoint_url)
    sns = session.client("sns", endpoint_url=endpoint_url)

    bucket = d["bucket"]
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        if session.region_name == "us-east-1":
            s3.create_bucket(Bucket=bucket)
        else:
            s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": session.region_name})

    dlq = d["dead_letter_queue"]
    dlq_url = sqs.create_queue(
        QueueName=dlq["name"], Attributes={"MessageRetentionPeriod": str(dlq["message_retention_seconds"])}
    )["QueueUrl"]
    dlq_arn = _queue_arn(sqs, dlq_url)

    q = d["queue"]
    queue_url = sqs.create_queue(QueueName=q["name"])["QueueUrl"]
    queue_arn = _queue_arn(sqs, queue_url)
    sqs.set_queue_attributes(
        QueueUrl=queue_url,
        Attributes={
            "VisibilityTimeout": str(q["visibility_timeout_seconds"]),
            "MessageRetentionPeriod": str(q["message_retention_seconds"]),
            "ReceiveMessageWaitTimeSeconds": str(q["receive_wait_time_seconds"]),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": dlq["max_receive_count"]}),
            # What real S3 needs to deliver to the queue; emulators accept it as well.
            "Policy": json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "s3.amazonaws.com"},
                            "Action": "sqs:SendMessage",
                            "Resource": queue_arn,
                            "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
                        }
                    ],
                }
            ),
        },
    )

    topic_arn = sns.create_topic(Name=d["topic"])["TopicArn"]
    tap_url = sqs.create_queue(QueueName=d["receipts_queue"])["QueueUrl"]
    tap_arn = _queue_arn(sqs, tap_url)
    subscribed = {s["Endpoint"] for s in sns.list_subscriptions_by_topic(TopicArn=topic_arn).get("Subscriptions", [])}
    if tap_arn not in subscribed:
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=tap_arn)

    n = d["notification"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            # every object under the prefix, whatever its name ends with: one that no contract claims gets its
            # verdict (no_contract), where a filter on .csv would leave a .tsv upload without a word
            "QueueConfigurations": [
                {
                    "Id": n["id"],
                    "QueueArn": queue_arn,
                    "Events": n["events"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": n["prefix"]}]}},
                }
            ]
        },
    )
    return {
        "bucket": bucket,
        "queue_url": queue_url,
        "queue_arn": queue_arn,
        "dlq_url": dlq_url,
        "topic_arn": topic_arn,
        "receipts_queue_url": tap_url,
    }


def _queue_arn(sqs: Any, url: str) -> str:
    return str(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"))
    parser.add_argument("--wait", type=float, default=0, help="seconds to keep retrying while the emulator starts")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            resources = apply(args.endpoint_url)
            break
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() >= deadline:
                raise
            print(f"emulator not ready yet ({type(exc).__name__}); retrying", file=sys.stderr)
            time.sleep(1)
    json.dump(resources, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
