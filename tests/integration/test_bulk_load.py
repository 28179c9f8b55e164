"""Big loads take their own paths. A big first load into an empty table COPYs without the table's keys and
indexes and builds them once at the end: the table ends exactly as it began (same constraints and indexes),
and two such loads at once queue instead of deadlocking. A big upsert into a table with rows stages them in
an unlogged table that only its transaction ever sees, and when a sample says most are unchanged, merges
only the rows a parallel join finds new or changed."""

from __future__ import annotations

import threading

import psycopg
import pytest

from ingest.adapters import postgres
from ingest.adapters.postgres import Database, Load
from ingest.service import ingest_object
from tests.integration.roles import function_role


def users_csv(first: int, rows: int) -> bytes:
    return b"id,email,full_name,country\n" + b"".join(
        f"{i},u{i}@example.com,User {i},DE\n".encode() for i in range(first, first + rows)
    )


def definition(pipeline) -> list[tuple[str, str]]:
    """The table's constraints, indexes and column defaults."""
    rows = pipeline.query(
        "SELECT conname AS name, pg_get_constraintdef(oid) AS def FROM pg_constraint "
        "WHERE conrelid = 'users'::regclass UNION ALL SELECT indexname, indexdef FROM pg_indexes "
        "WHERE tablename = 'users' UNION ALL SELECT a.attname, pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d "
        "JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum WHERE d.adrelid = 'users'::regclass "
        "ORDER BY 1, 2"
    )
    return [(r["name"], r["def"]) for r in rows]


@pytest.fixture
def bulk(monkeypatch):
    monkeypatch.setattr(postgres, "BULK_LOAD_BYTES", 1024)  # every test file counts as big


def test_a_big_first_load_builds_the_keys_after_the_copy_and_ends_with_the_same_table(pipeline, bulk):
    pipeline.deps.database.ensure_tables(pipeline.deps.contracts.contracts["users"])
    before = definition(pipeline)
    assert any(name == "users_pkey" for name, _ in before)
    assert ("_ingest_md5", "current_setting('ingest.md5'::text, true)") in before
    pipeline.upload("incoming/users/a.csv", users_csv(1, 2000))
    receipt = ingest_object(pipeline.bucket, "incoming/users/a.csv", pipeline.deps)
    assert receipt.rows_loaded == 2000
    # every row names its file (the COPY took the MD5 as a constant default), and the default is the table's own again
    assert pipeline.query("SELECT count(*) AS n FROM users WHERE _ingest_md5 = %s", receipt.md5)[0]["n"] == 2000
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


@pytest.fixture
def big_upserts(monkeypatch) -> list[str]:
    """Every upsert counts as big; returns the list of the staged tables merged through the changed rows."""
    monkeypatch.setattr(postgres, "PARALLEL_STAGING_BYTES", 1024)
    prefiltered: list[str] = []
    changed_rows = Load._changed_rows

    def spy(self, on: str, changed: str) -> str:
        prefiltered.append(self.staging.name)
        return changed_rows(self, on, changed)

    monkeypatch.setattr(Load, "_changed_rows", spy)
    return prefiltered


def pipeline_tables(pipeline) -> list[str]:
    """The tables of the pipeline's own prefix any session can see (staging tables must never be one)."""
    rows = pipeline.query("SELECT relname FROM pg_class WHERE starts_with(relname, '_ingest_') ORDER BY 1")
    return [r["relname"] for r in rows]


def rows_by_id(pipeline) -> dict[int, tuple[str, str, str]]:
    rows = pipeline.query("SELECT id, email, full_name, _ingest_md5 FROM users")
    return {r["id"]: (r["email"], r["full_name"], r["_ingest_md5"]) for r in rows}


