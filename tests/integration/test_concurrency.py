"""Loads at once, as Lambda runs them: several deliveries, each with connections of its own, against the real
PostgreSQL and emulator. Where an outcome depends on how the loads interleave, the test makes the interleaving
happen: it holds a lock that every load needs, waits until each of them waits for it, then lets go, so the
order the bug needs comes about on any machine, fast or slow (no sleeps).

One test per row of the table in the concurrency issue, plus concurrent replaces with and without a key, the
lock order of a load's commit against a load that holds its table, and a load that waits for its table past
its deadline."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from ingest.adapters.postgres import Database, Load, TableBusy
from ingest.contract import ContractRegistry, parse_contract
from ingest.service import Dependencies, ingest_object
from tests.conftest import lock_waiters
from tests.integration.objects import upload_multipart

AT_ONCE = 8


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def own_deps(pipeline) -> Dependencies:
    """What one function instance has: its own database engine (connections), the same S3, SNS, contracts."""
    return Dependencies(
        pipeline.deps.contracts, pipeline.deps.store, Database(pipeline.database_url), pipeline.deps.notifier
    )


def deliver(pipeline, keys: list[str], deadline_s: float | None = None) -> list[Any]:
    """Ingest each key in a thread of its own (a function instance of its own), all released by one barrier;
    their receipts (or exceptions) in the order of ``keys``."""
    results: list[Any] = [None] * len(keys)
    barrier = threading.Barrier(len(keys))

    def run(i: int) -> None:
        deps = own_deps(pipeline)
        for contract in deps.contracts:  # a warm instance: its tables made or found before the burst
            deps.database.ensure_tables(contract)
        barrier.wait()
        try:
            deadline = time.monotonic() + deadline_s if deadline_s else None
            results[i] = ingest_object(pipeline.bucket, keys[i], deps, deadline=deadline)
        except Exception as exc:
            results[i] = exc
        finally:
            deps.database.dispose()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(keys))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


@contextmanager
def held(pipeline, statement: str) -> Iterator[psycopg.Connection]:
    """Hold what ``statement`` takes (``LOCK TABLE …``) until the block ends."""
    with psycopg.connect(pipeline.database_url) as holder:
        holder.execute(statement)
        yield holder
        holder.rollback()


def wait_for_waiters(pipeline, count: int, relation: str | None = None, timeout: float = 60) -> None:
    """Until ``count`` sessions of the function wait for a lock (on ``relation``, if given): a condition
    polled, not a guess of time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock_waiters(pipeline.query, relation) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} loads waited for a lock within {timeout}s")


def while_held(pipeline, statement: str, waiters: int, work: Callable[[], Any], relation: str | None = None) -> Any:
    """Run ``work`` in a thread while ``statement``'s lock is held; let go once ``waiters`` loads wait (for a
    lock on ``relation``, if given)."""
    out: list[Any] = []
    with held(pipeline, statement):
        thread = threading.Thread(target=lambda: out.append(work()))
        thread.start()
        wait_for_waiters(pipeline, waiters, relation)
    thread.join(120)
    assert not thread.is_alive(), "the loads did not end once the lock was let go"
    return out[0]


def use(pipeline, **contract: Any) -> None:
    name = contract.pop("name")
    pipeline.deps.contracts = ContractRegistry([parse_contract(name, contract)])


def statuses(results: list[Any]) -> list[str]:
    return sorted(r.status if hasattr(r, "status") else f"raised {type(r).__name__}: {r}" for r in results)


