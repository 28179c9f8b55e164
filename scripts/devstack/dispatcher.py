"""The local stand-in for Lambda's SQS event source mapping, with several function instances at once.

Like the event source mapping (``QueueTrigger`` in deploy/template.yaml), it keeps up to N invocations in
flight, N being the number of function instances (``INGEST_CONCURRENCY``; AWS's ``MaximumConcurrency``):
one poller per instance, each of which long-polls the uploads queue, gathers a batch (up to ``batch_size``
messages, waiting up to ``batching_window`` seconds after the first for more), sends it to its instance
as the SQS event AWS would send, deletes the messages that succeeded and leaves the failed ones (the
whole batch on an error, or those named in ``batchItemFailures``) to come back, until the queue's
redrive policy moves them to the dead-letter queue. An instance serves one invocation at a time, as a
Lambda execution environment does (and as the RIE must: concurrent invocations crash it). A dev-stack
convenience: a failed message becomes visible again after ``retry_delay`` seconds instead of the whole
visibility timeout, so that retries show up quickly.

    python -m devstack.dispatcher (--queue-url URL | --queue-name NAME)
        (--function-url URL [--instances N] | --embedded CONFIG.json)

``--function-url`` may hold ``{instance}``, replaced by 1..N (compose: one container per instance).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import boto3

from .function import EmbeddedFunction, Invocation, Runtime
from .processes import port_open

#: The event source of deploy/template.yaml and localstack/resources.json ("event_source").
BATCH_SIZE = 10
BATCHING_WINDOW_SECONDS = 1.0


class Function(Protocol):
    def invoke(self, event: Any) -> Invocation: ...


class RemoteFunction:
    """A function behind an invoke URL (the Lambda container in compose); invoked one call at a time.

    When the function does not answer (its container crashed and is being restarted), the next batch
    waits up to ``ready_timeout_s`` for it instead of spending one of the message's receives on a closed
    port: as the embedded stack restarts its function before invoking it. Its runtime is warmed up first
    (``function.WARM_UP_EVENT``) whenever it may have started again: at first, after it did not answer, and
    after an invocation that failed."""

    def __init__(self, url: str, timeout_s: float = 130, ready_timeout_s: float = 120):
        self.url = url
        self.timeout_s = timeout_s
        self.ready_timeout_s = ready_timeout_s
        self._lock = threading.Lock()
        parsed = urlsplit(url)
        self._host, self._port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.runtime = Runtime(url)

    @property
    def warm(self) -> bool:
        return self.runtime.warm

    def invoke(self, event: Any) -> Invocation:
        with self._lock:
            if not port_open(self._port, self._host):
                self.runtime.cooled()
                log_line("the function does not answer; waiting for it", url=self.url)
                deadline = time.monotonic() + self.ready_timeout_s
                while time.monotonic() < deadline and not port_open(self._port, self._host):
                    time.sleep(0.2)
            return self.runtime.invoke(event, self.timeout_s)


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """The event Lambda's SQS event source mapping delivers for a batch of received messages."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": {
                    name: {
                        "stringValue": value.get("StringValue"),
                        "binaryValue": value.get("BinaryValue"),
                        "stringListValues": [],
                        "binaryListValues": [],
                        "dataType": value["DataType"],
                    }
                    for name, value in m.get("MessageAttributes", {}).items()
                },
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }


def failed_message_ids(invocation: Invocation, message_ids: list[str]) -> list[str]:
    """Which messages of a batch must come back: all on an error, else those the function named."""
    if not invocation.ok:
        return list(message_ids)
    payload = invocation.payload if isinstance(invocation.payload, dict) else {}
    named = {f.get("itemIdentifier") for f in payload.get("batchItemFailures", []) or []}
    return [m for m in message_ids if m in named]


