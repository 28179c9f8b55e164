"""The function's runtime starts outside a file's time budget, as on AWS.

RIE starts the runtime (awslambdaric importing the handler) on the first invocation, and again on the one
after a timeout, and counts that against the invocation's timeout. Here the handler's module takes
INIT_SECONDS to import, and the function's timeout is TIMEOUT_SECONDS: the time a real event has left when
the handler starts must be (nearly) the whole timeout, never the timeout less the init.
"""

from __future__ import annotations

import json
import os
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devstack.dispatcher import RemoteFunction
from devstack.function import INVOKE_PATH, WARM_UP_EVENT, EmbeddedFunction, install_rie
from devstack.processes import listen_port
from tests.conftest import REPO

INIT_SECONDS = 2.5
TIMEOUT_SECONDS = 4
#: What the handler must have left at least: the timeout less half the init. Without the warm-up it has
#: the timeout less the whole init (or less), so the two outcomes are INIT_SECONDS / 2 apart at worst.
AT_LEAST_MS = int((TIMEOUT_SECONDS - INIT_SECONDS / 2) * 1000)

HANDLER = f"""
import os, time
time.sleep({INIT_SECONDS})  # a slow init: the imports of a real handler take ~1.5 s


def handler(event, context):
    left_ms = context.get_remaining_time_in_millis()
    if isinstance(event, dict) and event.get("sleep"):
        time.sleep(event["sleep"])  # outlives the timeout: RIE resets the runtime
    return {{"left_ms": left_ms, "event": event, "pid": os.getpid()}}
"""


@pytest.fixture
def function(tmp_path) -> Iterator[EmbeddedFunction]:
    (tmp_path / "slow_init.py").write_text(textwrap.dedent(HANDLER))
    rie = install_rie(Path(os.environ.get("INGEST_CACHE_DIR") or REPO / ".cache"))
    embedded = EmbeddedFunction(
        rie,
        listen_port(),
        {"AWS_LAMBDA_FUNCTION_TIMEOUT": str(TIMEOUT_SECONDS), "PYTHONPATH": str(tmp_path)},
        tmp_path / "function.log",
        handler="slow_init.handler",
        timeout_s=TIMEOUT_SECONDS,
        reload=False,
    )
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.mark.parametrize("through", ["embedded", "remote (compose's dispatcher)"])
def test_the_first_event_and_the_one_after_a_timeout_get_the_whole_timeout(function, through):
    invoke = function.invoke if through == "embedded" else RemoteFunction(function.url, timeout_s=30).invoke
    first = invoke({"n": 1})
    assert first.ok, first.payload
    assert first.payload["event"] == {"n": 1}
    assert first.payload["left_ms"] >= AT_LEAST_MS, f"the init was counted against the first event: {first.payload}"

    timed_out = invoke({"sleep": TIMEOUT_SECONDS + 1})
    assert not timed_out.ok and "timed out" in str(timed_out.payload), timed_out.payload

    after = invoke({"n": 2})  # RIE started the runtime again: warmed up again first
    assert after.ok, after.payload
    assert after.payload["pid"] != first.payload["pid"], "RIE did not start the runtime again after the timeout"
    assert after.payload["left_ms"] >= AT_LEAST_MS, f"the init was counted against the event after: {after.payload}"


#: What RIE answered a warm-up sent while it was still resetting a runtime that had timed out (seen in CI).
RESETTING = {"errorType": "Sandbox.Failure", "errorMessage": "RequestId: 19e1deb8 Error: ErrGateCanceled"}


def test_a_warm_up_refused_while_rie_resets_is_sent_again_before_the_event():
    # RIE refuses invocations for a moment after a timeout only on a busy machine; this endpoint refuses
    # the first two warm-ups as it did, so that the retry is exercised every time.
    received: list[object] = []

    class Resetting(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(event)
            answer = RESETTING if len(received) <= 2 else {"ok": True}
            body = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Resetting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        function = RemoteFunction(f"http://127.0.0.1:{server.server_port}{INVOKE_PATH}", timeout_s=10)
        invocation = function.invoke({"n": 1})
    finally:
        server.shutdown()
    assert invocation.ok and function.warm
    assert received == [WARM_UP_EVENT, WARM_UP_EVENT, WARM_UP_EVENT, {"n": 1}]
