"""A contract edited while the embedded stack runs (a contracts folder of its own, INGEST_CONTRACTS_DIR):
an added column applies itself on the next upload; an incompatible type change fails the file with
contract_table_mismatch and the DDL, and once the user has run it, `ingest replay` loads the file once."""

from __future__ import annotations

import hashlib
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import REPO
from tests.e2e.conftest import Stack, embedded_stack
from tests.integration.test_cli import ingest

pytestmark = pytest.mark.stack

THINGS = """
table = "things"
keys = ["incoming/things/*.csv"]
load = {{ mode = "append" }}

[[columns]]
name = "id"
type = "integer"
primary_key = true

[[columns]]
name = "label"
type = "{label_type}"
required = true
{extra}
"""
PHONE = '\n[[columns]]\nname = "phone"\ntype = "text"\n'


@pytest.fixture(scope="module")
def evolving(session_database_url, tmp_path_factory) -> Iterator[tuple[Stack, Path]]:
    contracts = tmp_path_factory.mktemp("contracts")
    for path in (REPO / "lambda" / "contracts").glob("*.toml"):
        shutil.copy(path, contracts)
    (contracts / "things.toml").write_text(THINGS.format(label_type="text", extra=""))
    settings = {"DATABASE_URL": session_database_url, "INGEST_CONTRACTS_DIR": str(contracts)}
    for stack in embedded_stack(tmp_path_factory.mktemp("evolving"), settings):
        yield stack, contracts / "things.toml"


def edit(path: Path, text: str) -> None:
    stat = path.stat()
    path.write_text(text)
    # the function restarts when a contract's modification time changes: make sure it does
    later = max(stat.st_mtime_ns + 1_000_000, path.stat().st_mtime_ns)
    import os

    os.utime(path, ns=(later, later))


def test_an_added_column_applies_itself_and_a_breaking_change_waits_for_the_user(evolving):
    stack, things = evolving
    run = uuid.uuid4().hex[:6]
    first = f"incoming/things/v1_{run}.csv"
    stack.upload(first, b"id,label\n1,100\n2,200\n")
    assert stack.receipts_for(first)[0]["status"] == "loaded"

    edit(things, THINGS.format(label_type="text", extra=PHONE))
    second = f"incoming/things/v2_{run}.csv"
    stack.upload(second, b"id,label,phone\n3,300,+1 555 0100\n")
    [receipt] = stack.receipts_for(second)
    assert receipt["status"] == "loaded"
    assert receipt["schema_changes"][0].startswith("ALTER TABLE things ADD COLUMN phone TEXT;")
    rows = stack.query("SELECT id, label, phone FROM things ORDER BY id")
    assert rows == [
        {"id": 1, "label": "100", "phone": None},
        {"id": 2, "label": "200", "phone": None},
        {"id": 3, "label": "300", "phone": "+1 555 0100"},
    ]

    edit(things, THINGS.format(label_type="integer", extra=PHONE))
    third = f"incoming/things/v3_{run}.csv"
    data = b"id,label,phone\n4,400,\n"
    stack.upload(third, data)
    receipts = stack.receipts_for(third, count=3, timeout=90)  # retried, then dead-lettered
    assert {(r["status"], r["reason"]) for r in receipts} == {("failed", "contract_table_mismatch")}
    message = receipts[0]["message"]
    ddl = "ALTER TABLE things ALTER COLUMN label TYPE INTEGER USING label::INTEGER;"
    assert "column label: text in the table, integer in the contract" in message and ddl in message
    assert f"ingest replay s3://{stack.bucket}/{third}" in message
    assert stack.s3.head_object(Bucket=stack.bucket, Key=third)  # the object is kept
    _wait_until_dead_lettered(stack)

    with psycopg.connect(stack.database_url, autocommit=True) as admin:
        admin.execute(ddl)  # the user runs the DDL the message gave
    replayed = ingest("replay", f"s3://{stack.bucket}/{third}", env=stack.env)
    assert replayed.returncode == 0 and "LOADED" in replayed.stdout, replayed.stdout + replayed.stderr
    md5 = hashlib.md5(data).hexdigest()
    loaded = stack.query(
        "SELECT count(*) AS n FROM ingest_ledger.ingest_files WHERE md5 = %s AND status = 'loaded'", md5
    )
    assert loaded[0]["n"] == 1
    assert stack.query("SELECT label FROM things WHERE id = 4") == [{"label": 400}]


def _wait_until_dead_lettered(stack: Stack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        attributes = stack.sqs.get_queue_attributes(
            QueueUrl=stack.env["INGEST_DLQ_URL"], AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        if int(attributes["ApproximateNumberOfMessages"]):
            return
        time.sleep(0.3)
    raise AssertionError("the failed upload never reached the dead-letter queue")
