"""The function as it runs in its container: the real Runtime Interface Emulator running awslambdaric.

The RIE binary ships inside the ``aws-sam-cli`` wheel; it is installed once into a cache folder with
``pip install --no-deps --target`` and checked against a pinned sha256. ``EmbeddedFunction`` starts it
bound to 127.0.0.1, invokes it one call at a time (RIE crashes on concurrent invokes), restarts it when
it dies, and restarts it when the function's code changes so that edits apply on the next invocation.

RIE starts the runtime (awslambdaric importing the handler: ~1.5 s) on the first invocation and counts it
against that invocation's timeout; after an invocation that timed out or crashed, it starts it again the same
way. AWS runs init outside the timeout. So before the first invocation, and after one that failed, both
ways of invoking the function here send S3's test event first (``WARM_UP_EVENT``, which the handler answers
without work): a file's time budget is the whole timeout, as on AWS.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .processes import HOST, listen_port, port_open, spawn, stop_pid, wait_until

SAM_CLI_VERSION = "1.170.0"
RIE_SHA256 = {
    "x86_64": "6b1e686e62ab2baf5759c412c4864276ef2a88b094fca53ec070637ccba9b9a5",
    "arm64": "ec2e5d09633d853834c008b1ef264bf834b258a94d551d2b2074966494b39a21",
}
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
#: What warms the runtime up: S3's test event, which the handler answers with nothing to ingest.
WARM_UP_EVENT = {"Event": "s3:TestEvent"}
#: How long RIE may refuse invocations while it resets a runtime that timed out (it takes a moment).
RESETTING_SECONDS = 10
REPO = Path(__file__).resolve().parents[2]
FUNCTION_SOURCES = (REPO / "lambda" / "ingest", REPO / "lambda" / "contracts")


def rie_arch() -> str:
    machine = platform.machine().lower()
    return "arm64" if machine in ("aarch64", "arm64") else "x86_64"


def install_rie(cache_dir: Path) -> Path:
    """The RIE binary from the pinned aws-sam-cli wheel, installed once and verified by sha256."""
    arch = rie_arch()
    target = cache_dir.resolve() / f"aws-sam-cli-{SAM_CLI_VERSION}"
    binary = target / "samcli" / "local" / "rapid" / f"aws-lambda-rie-{arch}"
    if not binary.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--no-deps",
                "--target",
                str(target),
                f"aws-sam-cli=={SAM_CLI_VERSION}",
            ],
            check=True,
        )
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    if digest != RIE_SHA256[arch]:
        raise RuntimeError(f"{binary} has sha256 {digest}, expected {RIE_SHA256[arch]} (aws-sam-cli {SAM_CLI_VERSION})")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def code_fingerprint(paths: tuple[Path, ...] = FUNCTION_SOURCES) -> tuple[tuple[str, int], ...]:
    """Names and modification times of the function's code and contracts."""
    entries = []
    for root in paths:
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".toml") and "__pycache__" not in path.parts:
                entries.append((str(path), path.stat().st_mtime_ns))
    return tuple(entries)


@dataclass
class Invocation:
    ok: bool  # the handler returned (as opposed to raising, timing out or crashing)
    payload: Any
    status: int
    duration_ms: int


