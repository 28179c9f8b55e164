"""localstack/bootstrap.py: the one definition of buckets, queues, topic and wiring, applied idempotently."""

from __future__ import annotations

import json

from devstack.stack import load_bootstrap


def snapshot(aws, resources):
    s3, sqs, sns = aws.s3, aws.sqs, aws.sns
    queue = sqs.get_queue_attributes(QueueUrl=resources["queue_url"], AttributeNames=["All"])["Attributes"]
    return {
        "buckets": sorted(b["Name"] for b in s3.list_buckets()["Buckets"]),
        "notification": s3.get_bucket_notification_configuration(Bucket=resources["bucket"])["QueueConfigurations"],
        "queues": sorted(sqs.list_queues()["QueueUrls"]),
        "queue": {k: queue[k] for k in ("VisibilityTimeout", "RedrivePolicy", "MessageRetentionPeriod")},
        "topics": [t["TopicArn"] for t in sns.list_topics()["Topics"]],
        "subscriptions": sorted(s["Endpoint"] for s in sns.list_subscriptions()["Subscriptions"]),
    }


def test_applying_twice_changes_nothing_and_wires_uploads_to_the_queue(aws):
    bootstrap = load_bootstrap()
    definition = bootstrap.load_definition()
    first = bootstrap.apply(aws.endpoint, definition)
    before = snapshot(aws, first)
    second = bootstrap.apply(aws.endpoint, definition)
    assert first == second and snapshot(aws, second) == before

    assert len(before["subscriptions"]) == 1 and len(before["topics"]) == 1
    redrive = json.loads(before["queue"]["RedrivePolicy"])
    assert redrive["maxReceiveCount"] == definition["dead_letter_queue"]["max_receive_count"]
    assert int(before["queue"]["VisibilityTimeout"]) > definition["function"]["timeout_seconds"]

    # every object under incoming/ notifies the queue (a .tsv, a .txt too: no contract, a verdict all the same)
    for key in ("incoming/users.csv", "incoming/users.csv.gz", "processed/users/x.csv", "incoming/notes.txt"):
        aws.s3.put_object(Bucket=first["bucket"], Key=key, Body=b"id\n1\n")
    bodies = []
    while True:
        got = aws.sqs.receive_message(QueueUrl=first["queue_url"], MaxNumberOfMessages=10).get("Messages", [])
        if not got:
            break
        bodies += [json.loads(m["Body"]) for m in got]
        for m in got:
            aws.sqs.delete_message(QueueUrl=first["queue_url"], ReceiptHandle=m["ReceiptHandle"])
    keys = sorted(r["s3"]["object"]["key"] for b in bodies for r in b.get("Records", []))
    assert keys == ["incoming%2Fnotes.txt", "incoming%2Fusers.csv", "incoming%2Fusers.csv.gz"]
