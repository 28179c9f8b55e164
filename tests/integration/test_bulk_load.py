"""A big first load into an empty table COPYs without the table's keys and indexes and builds them once
at the end: the table ends exactly as it began (same constraints and indexes), and two such loads at once
queue instead of deadlocking."""

from __future__ import annotations

import threading

import pytest

from ingest.adapters import postgres
from ingest.adapters.postgres import Database
from ingest.service import ingest_object


def users_csv(first: int, rows: int) -> bytes:
    return b"id,email,full_name,country\n" + b"".join(
        f"{i},u{i}@example.com,User {i},DE\n".encode() for i in range(first, first + rows)
    )


def definition(pipeline) -> list[tuple[str, str]]:
    rows = pipeline.query(
        "SELECT conname AS name, pg_get_constraintdef(oid) AS def FROM pg_constraint "
        "WHERE conrelid = 'users'::regclass UNION ALL SELECT indexname, indexdef FROM pg_indexes "
        "WHERE tablename = 'users' ORDER BY 1, 2"
    )
    return [(r["name"], r["def"]) for r in rows]


@pytest.fixture
def bulk(monkeypatch):
    monkeypatch.setattr(postgres, "BULK_LOAD_BYTES", 1024)  # every test file counts as big


def test_a_big_first_load_builds_the_keys_after_the_copy_and_ends_with_the_same_table(pipeline, bulk):
    pipeline.deps.database.ensure_tables(pipeline.deps.contracts.contracts["users"])
    before = definition(pipeline)
    assert any(name == "users_pkey" for name, _ in before)
    pipeline.upload("incoming/users/a.csv", users_csv(1, 2000))
    assert ingest_object(pipeline.bucket, "incoming/users/a.csv", pipeline.deps).rows_loaded == 2000
    assert definition(pipeline) == before
    # the key works as before: an upsert over the loaded rows goes through MERGE on it
    pipeline.upload("incoming/users/b.csv", users_csv(1500, 1000))
    receipt = ingest_object(pipeline.bucket, "incoming/users/b.csv", pipeline.deps)
    assert receipt.status == "loaded"
    assert pipeline.query("SELECT count(*) AS n FROM users")[0]["n"] == 2499


def test_a_key_the_build_cannot_make_fails_the_load_and_leaves_the_table_as_it_was(pipeline, bulk):
    contract = pipeline.deps.contracts.contracts["users"]
    pipeline.deps.database.ensure_tables(contract)
    before = definition(pipeline)
    with pipeline.deps.database.engine.begin() as conn:  # a unique index the contract does not know about
        conn.exec_driver_sql("CREATE UNIQUE INDEX users_country_once ON users (country)")
    pipeline.upload("incoming/users/c.csv", users_csv(1, 50))  # fifty rows, one country
    with pytest.raises(Exception, match=r"users_country_once|could not create unique index"):
        ingest_object(pipeline.bucket, "incoming/users/c.csv", pipeline.deps)
    assert pipeline.query("SELECT count(*) AS n FROM users")[0]["n"] == 0
    assert definition(pipeline) == sorted(
        [
            *before,
            ("users_country_once", "CREATE UNIQUE INDEX users_country_once ON public.users USING btree (country)"),
        ]
    )


def test_two_big_first_loads_at_once_both_load(pipeline, bulk):
    pipeline.deps.database.ensure_tables(pipeline.deps.contracts.contracts["users"])
    for i in range(2):
        pipeline.upload(f"incoming/users/p{i}.csv", users_csv(1 + i * 5000, 5000))
    results: dict[int, str] = {}

    def run(i: int) -> None:
        deps = type(pipeline.deps)(**{**pipeline.deps.__dict__, "database": Database(pipeline.database_url)})
        try:
            results[i] = ingest_object(pipeline.bucket, f"incoming/users/p{i}.csv", deps).status
        finally:
            deps.database.dispose()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {0: "loaded", 1: "loaded"}
    assert pipeline.query("SELECT count(*) AS n FROM users")[0]["n"] == 10_000
