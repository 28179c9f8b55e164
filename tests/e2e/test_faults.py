"""Faults: PostgreSQL stopped and started on both stacks; on an embedded stack of its own (its own
PostgreSQL cluster, a 3-second function timeout) a load past its deadline and a stopped dispatcher."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator

import pytest

from devstack.processes import alive
from devstack.stack import Settings, read_state
from tests.e2e.conftest import Stack, embedded_stack, run_cli, unique_users
from tests.integration.test_cli import ingest

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory) -> Iterator[tuple[Stack, dict[str, str]]]:
    for stack in embedded_stack(tmp_path_factory.mktemp("faults"), {"INGEST_FUNCTION_TIMEOUT": "3"}):
        assert stack.cli_env is not None
        yield stack, stack.cli_env


@pytest.fixture(params=["embedded", "compose"])
def fault_stack(request) -> Stack:
    """A stack whose PostgreSQL may be stopped: the embedded one above (its own cluster), or compose's."""
    if request.param == "compose":
        return request.getfixturevalue("compose_stack")
    return request.getfixturevalue("own_stack")[0]


def test_postgres_down_then_back_the_file_is_retried_and_loaded_once(fault_stack):
    stack = fault_stack
    stack.stop_postgres()
    started = False
    try:
        data, ids = unique_users(rows=4)
        key = f"incoming/users/pgdown_{uuid.uuid4().hex[:8]}.csv"
        stack.upload(key, data)
        first = stack.receipts_for(key, timeout=60)[0]
        assert (first["status"], first["reason"]) == ("failed", "database_unreachable")
        assert "PostgreSQL did not accept a connection" in first["message"]
        # No retry may run before PostgreSQL answers again, however long its start takes today: the
        # dispatcher is frozen meanwhile (a retry spent on a closed port would bring the DLQ closer).
        with stack.dispatcher_paused():
            stack.start_postgres()
            started = True
    finally:
        if not started:
            stack.start_postgres()
    receipts = stack.receipts_for(key, count=2, timeout=60)
    assert receipts[-1]["status"] == "loaded"
    md5 = hashlib.md5(data).hexdigest()
    assert (
        stack.query("SELECT count(*) AS n FROM ingest_ledger.ingest_files WHERE md5 = %s AND status = 'loaded'", md5)[
            0
        ]["n"]
        == 1
    )
    assert len(stack.query("SELECT id FROM users WHERE id = ANY(%s)", ids)) == 4


def test_a_load_past_its_deadline_stops_itself_on_record_and_is_dead_lettered_then_replayed(own_stack):
    stack, _env = own_stack
    # The load waits on a lock the test holds, so every attempt outlives the 3-second timeout however fast
    # the machine is. The function stops itself before the timeout: each attempt rolls back, writes a
    # failed/table_busy ledger row (naming what held the table) and publishes its receipt; after three
    # receives the message waits in the dead-letter queue. A replay while the lock is still held stops
    # again, on record; after the lock is gone, a replay loads the file once.
    data, ids = unique_users(rows=5)
    key = f"incoming/users/slow_{uuid.uuid4().hex[:8]}.csv"
    dlq = stack.env["INGEST_DLQ_URL"]
    md5 = hashlib.md5(data).hexdigest()
    with stack.table_locked("users"):
        stack.upload(key, data)
        receipts = stack.receipts_for(key, count=3, timeout=90)
        assert [(r["status"], r["reason"]) for r in receipts] == [("failed", "table_busy")] * 3
        assert "deadline" in receipts[0]["message"] and "held by" in receipts[0]["message"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            attrs = stack.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])
            if int(attrs["Attributes"]["ApproximateNumberOfMessages"]):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the timed-out upload never reached the dead-letter queue")
        entries = stack.query(
            "SELECT status, reason FROM ingest_ledger.ingest_files WHERE object_key = %s ORDER BY id", key
        )
        assert [(e["status"], e["reason"]) for e in entries] == [("failed", "table_busy")] * 3
        status = ingest("status", env=stack.env)
        assert status.returncode == 0 and "table_busy" in status.stdout
        assert stack.query("SELECT count(*) AS n FROM users WHERE _ingest_md5 = %s", md5)[0]["n"] == 0
        replayed = ingest("replay", "--dead-letters", env=stack.env)
        assert replayed.returncode == 0 and "moved 1 message" in replayed.stdout, replayed.stderr
        assert stack.receipts_for(key, count=4, timeout=60)[3]["reason"] == "table_busy"  # again, on record
    # the lock is gone: the replayed message's next attempt loads the file, once
    assert stack.receipts_for(key, count=5, timeout=60)[-1]["status"] == "loaded"
    assert len(stack.query("SELECT id FROM users WHERE id = ANY(%s)", ids)) == 5

    data, ids = unique_users(rows=3)
    key = f"incoming/users/after_timeout_{uuid.uuid4().hex[:8]}.csv"
    stack.upload(key, data)
    assert stack.receipts_for(key, timeout=60)[0]["status"] == "loaded"
    assert len(stack.query("SELECT id FROM users WHERE id = ANY(%s)", ids)) == 3


def test_a_stopped_dispatcher_loses_no_message_and_make_up_restarts_it(own_stack):
    from devstack.processes import stop_pid

    stack, env = own_stack
    state = read_state(Settings.from_env(env))
    assert state is not None
    dispatcher = state["dispatcher"]["pid"]
    stop_pid(dispatcher)
    data, ids = unique_users(rows=2)
    key = f"incoming/users/while_down_{uuid.uuid4().hex[:8]}.csv"
    stack.upload(key, data)  # waits in the queue: nobody consumes it
    status = run_cli("status", env=env, check=False)
    assert status.returncode == 1 and "STOPPED" in status.stdout
    again = run_cli("up", env=env)
    assert "starting it (and the function instances) again" in again.stdout
    assert not alive(dispatcher) and read_state(Settings.from_env(env))["dispatcher"]["pid"] != dispatcher  # type: ignore[index]
    receipts = stack.receipts_for(key, timeout=60)
    assert [r["status"] for r in receipts] == ["loaded"], receipts
    assert len(stack.query("SELECT id FROM users WHERE id = ANY(%s)", ids)) == 2
    assert run_cli("status", env=env).returncode == 0


def test_a_file_whose_every_delivery_outlives_the_hard_timeout_is_on_record_before_the_dead_letter_queue(own_stack):
    """A stand-in for the runtime's hard timeout: each delivery's runtime is frozen (SIGSTOP) while it works on
    the file, so that its own deadline never acts, and the RIE kills it at the function's 3-second timeout."""
    from tests.e2e.test_pipeline import _wait_for_dead_letter

    stack, _env = own_stack
    data, ids = unique_users(rows=2)
    key = f"incoming/users/frozen_{uuid.uuid4().hex[:8]}.csv"
    with stack.table_locked("users"):
        stack.upload(key, data)
        stack.end_deliveries(key, 2, stack.freeze_until_the_timeout)
        receipts = stack.receipts_for(key, count=3, timeout=120)
        assert [(r["status"], r["reason"]) for r in receipts] == [("failed", "function_died")] * 3
        assert _wait_for_dead_letter(stack, key) == [key]
    assert stack.query("SELECT count(*) AS n FROM users WHERE id = ANY(%s)", ids)[0]["n"] == 0
