"""One embedded stack for the end-to-end suite, started and stopped through its CLI as a user would.

It gets its own state folder and free ports (so a developer's running stack is left alone) and the
test session's own database. Tests share it, so each one uploads content and keys of its own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from psycopg.rows import dict_row

from devstack.processes import listen_port
from tests.conftest import REPO, lock_waiters


def run_cli(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=check,
        timeout=180,
    )


@dataclass
class Stack:
    env: dict[str, str]
    state_dir: Path | None
    kind: str
    cli_env: dict[str, str] | None = None  # the environment `python -m devstack` runs this stack with

    def __post_init__(self) -> None:
        session = boto3.session.Session(
            aws_access_key_id="test", aws_secret_access_key="test", region_name=self.env["AWS_DEFAULT_REGION"]
        )
        self.s3 = session.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"])
        self.sqs = session.client("sqs", endpoint_url=self.env["AWS_ENDPOINT_URL"])
        self.bucket = self.env["INGEST_BUCKET"]
        self.tap = self.sqs.get_queue_url(QueueName="ingest-receipts-tap")["QueueUrl"]
        self._seen: list[dict[str, Any]] = []

    @property
    def database_url(self) -> str:
        return self.env["DATABASE_URL"]

    def upload(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def receipts_for(self, key: str, count: int = 1, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until ``count`` receipts for ``key`` have arrived; return them in arrival order."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mine = [r for r in self._seen if r["key"] == key]
            if len(mine) >= count:
                return mine
            for message in self.sqs.receive_message(QueueUrl=self.tap, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            ):
                envelope = json.loads(message["Body"])
                receipt = json.loads(envelope["Message"])
                receipt["_subject"] = envelope.get("Subject")
                self._seen.append(receipt)
                self.sqs.delete_message(QueueUrl=self.tap, ReceiptHandle=message["ReceiptHandle"])
        got = [(r["status"], r.get("reason")) for r in self._seen if r["key"] == key]
        raise AssertionError(f"waited {timeout}s for {count} receipt(s) for {key!r}, got {got}{self.dispatcher_tail()}")

    def dispatcher_tail(self, lines: int = 12) -> str:
        """The last lines of the dispatcher's log (embedded stack), for a failure's message."""
        if self.state_dir is None:
            return ""
        log = self.state_dir / "logs" / "dispatcher.log"
        tail = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
        return "\n--- dispatcher.log ---\n" + "\n".join(line[:300] for line in tail)

    def query(self, statement: str, *params: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]

    @contextmanager
    def table_locked(self, table: str, mode: str = "SHARE") -> Iterator[psycopg.Connection]:
        """Hold a lock on ``table`` until the block ends: a load that needs it waits, however fast the
        machine is (SHARE keeps every writer out and lets readers in). Yields the holding connection.
        The table is created first, by a load through the function (which then owns it), if none did yet."""
        exists = self.query("SELECT to_regclass(%s) IS NOT NULL AS e", table)[0]["e"]
        if not exists:
            assert table == "users", "only the users table is created here"
            data, _ids = unique_users(rows=1)
            key = f"incoming/users/create_{uuid.uuid4().hex[:8]}.csv"
            self.upload(key, data)
            assert self.receipts_for(key)[0]["status"] == "loaded"
        conn = psycopg.connect(self.database_url, autocommit=False)
        try:
            conn.execute(f'LOCK TABLE "{table}" IN {mode} MODE')
            yield conn
        finally:
            conn.rollback()
            conn.close()

    def wait_for_lock_wait(self, table: str, count: int = 1, timeout: float = 60) -> None:
        """Wait until ``count`` function sessions are blocked waiting for a lock on ``table``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if lock_waiters(self.query, table) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"fewer than {count} loads waited for the lock on {table} within {timeout}s")

    def wait_for_attempt(self, key: str, delivery: int, timeout: float = 120) -> None:
        """Until the ``delivery``-th delivery of the message announcing ``key`` has begun (its attempt row)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.query(
                "SELECT 1 FROM ingest_ledger.ingest_attempts WHERE object_key = %s AND receive_count >= %s",
                key,
                delivery,
            ):
                return
            time.sleep(0.02)
        raise AssertionError(f"delivery {delivery} of {key} did not begin within {timeout}s")

    def function_log_lines(self) -> list[str]:
        """Every line the function instances have logged so far (their log files, or their containers' logs)."""
        if self.kind == "compose":  # compose writes an erase-line escape before each line, colours off or not
            logs = self._compose("logs", "--no-color", "--no-log-prefix", "lambda")
            return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", logs).splitlines()
        from devstack.stack import Settings, function_instances, read_state

        assert self.cli_env is not None
        state = read_state(Settings.from_env(self.cli_env))
        assert state is not None
        lines: list[str] = []
        for instance in function_instances(state):
            path = Path(instance["log_file"])
            if path.exists():
                lines += path.read_text(errors="replace").splitlines()
        return lines

    def end_deliveries(self, key: str, deliveries: int, end: Callable[[], object]) -> None:
        """Let each of the first ``deliveries`` deliveries of ``key`` begin, and put the death of the one before
        on record, then ``end()`` it (a crash, a freeze): none of them answers. (A delivery ended before it
        recorded the death leaves it to the next: tests/integration/test_reliability.py.)"""
        for delivery in range(1, deliveries + 1):
            self.wait_for_attempt(key, delivery)
            deadline = time.monotonic() + 60
            while (
                time.monotonic() < deadline
                and self.query(
                    "SELECT count(*) AS n FROM ingest_ledger.ingest_files"
                    " WHERE object_key = %s AND reason = 'function_died'",
                    key,
                )[0]["n"]
                < delivery - 1
            ):
                time.sleep(0.02)
            end()

    def freeze_until_the_timeout(self) -> None:
        """Freeze every runtime (SIGSTOP: its own deadline cannot act) until the RIE kills the one that holds an
        invocation, at the function's timeout; then let the idle ones go on."""
        from devstack.processes import alive

        frozen = self.runtime_pids()
        for pid in frozen:  # the idle instances too: which one holds the file is not known here
            os.kill(pid, signal.SIGSTOP)
        while all(alive(pid) for pid in frozen):
            time.sleep(0.05)
        for pid in frozen:
            if alive(pid):
                os.kill(pid, signal.SIGCONT)

    def runtime_pids(self) -> list[int]:
        """The runtime (awslambdaric) process of each function instance that has one: the RIE's children."""
        rie = set(self.function_pids())
        return [pid for pid, parent in _processes() if parent in rie]

    @property
    def instances(self) -> int:
        """How many function instances the stack runs (both stacks: INGEST_CONCURRENCY, else resources.json's)."""
        from devstack.stack import Settings

        configured = Settings.from_env(self.cli_env or dict(os.environ)).concurrency
        return configured or int(
            json.loads((REPO / "localstack" / "resources.json").read_text())["event_source"]["maximum_concurrency"]
        )

    # -- faults, the same verbs on both stacks ---------------------------------------------------------

    def crash_function(self) -> str:
        """SIGKILL every function instance as a crash (or the OOM killer) would, whichever of them holds the
        file; return what identified them."""
        before = self.function_identity()
        if self.kind == "compose":
            for container in self._containers("lambda"):
                pid = int(self._docker("inspect", "--format", "{{.State.Pid}}", container))
                os.kill(pid, signal.SIGKILL)  # the container's init, from the host: a crash, not a `docker stop`
            return before
        for pid in self.function_pids():
            self.kill_function(pid)
        return before

    def function_identity(self) -> str:
        """Changes whenever a function instance is started again (its pid, or its container's start time)."""
        if self.kind == "compose":
            return " ".join(
                self._docker("inspect", "--format", "{{.State.StartedAt}}", c) for c in self._containers("lambda")
            )
        return " ".join(map(str, self.function_pids()))

    def stop_postgres(self) -> None:
        if self.kind == "compose":
            self._compose("stop", "postgres")
            return
        server = self._postgres()
        from devstack.postgres import _run

        _run([str(server.bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-m", "fast", "-w", "stop"], server.run_as)

    def start_postgres(self) -> None:
        if self.kind == "compose":
            self._compose("up", "--detach", "--wait", "postgres")
            return
        server = self._postgres()
        from devstack.postgres import _run

        options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.data_dir}"
        log = str(server.data_dir / "server.log")
        pg_ctl = str(server.bin_dir / "pg_ctl")
        _run([pg_ctl, "-D", str(server.data_dir), "-o", options, "-l", log, "-w", "start"], server.run_as)

    @contextmanager
    def dispatcher_paused(self) -> Iterator[None]:
        """Freeze the dispatcher (SIGSTOP, or `docker compose pause`) for the block: whatever it was doing
        resumes afterwards, so no message is lost, and no invocation starts meanwhile."""
        if self.kind == "compose":
            self._compose("pause", "dispatcher")
            try:
                yield
            finally:
                self._compose("unpause", "dispatcher")
            return
        from devstack.stack import Settings, read_state

        assert self.cli_env is not None
        pid = read_state(Settings.from_env(self.cli_env))["dispatcher"]["pid"]  # type: ignore[index]
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def _postgres(self):  # the embedded stack's own cluster (not the session's database)
        from devstack.postgres import PostgresServer
        from devstack.stack import Settings, read_state

        assert self.cli_env is not None and "DATABASE_URL" not in self.cli_env, "not a stack with its own cluster"
        p = read_state(Settings.from_env(self.cli_env))["postgres"]  # type: ignore[index]
        return PostgresServer(
            url=p["url"],
            kind=p["kind"],
            data_dir=Path(p["data_dir"]),
            bin_dir=Path(p["bin_dir"]),
            run_as=p["run_as"],
            port=p["port"],
        )

    def _compose(self, *args: str) -> str:
        from devstack import compose

        done = subprocess.run(
            [*compose.compose_command(), *args],
            cwd=REPO,
            env=compose.compose_environment(),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, f"docker compose {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout.strip()

    def _containers(self, service: str) -> list[str]:
        return self._compose("ps", "--all", "--quiet", service).split()

    def _docker(self, *args: str) -> str:
        done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"docker {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout.strip()

    def kill_function(self, pid: int) -> None:
        """SIGKILL the function as a crash would: the RIE and the runtime it started (in a session of its
        own, so killing the RIE's process group alone leaves the runtime running)."""
        children = [child for child, parent in _processes() if parent == pid]
        for victim in [pid, *children]:
            try:
                os.killpg(victim, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def function_pids(self) -> list[int]:
        """The pid of each function instance's RIE, in instance order."""
        if self.state_dir is None:
            pytest.skip("the function's processes are inside containers")
        from devstack.stack import Settings, function_instances, read_state

        assert self.cli_env is not None
        state = read_state(Settings.from_env(self.cli_env))
        assert state is not None
        return [int(Path(f["pid_file"]).read_text()) for f in function_instances(state)]

    # -- an instance of the function of its own, its environment changed (a service out of reach) -----------

    @contextmanager
    def function_with(self, **environment: str) -> Iterator[ExtraFunction]:
        """One more instance of the function, beside the stack's, with ``environment`` over the stack's own
        function environment; invoked directly (the dispatcher never feeds it). Stopped after the block."""
        from devstack.function import EmbeddedFunction, Runtime

        port = listen_port()
        if self.kind == "compose":
            name = f"ingest-extra-{uuid.uuid4().hex[:8]}"
            pairs = [arg for key, value in environment.items() for arg in ("-e", f"{key}={value}")]
            published = f"127.0.0.1:{port}:8080"
            self._compose("run", "--detach", "--no-deps", "--name", name, "--publish", published, *pairs, "lambda")
            try:
                deadline = time.monotonic() + 60  # until its healthcheck sees the RIE listen (as compose's --wait)
                while (health := self._docker("inspect", "--format", "{{.State.Health.Status}}", name)) != "healthy":
                    assert time.monotonic() < deadline, f"the extra function is {health}: {self._docker('logs', name)}"
                    time.sleep(0.2)
                url = f"http://127.0.0.1:{port}/2015-03-31/functions/function/invocations"
                runtime = Runtime(url)
                yield ExtraFunction(lambda event: runtime.invoke(event, 180), lambda: self._docker("logs", name))
            finally:
                self._docker("rm", "--force", name)
            return
        from devstack.stack import Settings

        assert self.cli_env is not None and self.state_dir is not None
        config = json.loads((Settings.from_env(self.cli_env).stack_dir / "function.json").read_text())
        log_file = self.state_dir / "logs" / f"function-extra-{port}.log"
        function = EmbeddedFunction(
            Path(config["rie"]),
            port,
            {**config["environment"], **environment},
            log_file,
            handler=config["handler"],
            reload=False,
            runtime_api_port=listen_port(),
        )
        function.start()
        try:
            yield ExtraFunction(function.invoke, lambda: log_file.read_text(errors="replace"))
        finally:
            function.stop()

    @contextmanager
    def black_hole(self) -> Iterator[str]:
        """``host:port``, as the function reaches it, where connections are never answered (devstack.blackhole)."""
        from devstack.blackhole import BlackHole

        if self.kind != "compose":
            with BlackHole() as hole:
                yield hole.address
            return
        name = f"ingest-blackhole-{uuid.uuid4().hex[:8]}"
        command = ["-m", "devstack.blackhole", "--host", "0.0.0.0", "--port", "4566"]
        self._compose("run", "--detach", "--no-deps", "--name", name, "--entrypoint", "python3", "dispatcher", *command)
        try:
            deadline = time.monotonic() + 60
            while "black hole on" not in self._docker("logs", name):
                assert time.monotonic() < deadline, f"the black hole did not start: {self._docker('logs', name)}"
                time.sleep(0.1)
            yield f"{name}:4566"
        finally:
            self._docker("rm", "--force", name)

    def closed_port(self) -> str:
        """``host:port``, as the function reaches it, where nothing listens (a connection is refused)."""
        return "postgres:1" if self.kind == "compose" else f"127.0.0.1:{listen_port()}"


@dataclass
class ExtraFunction:
    invoke: Callable[[Any], Any]  # event -> devstack.function.Invocation
    log: Callable[[], str]


@pytest.fixture(scope="session", params=["embedded", "compose"])
def stack(request) -> Stack:
    """The same tests run against both stacks; the compose one where a Docker engine answers."""
    return request.getfixturevalue("compose_stack" if request.param == "compose" else "embedded_session_stack")


@pytest.fixture(scope="session")
def embedded_session_stack(session_database_url, tmp_path_factory) -> Iterator[Stack]:
    yield from embedded_stack(tmp_path_factory.mktemp("stack"), {"DATABASE_URL": session_database_url})


@pytest.fixture(scope="session")
def compose_stack() -> Iterator[Stack]:
    """The compose stack (compose.yaml), brought up by testcontainers; shared by every compose test."""
    yield from _compose_stack()


def embedded_stack(state_dir: Path, settings: dict[str, str]) -> Iterator[Stack]:
    """An embedded stack of its own (free ports, its own state folder), started and stopped by the CLI.
    ``settings`` adds to or overrides its environment; DATABASE_URL absent means its own cluster."""
    env = {
        **os.environ,
        "INGEST_STACK_DIR": str(state_dir),
        "INGEST_EMULATOR_PORT": str(listen_port()),
        "INGEST_FUNCTION_PORT": str(listen_port()),
        "INGEST_RETRY_DELAY": "1",
    }
    env.pop("AWS_ENDPOINT_URL", None)
    env.pop("DATABASE_URL", None)
    env.update(settings)
    started = run_cli("up", env=env, check=False)
    if started.returncode != 0:
        run_cli("down", env=env, check=False)
        raise RuntimeError(f"make up failed:\n{started.stdout}\n{started.stderr}")
    exports = run_cli("env", env=env).stdout
    stack_env = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines())
    try:
        yield Stack(
            env={k: v.strip("'") for k, v in stack_env.items()}, state_dir=state_dir, kind="embedded", cli_env=env
        )
    finally:
        run_cli("down", env=env, check=False)


def _compose_stack() -> Iterator[Stack]:
    from devstack import compose
    from devstack.engine import docker_engine

    problem = docker_engine()
    if problem:
        pytest.skip(f"compose stack (testcontainers) not run: {problem}")
    # testcontainers runs `docker compose` with this process's environment: the image variables of
    # OFFLINE=1, and no Ryuk reaper (its image cannot be pulled without a registry; stop() cleans up).
    settings = {
        **compose.compose_environment(),
        "TESTCONTAINERS_RYUK_DISABLED": "true",
        "TESTCONTAINERS_CONNECTION_MODE": "docker_host",
    }
    missing = compose.missing_images(settings)
    if missing:
        pytest.fail(f"OFFLINE=1 but the engine lacks {', '.join(missing)}: run make offline-images")
    from testcontainers.compose import DockerCompose

    saved = dict(os.environ)
    os.environ.update(settings)
    files = [str(p.relative_to(REPO)) for p in compose.compose_files()]
    containers = DockerCompose(REPO, compose_file_name=files, build=True, wait=True)
    try:
        containers.start()
        yield Stack(env=compose.environment(), state_dir=None, kind="compose")
    finally:
        containers.stop()
        os.environ.clear()
        os.environ.update(saved)


def _processes() -> list[tuple[int, int]]:
    """(pid, parent pid) of every process."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found.append((int(stat.parent.name), int(fields[1])))
    return found


def unique_users(rows: int = 3, bad: int = 0) -> tuple[bytes, list[int]]:
    """A users file whose ids and content no other test uses."""
    base = uuid.uuid4().int % 1_000_000_000 + 1_000_000  # below the multipart test range
    ids = [base + i for i in range(rows)]
    lines = ["id,email,full_name,country"]
    lines += [f"{i},user{i}@example.com,User {i},DE" for i in ids]
    lines += [f"{base + rows + j},not-an-email,Bad {j},DE" for j in range(bad)]
    return ("\n".join(lines) + "\n").encode(), ids
