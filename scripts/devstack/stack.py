"""The embedded stack: emulator, PostgreSQL, bootstrap, dispatcher and function, as host processes.

State (ports, PIDs, URLs) lives in ``.stack/state.json`` (or ``$INGEST_STACK_DIR``) so that ``down``,
``status``, ``env`` and ``logs`` find what ``up`` started. Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from . import emulator
from .function import INVOKE_PATH, REPO, install_rie
from .postgres import PostgresServer, create_function_role, start_postgres
from .processes import HOST, alive, ephemeral, listen_port, port_open, spawn, stop_pid, wait_until

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}


@dataclass(frozen=True)
class Settings:
    stack_dir: Path
    cache_dir: Path
    emulator_port: int
    function_port: int
    database_url: str | None
    retry_delay: int
    function_timeout: int | None = None  # overrides resources.json (tests of timeouts)
    concurrency: int | None = None  # function instances; None: resources.json's event_source.maximum_concurrency

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        return cls(
            stack_dir=Path(env.get("INGEST_STACK_DIR") or REPO / ".stack"),
            cache_dir=Path(env.get("INGEST_CACHE_DIR") or REPO / ".cache"),
            emulator_port=int(env.get("INGEST_EMULATOR_PORT") or emulator.DEFAULT_PORT),
            function_port=int(env.get("INGEST_FUNCTION_PORT") or 9000),
            database_url=env.get("DATABASE_URL") or None,
            retry_delay=int(env.get("INGEST_RETRY_DELAY") or 2),
            function_timeout=int(env["INGEST_FUNCTION_TIMEOUT"]) if env.get("INGEST_FUNCTION_TIMEOUT") else None,
            concurrency=concurrency(env),
        )

    @property
    def state_file(self) -> Path:
        return self.stack_dir / "state.json"

    @property
    def logs(self) -> Path:
        return self.stack_dir / "logs"


def concurrency(env: dict[str, str]) -> int | None:
    """INGEST_CONCURRENCY: how many function instances run at once (at least 1), if set."""
    value = env.get("INGEST_CONCURRENCY")
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise RuntimeError(f"INGEST_CONCURRENCY must be a whole number of function instances, 1 or more: {value!r}")
    return int(value)


def load_bootstrap() -> ModuleType:
    """localstack/bootstrap.py: the one definition of the AWS resources, shared with compose."""
    path = REPO / "localstack" / "bootstrap.py"
    spec = importlib.util.spec_from_file_location("ingest_localstack_bootstrap", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_state(settings: Settings) -> dict[str, Any] | None:
    try:
        return dict(json.loads(settings.state_file.read_text()))
    except FileNotFoundError:
        return None


def _write_state(settings: Settings, state: dict[str, Any]) -> None:
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    tmp = settings.state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(settings.state_file)


def process_table(state: dict[str, Any]) -> list[tuple[str, int | None, str, bool]]:
    """(component, pid, where, running) for every part of a started stack."""
    rows: list[tuple[str, int | None, str, bool]] = []
    if "emulator" in state:
        e = state["emulator"]
        rows.append(("emulator (moto)", e["pid"], e["endpoint"], alive(e["pid"])))
    if "postgres" in state:
        p = state["postgres"]
        pid = _postgres_pid(p)
        running = alive(pid) if pid else p["kind"] == "external"
        rows.append((f"postgres ({p['kind']})", pid, _redact(p["url"]), running))
    if "dispatcher" in state:
        d = state["dispatcher"]
        rows.append(("dispatcher", d["pid"], d["queue_url"], alive(d["pid"])))
    for f in function_instances(state):
        pid = _read_pid(Path(f["pid_file"]))
        name = f"function {f['instance']} (RIE + awslambdaric)"
        rows.append((name, pid, f["invoke_url"], bool(pid and alive(pid))))
    return rows


def function_instances(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The function instances of a started stack: instance (1..N), port, invoke_url, pid_file, log_file."""
    if "function" in state:  # a stack started before there were several
        return [{"instance": 1, "log_file": None, **state["function"]}]
    return list(state.get("functions", []))


def instance_ports(first: int, count: int) -> list[tuple[int, int]]:
    """(invoke port, runtime API port) for ``count`` function instances, all distinct and chosen at once (a
    port picked later could be one another instance is about to bind), none in the kernel's ephemeral range
    (see processes.listen_port): the invoke ports are ``first`` and the ones after it, or another free port
    where one of those is taken (a second stack, a test's) or ephemeral."""
    chosen: set[int] = set(range(first, first + count))  # kept from listen_port()'s picks below

    def pick(port: int | None = None) -> int:
        while port is None or port_open(port) or ephemeral(port):  # see processes.listen_port
            port = listen_port()
            if port in chosen:
                port = None
        chosen.add(port)
        return port

    invoke = [pick(port) for port in range(first, first + count)]
    return [(port, pick()) for port in invoke]


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (FileNotFoundError, ValueError):
        return None


