"""The local stand-in for Lambda's SQS event source mapping.

It long-polls the uploads queue, sends each batch to the function as the SQS event AWS would send, one
invocation at a time, deletes the messages that succeeded, and leaves the failed ones (whole batch on an
error, or those named in ``batchItemFailures``) to come back, until the queue's redrive policy moves
them to the dead-letter queue. A dev-stack convenience: a failed message becomes visible again after
``retry_delay`` seconds instead of the whole visibility timeout, so that retries show up quickly.

    python -m devstack.dispatcher (--queue-url URL | --queue-name NAME) (--function-url URL | --embedded CONFIG.json)
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
    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        function: Function,
        batch_size: int = 10,
        wait_seconds: int = 2,
        retry_delay: int = 2,
        log: Callable[..., None] | None = None,
    ):
        self.sqs = sqs
        self.queue_url = queue_url
        self.function = function
        self.batch_size = batch_size
        self.wait_seconds = wait_seconds
        self.retry_delay = retry_delay
        self.log = log or log_line
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
        self.queue_arn = attributes["QueueArn"]
        self.region = self.queue_arn.split(":")[3]
        self.stopping = threading.Event()

    def poll_once(self) -> int:
        """Receive one batch and dispatch it; return how many messages were received."""
        messages = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=self.wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return 0
        ids = [m["MessageId"] for m in messages]
        invocation = self.function.invoke(sqs_event(messages, self.queue_arn, self.region))
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
            messages=len(messages),
            succeeded=len(done),
            failed=len(failed),
            receive_counts=[int(m.get("Attributes", {}).get("ApproximateReceiveCount", 0)) for m in messages],
            duration_ms=invocation.duration_ms,
            error=None if invocation.ok else invocation.payload,
        )
        return len(messages)

    def run(self) -> None:
        self.log("dispatcher started", queue=self.queue_url)
        while not self.stopping.is_set():
            try:
                self.poll_once()
            except Exception as exc:
                self.log("poll failed; retrying", error=f"{type(exc).__name__}: {exc}")
                self.stopping.wait(1)
        self.log("dispatcher stopped")


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
    target.add_argument("--function-url", help="invoke URL of a running function (e.g. the Lambda container)")
    target.add_argument("--embedded", type=Path, help="JSON config: start RIE + awslambdaric on the host")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--retry-delay", type=int, default=2, help="seconds before a failed message is retried")
    args = parser.parse_args(argv)

    function: Function
    embedded: EmbeddedFunction | None = None
    if args.embedded:
        config = json.loads(args.embedded.read_text())
        embedded = EmbeddedFunction(
            rie_binary=Path(config["rie"]),
            port=config["port"],
            environment=config["environment"],
            log_file=Path(config["log_file"]),
            handler=config["handler"],
            timeout_s=int(config["environment"]["AWS_LAMBDA_FUNCTION_TIMEOUT"]),
            pid_file=Path(config["pid_file"]),
        )
        embedded.start()
        function = embedded
    else:
        function = RemoteFunction(args.function_url)

    sqs = boto3.session.Session().client("sqs", endpoint_url=args.endpoint_url)
    queue_url = args.queue_url or sqs.get_queue_url(QueueName=args.queue_name)["QueueUrl"]
    dispatcher = Dispatcher(sqs, queue_url, function, batch_size=args.batch_size, retry_delay=args.retry_delay)

    def stop(_signum: int, _frame: Any) -> None:
        dispatcher.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        dispatcher.run()
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