class Dispatcher:
    """Up to ``len(functions)`` invocations in flight: a poller per function instance (see the docstring)."""

    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        functions: list[Function],
        batch_size: int = BATCH_SIZE,
        batching_window: float = BATCHING_WINDOW_SECONDS,
        wait_seconds: int = 2,
        retry_delay: int = 2,
        log: Callable[..., None] | None = None,
    ):
        if not functions:
            raise ValueError("the dispatcher needs at least one function instance")
        self.sqs = sqs
        self.queue_url = queue_url
        self.functions = functions
        self.batch_size = batch_size
        self.batching_window = batching_window
        self.wait_seconds = wait_seconds
        self.retry_delay = retry_delay
        self.log = log or log_line
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
        self.queue_arn = attributes["QueueArn"]
        self.region = self.queue_arn.split(":")[3]
        self.stopping = threading.Event()

    def receive_batch(self) -> list[dict[str, Any]]:
        """Long-poll for a first message, then gather more for up to ``batching_window`` seconds, until the
        batch is full: what the event source mapping does with MaximumBatchingWindowInSeconds."""
        messages = self._receive(self.batch_size, self.wait_seconds)
        window_ends = time.monotonic() + self.batching_window
        while messages and len(messages) < self.batch_size and not self.stopping.is_set():
            left = window_ends - time.monotonic()
            if left <= 0:
                break
            more = self._receive(self.batch_size - len(messages), int(left))  # SQS waits whole seconds
            messages += more
            if not more and left < 1:
                self.stopping.wait(min(left, 0.05))
        return messages

    def _receive(self, count: int, wait_seconds: int) -> list[dict[str, Any]]:
        return list(
            self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=count,
                WaitTimeSeconds=wait_seconds,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
        )

    def poll_once(self, instance: int = 1) -> int:
        """Receive one batch and dispatch it to function instance ``instance`` (1..N); return how many messages
        were received."""
        function = self.functions[instance - 1]
        messages = self.receive_batch()
        if not messages:
            return 0
        ids = [m["MessageId"] for m in messages]
        try:
            invocation = function.invoke(sqs_event(messages, self.queue_arn, self.region))
        except Exception as exc:  # the instance could not be (re)started: the batch comes back after retry_delay
            invocation = Invocation(False, {"errorType": type(exc).__name__, "errorMessage": str(exc)}, 0, 0)
        failed = set(failed_message_ids(invocation, ids))
        done = [m for m in messages if m["MessageId"] not in failed]
        if done:
            self.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
            )
        for m in messages:
            if m["MessageId"] in failed:
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=self.retry_delay
                )
        self.log(
            "dispatched",
            instance=instance,
            messages=len(messages),
            succeeded=len(done),
            failed=len(failed),
            receive_counts=[int(m.get("Attributes", {}).get("ApproximateReceiveCount", 0)) for m in messages],
            duration_ms=invocation.duration_ms,
            error=None if invocation.ok else invocation.payload,
        )
        return len(messages)

    def run(self) -> None:
        """A poller per instance until ``stopping`` is set; each ends after the invocation it is in."""
        pollers = [
            threading.Thread(target=self._poll, args=(i,), name=f"poller-{i}")
            for i in range(1, len(self.functions) + 1)
        ]
        for poller in pollers:
            poller.start()
        self.log("dispatcher started", queue=self.queue_url, instances=len(self.functions))
        for poller in pollers:
            poller.join()
        self.log("dispatcher stopped")

    def _poll(self, instance: int) -> None:
        while not self.stopping.is_set():
            try:
                self.poll_once(instance)
            except Exception as exc:
                self.log("poll failed; retrying", instance=instance, error=f"{type(exc).__name__}: {exc}")
                self.stopping.wait(1)


def log_line(message: str, **fields: Any) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(json.dumps({"time": stamp, "component": "dispatcher", "message": message, **fields}, default=str), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.dispatcher", description=__doc__.splitlines()[0])
    queue = parser.add_mutually_exclusive_group(required=True)
    queue.add_argument("--queue-url")
    queue.add_argument("--queue-name", help="resolved with GetQueueUrl (the account id differs between emulators)")
    parser.add_argument("--endpoint-url", help="the emulator (default: AWS_ENDPOINT_URL)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--function-url", help="invoke URL of running function instances (the Lambda containers); {instance}: 1..N"
    )
    target.add_argument("--embedded", type=Path, help="JSON config: start RIE + awslambdaric instances on the host")
    parser.add_argument("--instances", type=int, default=1, help="with --function-url: how many instances")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument(
        "--batching-window", type=float, default=BATCHING_WINDOW_SECONDS, help="seconds to gather a batch"
    )
    parser.add_argument("--retry-delay", type=int, default=2, help="seconds before a failed message is retried")
    args = parser.parse_args(argv)

    functions: list[Function]
    embedded: list[EmbeddedFunction] = []
    if args.embedded:
        embedded = embedded_instances(json.loads(args.embedded.read_text()))
        functions = list(embedded)
    else:
        urls = [args.function_url.replace("{instance}", str(i)) for i in range(1, args.instances + 1)]
        functions = [RemoteFunction(url) for url in urls]

    sqs = boto3.session.Session().client("sqs", endpoint_url=args.endpoint_url)
    queue_url = args.queue_url or sqs.get_queue_url(QueueName=args.queue_name)["QueueUrl"]
    dispatcher = Dispatcher(
        sqs,
        queue_url,
        functions,
        batch_size=args.batch_size,
        batching_window=args.batching_window,
        retry_delay=args.retry_delay,
    )

    def stop(_signum: int, _frame: Any) -> None:
        dispatcher.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for instance in embedded:
            instance.start()
        dispatcher.run()
    finally:
        for instance in embedded:
            instance.stop()
    return 0


def embedded_instances(config: dict[str, Any]) -> list[EmbeddedFunction]:
    """The function instances a config of the embedded stack describes (``instances``: a port, a log file and
    a pid file each; the rest is shared)."""
    return [
        EmbeddedFunction(
            rie_binary=Path(config["rie"]),
            port=instance["port"],
            environment=config["environment"],
            log_file=Path(instance["log_file"]),
            handler=config["handler"],
            timeout_s=int(config["environment"]["AWS_LAMBDA_FUNCTION_TIMEOUT"]),
            pid_file=Path(instance["pid_file"]),
            runtime_api_port=instance.get("runtime_api_port"),
        )
        for instance in config["instances"]
    ]


if __name__ == "__main__":
    sys.exit(main())