# -- replace ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [False, True], ids=["no key", "primary key"])
def test_replaces_at_once_leave_exactly_the_rows_of_the_file_that_committed_last(pipeline, key):
    use(
        pipeline,
        name="prices",
        table="prices",
        keys=["incoming/prices/*.csv"],
        load={"mode": "replace"},
        columns=[{"name": "sku", "required": True, "primary_key": key}, {"name": "price", "type": "numeric"}],
    )
    pipeline.upload("incoming/prices/first.csv", b"sku,price\nseed,1\n")
    assert ingest_object(pipeline.bucket, "incoming/prices/first.csv", pipeline.deps).status == "loaded"
    keys, files = [], {}
    for i in range(AT_ONCE):  # the same skus in every file (a key conflict if two files mixed), other prices
        data = ("sku,price\n" + "".join(f"sku{n},{i}.{n:03d}\n" for n in range(200 + i))).encode()
        key_ = f"incoming/prices/p{i}.csv"
        pipeline.upload(key_, data)
        keys.append(key_)
        files[md5(data)] = 200 + i
    # every load waits for the table (the test holds it), then they go on together
    results = while_held(
        pipeline, "LOCK TABLE prices IN ACCESS EXCLUSIVE MODE", AT_ONCE, lambda: deliver(pipeline, keys), "prices"
    )
    assert statuses(results) == ["loaded"] * AT_ONCE
    last = pipeline.query(
        "SELECT md5 FROM ingest_ledger.ingest_files"
        " WHERE table_name = 'prices' AND status = 'loaded' ORDER BY id DESC LIMIT 1"
    )[0]["md5"]
    rows = pipeline.query("SELECT _ingest_md5 AS md5, count(*) AS n FROM prices GROUP BY 1")
    assert rows == [{"md5": last, "n": files[last]}], f"the table mixes files: {rows}"


# -- rejections -------------------------------------------------------------------------------------------


def test_a_rejected_file_delivered_at_once_is_recorded_once_and_the_others_are_skipped(pipeline):
    key = "incoming/users/rejected_at_once.csv"
    pipeline.upload(key, b"id,email,full_name\n1,not-an-email,\n2,also not,\n3,nope,\n")  # every row rejected
    pipeline.deps.database.ensure_tables(pipeline.deps.contracts["users"])
    # The deliveries read the ledger (nothing yet), then wait to write it: the test keeps writers out.
    results = while_held(
        pipeline,
        "LOCK TABLE ingest_ledger.ingest_files IN SHARE MODE",
        AT_ONCE,
        lambda: deliver(pipeline, [key] * AT_ONCE),
    )
    assert statuses(results) == ["rejected"] + ["skipped"] * (AT_ONCE - 1)
    assert {r.reason for r in results if r.status == "skipped"} == {"already_rejected"}
    ledger = pipeline.query("SELECT status, count(*) AS n FROM ingest_ledger.ingest_files GROUP BY 1 ORDER BY 1")
    assert ledger == [{"status": "rejected", "n": 1}, {"status": "skipped", "n": AT_ONCE - 1}]
    receipts = pipeline.receipts()
    assert sorted(r["status"] for r in receipts) == ["rejected"] + ["skipped"] * (AT_ONCE - 1)


# -- append, upsert, the same content ---------------------------------------------------------------------


def test_files_appending_to_one_table_at_once_each_load_every_row_once(pipeline):
    keys = []
    for i in range(AT_ONCE):
        rows = "".join(f"S{i}-{n},2024-01-01T00:00:00Z,inst{i}\n" for n in range(300))
        keys.append(f"incoming/test/append_{i}.csv")
        pipeline.upload(keys[-1], ("sample_id,measured_at,instrument\n" + rows).encode())
    pipeline.deps.database.ensure_tables(pipeline.deps.contracts["test"])
    results = while_held(pipeline, "LOCK TABLE test IN SHARE MODE", AT_ONCE, lambda: deliver(pipeline, keys))
    assert statuses(results) == ["loaded"] * AT_ONCE
    assert pipeline.query("SELECT count(*) AS n, count(DISTINCT sample_id) AS d FROM test")[0] == {
        "n": 300 * AT_ONCE,
        "d": 300 * AT_ONCE,
    }


