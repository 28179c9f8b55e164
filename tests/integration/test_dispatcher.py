"""The dispatcher against a real SQS (the moto server): several invocations in flight, one per instance,
and batches that come back when an invocation fails."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from devstack.dispatcher import Dispatcher
from devstack.function import Invocation


class Instance:
    """A function instance that waits, in each invocation, until ``barrier`` lets it go (or raises)."""

    def __init__(self, barrier: threading.Barrier | None = None, error: Exception | None = None):
        self.barrier, self.error = barrier, error
        self.events: list[Any] = []

    def invoke(self, event: Any) -> Invocation:
        self.events.append(event)
        if self.error is not None:
            raise self.error
        assert self.barrier is not None
        self.barrier.wait(timeout=30)  # BrokenBarrierError unless every instance is in an invocation at once
        return Invocation(True, {"batchItemFailures": []}, 200, 1)


@pytest.fixture
def queue(aws):
    url = aws.sqs.create_queue(QueueName="uploads", Attributes={"VisibilityTimeout": "180"})["QueueUrl"]
    return url


def test_every_instance_has_an_invocation_in_flight_at_once(aws, queue):
    for n in range(3):
        aws.sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"n": n}))
    barrier = threading.Barrier(3)
    instances = [Instance(barrier) for _ in range(3)]
    dispatcher = Dispatcher(
        aws.sqs, queue, instances, batch_size=1, batching_window=0, wait_seconds=1, log=lambda *a, **k: None
    )
    runner = threading.Thread(target=dispatcher.run)
    runner.start()
    try:
        for instance in instances:  # each got its own message, and all three waited for each other
            while not instance.events:
                threading.Event().wait(0.01)
    finally:
        dispatcher.stopping.set()
        runner.join(30)
    assert not barrier.broken
    bodies = sorted(json.loads(i.events[0]["Records"][0]["body"])["n"] for i in instances)
    assert bodies == [0, 1, 2]


def test_a_batch_whose_invocation_raises_comes_back_after_the_retry_delay(aws, queue):
    aws.sqs.send_message(QueueUrl=queue, MessageBody="{}")
    broken = Instance(error=RuntimeError("the function could not be started"))
    dispatcher = Dispatcher(
        aws.sqs, queue, [broken], batching_window=0, wait_seconds=1, retry_delay=0, log=lambda *a, **k: None
    )
    assert dispatcher.poll_once() == 1
    again = aws.sqs.receive_message(QueueUrl=queue, AttributeNames=["All"], WaitTimeSeconds=1)["Messages"]
    assert again[0]["Attributes"]["ApproximateReceiveCount"] == "2"  # not held for the 180 s visibility timeout