def test_a_big_upsert_of_mostly_unchanged_rows_merges_only_the_new_and_changed_ones(pipeline, big_upserts):
    pipeline.upload("incoming/users/day1.csv", users_csv(1, 3000))
    first = ingest_object(pipeline.bucket, "incoming/users/day1.csv", pipeline.deps)
    before = rows_by_id(pipeline)
    # the next day's snapshot: the same 3,000 rows, ten of them changed, and five new ones
    lines = users_csv(1, 3005).decode().splitlines(keepends=True)
    for i in range(100, 1100, 100):
        lines[i] = lines[i].replace(f"User {i},", f"Renamed {i},")
    pipeline.upload("incoming/users/day2.csv", "".join(lines).encode())
    second = ingest_object(pipeline.bucket, "incoming/users/day2.csv", pipeline.deps)
    assert (second.status, second.rows_loaded) == ("loaded", 15)
    assert len(big_upserts) == 1 and big_upserts[0].startswith("_ingest_stage_")
    after = rows_by_id(pipeline)
    assert len(after) == 3005
    renamed = {i for i in after if after[i][1].startswith("Renamed")}
    assert renamed == set(range(100, 1100, 100))
    for i in range(1, 3001):
        if i not in renamed:
            assert after[i] == before[i]  # untouched: still the first file's row (its MD5 too)
    assert all(after[i][2] == second.md5 for i in renamed | set(range(3001, 3006)))
    assert before[1][2] == first.md5
    assert pipeline_tables(pipeline) == []  # no staging or changed table left
    assert pipeline.query("SELECT count(*) AS n FROM users")[0]["n"] == 3005


def test_a_big_upsert_of_mostly_new_rows_merges_the_staged_table_as_it_is(pipeline, big_upserts):
    pipeline.upload("incoming/users/seed.csv", users_csv(1, 100))
    ingest_object(pipeline.bucket, "incoming/users/seed.csv", pipeline.deps)
    pipeline.upload("incoming/users/more.csv", users_csv(51, 3000))  # 50 rows known, 2,950 new
    receipt = ingest_object(pipeline.bucket, "incoming/users/more.csv", pipeline.deps)
    assert (receipt.status, receipt.rows_loaded) == ("loaded", 2950)
    assert big_upserts == []  # the sample saw mostly new rows: no join first
    assert pipeline.query("SELECT count(*) AS n, max(id) AS top FROM users")[0] == {"n": 3050, "top": 3050}
    assert pipeline_tables(pipeline) == []


def test_a_big_upsert_that_fails_after_staging_leaves_no_staging_table_and_the_rows_as_they_were(
    pipeline, big_upserts, monkeypatch
):
    pipeline.upload("incoming/users/seed.csv", users_csv(1, 500))
    ingest_object(pipeline.bucket, "incoming/users/seed.csv", pipeline.deps)
    before = rows_by_id(pipeline)

    def failing(self, on: str, changed: str) -> bool:
        raise RuntimeError("the server went away")

    monkeypatch.setattr(Load, "_mostly_unchanged", failing)
    pipeline.upload("incoming/users/next.csv", users_csv(1, 800).replace(b"User 7,", b"Changed 7,"))
    with pytest.raises(RuntimeError, match="went away"):
        ingest_object(pipeline.bucket, "incoming/users/next.csv", pipeline.deps)
    assert rows_by_id(pipeline) == before
    assert pipeline_tables(pipeline) == []


def test_a_role_that_may_not_create_tables_stages_a_big_upsert_in_a_temporary_table(
    pipeline, database_url, big_upserts
):
    # The tables were made by someone else and granted; the function's role may write them, create nothing.
    pipeline.upload("incoming/users/seed.csv", users_csv(1, 1000))
    ingest_object(pipeline.bucket, "incoming/users/seed.csv", pipeline.deps)
    with function_role(database_url, "ingest_fn_nocreate") as function_url:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("REVOKE CREATE ON SCHEMA public, ingest_ledger FROM ingest_fn_nocreate")
            admin.execute("GRANT SELECT, INSERT, UPDATE ON users, ingest_ledger.ingest_files TO ingest_fn_nocreate")
        pipeline.deps.database = Database(function_url)
        try:
            pipeline.upload("incoming/users/next.csv", users_csv(1, 1000).replace(b"User 7,", b"Changed 7,"))
            receipt = ingest_object(pipeline.bucket, "incoming/users/next.csv", pipeline.deps)
        finally:
            pipeline.deps.database.dispose()
        assert (receipt.status, receipt.rows_loaded) == ("loaded", 1)
        assert big_upserts == []  # a temporary staging table: no parallel join
        assert pipeline.query("SELECT full_name FROM users WHERE id = 7")[0]["full_name"] == "Changed 7"