def test_upserts_of_overlapping_keys_at_once_all_load_and_every_key_is_there_once(pipeline):
    pipeline.upload("incoming/users/seed.csv", b"id,email,full_name\n1,s@e.ed,Seed\n")
    ingest_object(pipeline.bucket, "incoming/users/seed.csv", pipeline.deps)  # rows: staging + merge
    keys = []
    for i in range(AT_ONCE):
        rows = "".join(f"{n},u{n}.{i}@example.com,User {n} v{i}\n" for n in range(1, 2000))
        keys.append(f"incoming/users/overlap_{i}.csv")
        pipeline.upload(keys[-1], ("id,email,full_name\n" + rows).encode())
    results = while_held(pipeline, "LOCK TABLE users IN SHARE MODE", AT_ONCE, lambda: deliver(pipeline, keys))
    assert statuses(results) == ["loaded"] * AT_ONCE
    assert pipeline.query("SELECT count(*) AS n, count(DISTINCT id) AS d FROM users")[0] == {"n": 1999, "d": 1999}


@pytest.mark.parametrize("keys", ["one object", "copies under other keys"])
def test_the_same_content_at_once_loads_once_and_the_others_skip(pipeline, keys):
    data = b"id,email,full_name\n" + b"".join(f"{n},c{n}@example.com,Copy {n}\n".encode() for n in range(1, 500))
    names = [f"incoming/users/same_{i if keys != 'one object' else 0}.csv" for i in range(AT_ONCE)]
    for name in set(names):
        pipeline.upload(name, data)
    pipeline.deps.database.ensure_tables(pipeline.deps.contracts["users"])
    results = while_held(pipeline, "LOCK TABLE users IN SHARE MODE", AT_ONCE, lambda: deliver(pipeline, names))
    assert statuses(results) == ["loaded"] + ["skipped"] * (AT_ONCE - 1)
    assert {r.reason for r in results if r.status == "skipped"} == {"duplicate_content"}
    assert pipeline.query("SELECT count(*) AS n FROM users WHERE _ingest_md5 = %s", md5(data))[0]["n"] == 499
    assert pipeline.query("SELECT count(*) AS n FROM ingest_ledger.ingest_files WHERE status = 'loaded'")[0]["n"] == 1


def test_a_multipart_file_delivered_again_during_its_load_loads_once(pipeline):
    rows = 300_000
    data = b"id,email,full_name\n" + b"".join(
        f"{n},m{n}@example.com,Multipart {n:07d} padded to make the file a few parts long\n".encode()
        for n in range(1, rows + 1)
    )
    key = "incoming/users/multipart_again.csv"
    upload_multipart(pipeline, key, data)
    pipeline.deps.database.ensure_tables(pipeline.deps.contracts["users"])
    with held(pipeline, "LOCK TABLE users IN SHARE MODE"):
        first: list[Any] = []
        thread = threading.Thread(target=lambda: first.append(deliver(pipeline, [key])))
        thread.start()
        wait_for_waiters(pipeline, 1)  # the first delivery is in its load, waiting for the table
        again = threading.Thread(target=lambda: first.append(deliver(pipeline, [key] * 3)))
        again.start()
        wait_for_waiters(pipeline, 4)
    thread.join(120)
    again.join(120)
    results = [r for batch in first for r in batch]
    assert statuses(results) == ["loaded"] + ["skipped"] * 3
    assert pipeline.query("SELECT count(*) AS n FROM users WHERE _ingest_md5 = %s", md5(data))[0]["n"] == rows


# -- lock order -------------------------------------------------------------------------------------------


def ledger_entry(data_md5: str, key: str) -> dict[str, Any]:
    return {"md5": data_md5, "bucket": "b", "object_key": key, "table_name": "users", "started_at": datetime.now(UTC)}


