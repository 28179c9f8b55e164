"""`make up` / `status` / `env` / `down` as a user runs them, with the stack's own PostgreSQL cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import psycopg
import pytest

from devstack.processes import alive, listen_port
from devstack.stack import Settings, process_table, read_state
from tests.e2e.conftest import REPO, run_cli

pytestmark = pytest.mark.stack


def test_up_status_env_down_leave_nothing_behind(tmp_path):
    env = {
        **os.environ,
        "INGEST_STACK_DIR": str(tmp_path / "stack"),
        "INGEST_EMULATOR_PORT": str(listen_port()),
        "INGEST_FUNCTION_PORT": str(listen_port()),
    }
    env.pop("DATABASE_URL", None)
    env.pop("AWS_ENDPOINT_URL", None)
    try:
        up = run_cli("up", env=env)
        assert "embedded stack ready" in up.stdout
        again = run_cli("up", env=env)  # idempotent: a running stack is reused
        assert "already running" in again.stdout

        state = read_state(Settings.from_env(env))
        assert state is not None
        rows = process_table(state)
        instances = json.loads((REPO / "localstack" / "resources.json").read_text())["event_source"]
        n = instances["maximum_concurrency"]
        assert [name for name, *_ in rows] == [
            "emulator (moto)",
            "postgres (cluster)",
            "dispatcher",
            *(f"function {i} (RIE + awslambdaric)" for i in range(1, n + 1)),
        ]
        assert all(running for *_, running in rows)
        pids = [pid for _, pid, _, _ in rows]
        assert len({where for *_, where, _ in rows}) == len(rows)  # each instance on a port of its own

        status = run_cli("status", env=env)
        assert status.returncode == 0 and status.stdout.count("running") == 3 + n
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in run_cli("env", env=env).stdout.splitlines()
        )
        assert set(exports) >= {
            "AWS_ENDPOINT_URL",
            "AWS_DEFAULT_REGION",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "INGEST_BUCKET",
            "INGEST_TOPIC_ARN",
            "DATABASE_URL",
        }
        assert exports["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
        database_url = exports["DATABASE_URL"].strip("'")
        assert ":5432/" not in database_url
        with psycopg.connect(database_url) as conn:
            assert conn.execute("SELECT inet_server_addr()::text").fetchone() == ("127.0.0.1/32",)

        # every server listens on loopback only
        listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
        for line in listening.splitlines():
            if any(f"pid={pid}," in line for pid in pids if pid):
                assert "127.0.0.1:" in line, line
    finally:
        down = run_cli("down", env=env, check=False)
    assert "stopped the dispatcher" in down.stdout and "stopped the emulator" in down.stdout
    assert not any(pid and alive(pid) for pid in pids)
    assert not (tmp_path / "stack").exists()
    assert run_cli("status", env=env, check=False).returncode == 3
