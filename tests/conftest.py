"""Servers the integration and end-to-end tests start themselves: a moto server and a PostgreSQL.

Both bind to 127.0.0.1 on free ports and are stopped by PID at the end of the session. PostgreSQL comes
from DATABASE_URL when set (the tests then work in a database of their own, created and dropped here),
else from the machine's PostgreSQL binaries, else from the pgserver wheel.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pytest
from psycopg import sql

from devstack import emulator
from devstack.postgres import start_postgres
from devstack.processes import HOST, listen_port, stop_pid

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"
REGION = "us-east-1"

# Never let a test reach real AWS with someone's credentials.
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(_name, None)
os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION=REGION)


def lock_waiters(query, relation: str | None = None) -> int:
    """How many sessions of the function wait for a lock (on ``relation``, if given); ``query`` runs a statement
    on the test's database (a pipeline's or a stack's ``query``)."""
    return int(
        query(
            "SELECT count(DISTINCT l.pid) AS n FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE NOT l.granted AND a.application_name = 'ingest' "
            "AND (CAST(%s AS text) IS NULL OR l.relation = to_regclass(%s))",
            relation,
            relation,
        )[0]["n"]
    )


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory) -> Iterator[str]:
    port = listen_port()
    process = emulator.start_moto(port, tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield f"http://{HOST}:{port}"
    finally:
        stop_pid(process.pid)


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory) -> Iterator[str]:
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    server = start_postgres(tmp_path_factory.mktemp("postgres") / "data")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def session_database_url(postgres_server_url) -> Iterator[str]:
    """A database of the test session's own, so that a DATABASE_URL given by a user is never clobbered."""
    name = f"ingest_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield str(psycopg.conninfo.make_conninfo(postgres_server_url, dbname=name))
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def database_url(session_database_url) -> str:
    """The session database, emptied: every test starts without tables."""
    with psycopg.connect(session_database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS ingest_ledger CASCADE; DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    return session_database_url


@pytest.fixture
def aws(moto_endpoint, monkeypatch) -> Iterator[AwsClients]:
    emulator.reset(moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    yield AwsClients(moto_endpoint)


class AwsClients:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        session = boto3.session.Session(region_name=REGION)
        self.s3 = session.client("s3", endpoint_url=endpoint)
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        self.sns = session.client("sns", endpoint_url=endpoint)