def test_a_commit_waits_for_its_table_before_it_writes_its_ledger_row_so_two_loads_cannot_deadlock(pipeline):
    """Two loads of the same content into one table: B stages (the table had rows when it began), then the
    table is emptied and A begins, holding the table for its COPY. B commits first and waits for the table;
    then A commits. Were B's ledger row written before it asked for the table, A's ledger row would wait for
    B while B waits for A: PostgreSQL's DeadlockDetected, and a delivery failed for nothing."""
    contract = pipeline.deps.contracts["users"]
    database = Database(pipeline.database_url)
    pipeline.upload("incoming/users/seed.csv", b"id,email,full_name\n1,s@e.ed,Seed\n")
    ingest_object(pipeline.bucket, "incoming/users/seed.csv", pipeline.deps)
    # the rows as processing hands them to the load: every column of the contract, normalized
    others = "," * (len(contract.column_names) - 3)
    header = ",".join(contract.column_names).encode()
    rows = header + b"\n" + b"".join(f"{n},d{n}@example.com,D {n}{others}\n".encode() for n in range(1, 100))
    content = md5(rows)
    b = database.begin_load(contract, content)
    assert b.strategy == "staging"
    b.write(rows)
    pipeline.query("DELETE FROM users RETURNING id")
    a = database.begin_load(contract, content)
    assert a.strategy == "copy"  # an upsert into an empty table holds it from here to its commit
    a.write(rows)
    committed: dict[str, Any] = {}

    def commit(name: str, load: Any) -> None:
        try:
            committed[name] = load.commit(ledger_entry(content, f"incoming/users/{name}.csv"))
        except Exception as exc:
            committed[name] = exc
            load.rollback(exc)

    b_thread = threading.Thread(target=commit, args=("b", b))
    b_thread.start()
    try:
        wait_for_waiters(pipeline, 1, timeout=5)  # B waits for the table A holds
    except AssertionError:
        raise AssertionError(committed) from None
    commit("a", a)
    b_thread.join(60)
    database.dispose()
    assert isinstance(committed["a"], int), committed
    assert committed["b"] is None, committed  # the same content was loaded meanwhile: B skips
    assert pipeline.query("SELECT count(*) AS n FROM users WHERE _ingest_md5 = %s", content)[0]["n"] == 99


# -- a busy table -----------------------------------------------------------------------------------------


def test_a_load_that_waits_for_its_table_past_its_deadline_fails_as_table_busy_naming_the_holder(pipeline):
    pipeline.deps.database.ensure_tables(pipeline.deps.contracts["users"])
    key = f"incoming/users/busy_{uuid.uuid4().hex[:6]}.csv"
    pipeline.upload(key, b"id,email,full_name\n1,b@e.ed,Busy\n")
    with psycopg.connect(pipeline.database_url) as holder:
        holder.execute("SET application_name = 'operator-psql'")
        holder.execute("LOCK TABLE users IN SHARE MODE")
        with pytest.raises(TableBusy):
            ingest_object(pipeline.bucket, key, pipeline.deps, deadline=time.monotonic() + 1.5)
        holder.rollback()
    [entry] = pipeline.query("SELECT status, reason, error FROM ingest_ledger.ingest_files")
    assert (entry["status"], entry["reason"]) == ("failed", "table_busy")
    assert "table users was busy" in entry["error"] and "operator-psql" in entry["error"], entry["error"]
    assert "ShareRowExclusiveLock" in entry["error"], entry["error"]  # an upsert into an empty table
    assert "deadline" in entry["error"] and "rows" in entry["error"] and "bytes" in entry["error"]
    assert pipeline.query("SELECT count(*) AS n FROM users")[0]["n"] == 0
    [receipt] = pipeline.receipts()
    assert (receipt["status"], receipt["reason"]) == ("failed", "table_busy")
    # the table is free again: the next delivery loads
    assert ingest_object(pipeline.bucket, key, pipeline.deps).status == "loaded"