class EmbeddedFunction:
    """RIE + awslambdaric as host processes, one invocation at a time."""

    def __init__(
        self,
        rie_binary: Path,
        port: int,
        environment: dict[str, str],
        log_file: Path,
        handler: str = "ingest.handler.lambda_handler",
        timeout_s: int = 120,
        reload: bool = True,
        pid_file: Path | None = None,
        runtime_api_port: int | None = None,
    ):
        self.rie_binary = rie_binary
        self.port = port
        self.runtime_api_port = runtime_api_port  # where RIE serves awslambdaric; None: a free port at each start
        self.environment = environment
        self.log_file = log_file
        self.handler = handler
        self.timeout_s = timeout_s
        self.reload = reload
        self.pid_file = pid_file
        self.process: subprocess.Popen[bytes] | None = None
        self._fingerprint: tuple[tuple[str, int], ...] = ()
        self._lock = threading.Lock()
        self.runtime = Runtime(self.url)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}{INVOKE_PATH}"

    def _sources(self) -> tuple[Path, ...]:
        """The function's code and contracts, and the contracts folder INGEST_CONTRACTS_DIR names, if any."""
        folder = self.environment.get("INGEST_CONTRACTS_DIR") or os.environ.get("INGEST_CONTRACTS_DIR")
        return FUNCTION_SOURCES + ((Path(folder),) if folder else ())

    def start(self) -> None:
        if port_open(self.port):
            raise RuntimeError(f"port {self.port} is taken: another function emulator is running there")
        self._fingerprint = code_fingerprint(self._sources()) if self.reload else ()
        argv = [
            str(self.rie_binary),
            "--runtime-interface-emulator-address",
            f"{HOST}:{self.port}",
            "--runtime-api-address",
            f"{HOST}:{self.runtime_api_port or listen_port()}",
            sys.executable,
            "-m",
            "awslambdaric",
            self.handler,
        ]
        env = {**os.environ, **self.environment}
        self.runtime.cooled()
        self.process = spawn("function", argv, self.log_file, env=env, cwd=REPO / "lambda")
        wait_until(lambda: port_open(self.port), 15, "the Runtime Interface Emulator", self.process, self.log_file)
        if self.pid_file:
            self.pid_file.write_text(str(self.process.pid))

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process.pid, timeout=5)
            self.process.wait(timeout=5)
            self.process = None

    def restart(self, why: str) -> None:
        _log(f"restarting the function: {why}")
        self.stop()
        self.start()

    def invoke(self, event: Any) -> Invocation:
        with self._lock:  # RIE serves one invocation at a time; a second concurrent one crashes it
            if self.process is None or self.process.poll() is not None:
                self.restart("it was not running")
            elif self.reload and code_fingerprint(self._sources()) != self._fingerprint:
                self.restart("its code changed")
            return self.runtime.invoke(event, self.timeout_s + 10)


class Runtime:
    """The function's runtime behind an invoke URL, as both ways of invoking it here see it: ``warm`` once
    it was started and its handler imported. Until then (at first, after ``cooled()``, after an invocation
    that failed) ``invoke`` sends WARM_UP_EVENT before the event, so that the runtime's init is not counted
    against the event's timeout.

    Right after an invocation that timed out, RIE is still resetting its runtime for a moment and refuses
    invocations (``Sandbox.Failure``); the warm-up is repeated until RIE takes it (for up to
    RESETTING_SECONDS), so that neither the init nor the refusal falls on the event. A warm-up that fails
    otherwise is no reason not to try the event: its own invocation then reports the problem."""

    def __init__(self, url: str):
        self.url = url
        self.warm = False

    def cooled(self) -> None:
        """The runtime may have started again (its process was restarted, or it did not answer)."""
        self.warm = False

    def invoke(self, event: Any, timeout: float) -> Invocation:
        if not self.warm:
            until = time.monotonic() + RESETTING_SECONDS
            while not (warm_up := invoke_url(self.url, WARM_UP_EVENT, timeout)).ok:
                if not _resetting(warm_up) or time.monotonic() >= until:
                    _log(f"the warm-up invocation failed: {warm_up.payload}")
                    break
                time.sleep(0.1)
        invocation = invoke_url(self.url, event, timeout)
        self.warm = invocation.ok
        return invocation


def _resetting(invocation: Invocation) -> bool:
    """Whether RIE refused the invocation because it is resetting its runtime."""
    payload = invocation.payload
    return isinstance(payload, dict) and payload.get("errorType") == "Sandbox.Failure"


def invoke_url(url: str, event: Any, timeout: float) -> Invocation:
    """POST one event to a Lambda invoke endpoint (RIE in a container or on the host)."""
    body = json.dumps(event).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        return Invocation(False, {"errorType": type(exc).__name__, "errorMessage": str(exc)}, 0, _ms(started))
    try:
        payload = json.loads(raw) if raw else None
    except ValueError:
        payload = {"errorType": "InvalidResponse", "errorMessage": raw[:500].decode(errors="replace")}
    # RIE answers 200 with {"errorType", "errorMessage"} when the handler raised or timed out.
    failed = status != 200 or (isinstance(payload, dict) and "errorType" in payload and "errorMessage" in payload)
    return Invocation(not failed, payload, status, _ms(started))


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _log(message: str) -> None:
    print(json.dumps({"component": "function", "message": message}), flush=True)