def _postgres_pid(p: dict[str, Any]) -> int | None:
    if not p.get("data_dir"):
        return None
    try:
        return int((Path(p["data_dir"]) / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, ValueError, IndexError, PermissionError):
        return None


def _redact(url: str) -> str:
    """Never print a password: postgresql://user:secret@host → postgresql://user:***@host."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        if ":" in credentials:
            credentials = credentials.split(":", 1)[0] + ":***"
        return f"{scheme}://{credentials}@{host}"
    return url


def aws_environment(region: str, endpoint: str) -> dict[str, str]:
    return {**CREDENTIALS, "AWS_DEFAULT_REGION": region, "AWS_REGION": region, "AWS_ENDPOINT_URL": endpoint}


def function_environment(
    definition: dict[str, Any], endpoint: str, database_url: str, topic_arn: str
) -> dict[str, str]:
    """The function's environment, as its container gets it in compose.yaml (a test keeps the two alike)."""
    fn = definition["function"]
    return {
        **aws_environment(definition["region"], endpoint),
        "AWS_LAMBDA_FUNCTION_NAME": fn["name"],
        "AWS_LAMBDA_FUNCTION_TIMEOUT": str(fn["timeout_seconds"]),
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn["memory_mb"]),
        "DATABASE_URL": database_url,
        "INGEST_BUCKET": definition["bucket"],
        "INGEST_TOPIC_ARN": topic_arn,
        "INGEST_MAX_RECEIVE_COUNT": str(definition["dead_letter_queue"]["max_receive_count"]),
        "POWERTOOLS_SERVICE_NAME": "ingest",
    }


def is_running(settings: Settings) -> bool:
    state = read_state(settings)
    return bool(state and state.get("ready") and all(row[3] for row in process_table(state)))


def up(settings: Settings, out: Any = sys.stdout) -> dict[str, Any]:
    """Start every part (or reuse a running stack) and return once each one answers."""
    state = read_state(settings)
    if state and is_running(settings):
        print(f"the embedded stack is already running ({settings.stack_dir})", file=out)
        return state
    if state and state.get("ready") and _only_dispatcher_down(state):
        # The emulator and the database (and so every queued message) are intact: restart the dispatcher and
        # the function only. Messages it had taken come back when their visibility timeout ends.
        print("the dispatcher had stopped; starting it (and the function instances) again", file=out)
        for instance in function_instances(state):
            pid = _read_pid(Path(instance["pid_file"]))
            if pid:
                stop_pid(pid, timeout=5)
        _start_dispatcher(settings, state)
        return state
    if state:
        print("a previous stack is partly running; stopping what is left of it first", file=out)
        down(settings, out)
    if port_open(settings.emulator_port):
        raise RuntimeError(
            f"port {settings.emulator_port} is already in use (LocalStack, or a stack from another folder?); "
            "stop it or choose another port with INGEST_EMULATOR_PORT"
        )
    started = time.monotonic()
    settings.logs.mkdir(parents=True, exist_ok=True)
    state = {"stack_dir": str(settings.stack_dir), "ready": False}
    _write_state(settings, state)
    try:
        rie = install_rie(settings.cache_dir)

        endpoint = f"http://{HOST}:{settings.emulator_port}"
        moto = emulator.start_moto(settings.emulator_port, settings.logs / "emulator.log")
        state["emulator"] = {"pid": moto.pid, "port": settings.emulator_port, "endpoint": endpoint}
        _write_state(settings, state)

        if settings.database_url:
            pg = PostgresServer(url=settings.database_url, kind="external")
            function_url = pg.url  # the user's URL is what the function uses
        else:
            pg = start_postgres(settings.stack_dir / "postgres")
            function_url = create_function_role(pg.url)
        state["postgres"] = {
            "kind": pg.kind,
            "url": pg.url,
            "data_dir": str(pg.data_dir) if pg.data_dir else None,
            "bin_dir": str(pg.bin_dir) if pg.bin_dir else None,
            "run_as": pg.run_as,
            "port": pg.port,
        }
        _write_state(settings, state)

        bootstrap = load_bootstrap()
        definition = bootstrap.load_definition()
        region = definition["region"]
        os.environ.update(CREDENTIALS)
        os.environ.setdefault("AWS_DEFAULT_REGION", region)
        resources = bootstrap.apply(endpoint, definition)
        state["resources"] = resources
        state["region"] = region

        if settings.function_timeout:
            definition["function"]["timeout_seconds"] = settings.function_timeout
        fn = definition["function"]
        event_source = definition["event_source"]
        ports = instance_ports(settings.function_port, settings.concurrency or event_source["maximum_concurrency"])
        function_env = {
            **function_environment(definition, endpoint, function_url, resources["topic_arn"]),
            # host-process specifics: import the package from the source tree, log unbuffered
            "PYTHONPATH": str(REPO / "lambda"),
            "PYTHONUNBUFFERED": "1",
        }
        state["functions"] = [
            {
                "instance": i,
                "port": port,
                "runtime_api_port": runtime_api_port,
                "invoke_url": f"http://{HOST}:{port}{INVOKE_PATH}",
                "pid_file": str(settings.stack_dir / f"function-{i}.pid"),
                "log_file": str(settings.logs / f"function-{i}.log"),
            }
            for i, (port, runtime_api_port) in enumerate(ports, start=1)
        ]
        state["event_source"] = {k: v for k, v in event_source.items() if not k.startswith("_")}
        function_config = {
            "rie": str(rie),
            "handler": fn["handler"],
            "environment": function_env,
            "instances": [
                {k: f[k] for k in ("port", "runtime_api_port", "log_file", "pid_file")} for f in state["functions"]
            ],
        }
        config_file = settings.stack_dir / "function.json"
        config_file.write_text(json.dumps(function_config, indent=2))
        _start_dispatcher(settings, state)
        state["ready"] = True
        state["started_in_ms"] = int((time.monotonic() - started) * 1000)
        _write_state(settings, state)
    except BaseException:
        print("the stack did not start; stopping what did", file=out)
        down(settings, out, quiet=True)
        raise
    return state