def test_a_load_cancelled_at_its_deadline_never_cancels_what_its_connection_does_next(pipeline, monkeypatch):
    """At a load's deadline its watchdog asks the server what the load waits for, then cancels its statement. A
    load rolled back meanwhile (its caller reached the same deadline) had given its connection back to the
    pool, and the late cancel stopped whatever the connection did next: in CI, the failure's own ledger row.
    Here the lookup is held until the connection serves the next statement (one waiting for an advisory lock
    the test holds): that statement must end as it would have."""
    contract = pipeline.deps.contracts["users"]
    database = Database(pipeline.database_url)  # one pooled connection: the next statement gets the load's
    database.ensure_tables(contract)
    looking, go_on = threading.Event(), threading.Event()

    def lock_wait(_load: Load, _pid: int) -> str | None:
        looking.set()
        go_on.wait(30)
        return None

    monkeypatch.setattr(Load, "_lock_wait", lock_wait)
    load = database.begin_load(contract, "0" * 32, deadline=time.monotonic() + 0.2)
    assert looking.wait(30)  # the deadline came: the watchdog looks up what the load waits for
    load.rollback()
    outcome: list[Any] = []

    def next_statement() -> None:
        try:
            with database.engine.connect() as conn:
                outcome.append(conn.execute(sa.text("SELECT pg_advisory_lock(4242), pg_advisory_unlock(4242)")).all())
        except Exception as exc:
            outcome.append(exc)

    with psycopg.connect(pipeline.database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(4242)")
        thread = threading.Thread(target=next_statement)
        thread.start()
        deadline = time.monotonic() + 30
        while not pipeline.query(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
        ):
            assert time.monotonic() < deadline, "the next statement never waited for the advisory lock"
            time.sleep(0.02)
        go_on.set()
        assert load._watchdog is not None
        load._watchdog.join(30)  # the watchdog has done all it does at the deadline
        holder.execute("SELECT pg_advisory_unlock(4242)")
    thread.join(30)
    database.dispose()
    assert outcome and not isinstance(outcome[0], Exception), outcome


def test_an_upsert_behind_an_autovacuum_of_its_table_cancels_it_rather_than_wait_the_servers_deadlock_timeout(
    pipeline,
):
    """After a big load autovacuum comes to its table, holding a lock the next upsert's MERGE needs. PostgreSQL
    cancels an autovacuum that blocks a lock request, but only once the waiter looks for a deadlock: after its
    deadlock_timeout. Here the server's is ten minutes and an autovacuum of the table crawls (a page per 100 ms
    or more, past the load's deadline): the upsert gets its table in time because its transaction's
    deadlock_timeout is DEADLOCK_TIMEOUT."""
    if not pipeline.query("SELECT current_setting('is_superuser') = 'on' AS su")[0]["su"]:
        pytest.skip("needs a superuser to make autovacuum come (ALTER SYSTEM)")
    rows = b"".join(f"{n},a{n}@example.com,Name {n}\n".encode() for n in range(1, 30_001))
    pipeline.upload("incoming/users/first.csv", b"id,email,full_name\n" + rows)
    assert ingest_object(pipeline.bucket, "incoming/users/first.csv", pipeline.deps).status == "loaded"
    with psycopg.connect(pipeline.database_url, autocommit=True) as admin:  # an autovacuum that crawls
        admin.execute(
            "ALTER TABLE users SET (autovacuum_vacuum_insert_threshold = 0, autovacuum_vacuum_insert_scale_factor = 0, "
            "autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1)"
        )
    try:
        with psycopg.connect(pipeline.database_url, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM SET autovacuum_naptime = 1")
            admin.execute("ALTER SYSTEM SET deadlock_timeout = '10min'")
            admin.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 60
            while not admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' "
                "AND datname = current_database() AND query LIKE '%users%'"
            ).fetchone():
                assert time.monotonic() < deadline, "no autovacuum of the table came within 60 s"
                time.sleep(0.05)
            pipeline.upload("incoming/users/again.csv", b"id,email,full_name\n" + rows + b"\n")
            receipt = ingest_object(
                pipeline.bucket, "incoming/users/again.csv", pipeline.deps, deadline=time.monotonic() + 20
            )
    finally:
        with psycopg.connect(pipeline.database_url, autocommit=True) as admin:
            admin.execute("ALTER SYSTEM RESET autovacuum_naptime")
            admin.execute("ALTER SYSTEM RESET deadlock_timeout")
            admin.execute("SELECT pg_reload_conf()")
    assert receipt.status == "loaded", receipt