def _only_dispatcher_down(state: dict[str, Any]) -> bool:
    running = {name.split(" ")[0]: ok for name, _pid, _where, ok in process_table(state)}
    return running.get("emulator", False) and running.get("postgres", False) and not running.get("dispatcher", True)


def _start_dispatcher(settings: Settings, state: dict[str, Any]) -> None:
    """The dispatcher, which starts the function instances (RIE + awslambdaric each) as its children."""
    endpoint = state["emulator"]["endpoint"]
    queue_url = state["resources"]["queue_url"]
    event_source = state.get("event_source") or load_bootstrap().load_definition()["event_source"]
    argv = [
        sys.executable,
        "-m",
        "devstack.dispatcher",
        "--queue-url",
        queue_url,
        "--endpoint-url",
        endpoint,
        "--embedded",
        str(settings.stack_dir / "function.json"),
        "--retry-delay",
        str(settings.retry_delay),
        "--batch-size",
        str(event_source["batch_size"]),
        "--batching-window",
        str(event_source["maximum_batching_window_seconds"]),
    ]
    env = {**os.environ, **aws_environment(state["region"], endpoint), "PYTHONUNBUFFERED": "1"}
    log = settings.logs / "dispatcher.log"
    seen = log.read_text().count("dispatcher started") if log.exists() else 0
    dispatcher = spawn("dispatcher", argv, log, env=env, cwd=REPO)
    state["dispatcher"] = {"pid": dispatcher.pid, "queue_url": queue_url}
    _write_state(settings, state)
    wait_until(lambda: log.read_text().count("dispatcher started") > seen, 30, "the dispatcher", dispatcher, log)


def down(settings: Settings, out: Any = sys.stdout, quiet: bool = False) -> None:
    """Stop every process the stack started (by PID) and remove its state and data."""
    state = read_state(settings)
    if state is None:
        if not quiet:
            print("the embedded stack is not running", file=out)
        shutil.rmtree(settings.stack_dir, ignore_errors=True)
        return
    if "dispatcher" in state and stop_pid(state["dispatcher"]["pid"], timeout=15) and not quiet:
        print(f"stopped the dispatcher (pid {state['dispatcher']['pid']})", file=out)
    for instance in function_instances(state):
        pid = _read_pid(Path(instance["pid_file"]))
        if pid and stop_pid(pid, timeout=5) and not quiet:
            print(f"stopped function instance {instance['instance']} (pid {pid})", file=out)
    if "emulator" in state and stop_pid(state["emulator"]["pid"]) and not quiet:
        print(f"stopped the emulator (pid {state['emulator']['pid']})", file=out)
    if "postgres" in state:
        p = state["postgres"]
        if p["kind"] != "external":
            pid = _postgres_pid(p)
            data_dir = Path(p["data_dir"]) if p.get("data_dir") else None
            PostgresServer(
                url=p["url"],
                kind=p["kind"],
                data_dir=data_dir,
                bin_dir=Path(p["bin_dir"]) if p.get("bin_dir") else None,
                run_as=p.get("run_as"),
            ).stop(remove=True)
            if pid and alive(pid):
                stop_pid(pid, group=False)
            if not quiet:
                print(f"stopped PostgreSQL (pid {pid}) and removed its data", file=out)
    link = settings.stack_dir / "postgres"
    if link.is_symlink():
        shutil.rmtree(link.resolve().parent, ignore_errors=True)
    shutil.rmtree(settings.stack_dir, ignore_errors=True)


def environment(state: dict[str, Any]) -> dict[str, str]:
    """What a shell needs to talk to the running stack (awslocal, aws, psql, boto3)."""
    endpoint = state["emulator"]["endpoint"]
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "LOCALSTACK_HOST": endpoint.removeprefix("http://"),
        "AWS_DEFAULT_REGION": state["region"],
        **CREDENTIALS,
        "INGEST_BUCKET": state["resources"]["bucket"],
        "INGEST_TOPIC_ARN": state["resources"]["topic_arn"],
        "INGEST_QUEUE_URL": state["resources"]["queue_url"],
        "INGEST_DLQ_URL": state["resources"]["dlq_url"],
        "DATABASE_URL": state["postgres"]["url"],
    }
