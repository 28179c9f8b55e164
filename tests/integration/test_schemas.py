"""Schemas: a contract lands in the schema it names; the pipeline keeps its ledger in a schema of its own;
the function's role of db/roles.sql may write exactly those schemas and nothing else."""

from __future__ import annotations

import os
import tomllib
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from ingest.adapters.postgres import Database
from ingest.contract import ContractRegistry, parse_contract
from ingest.service import ingest_object
from tests.integration.roles import function_role
from tests.integration.test_cli import ingest

USERS = tomllib.loads((Path(__file__).parents[2] / "lambda" / "contracts" / "users.toml").read_text())
DATA = b"id,email,full_name,country\n1,a@example.com,Ann,DE\n2,b@example.com,Bob,FR\n"


def raw_users(**changes) -> dict:
    """The sample users contract, loading raw.users from incoming/raw/."""
    return {**USERS, "schema": "raw", "keys": ["incoming/raw/*.csv"], **changes}


def use(pipeline, *contracts) -> None:
    pipeline.deps.contracts = ContractRegistry(contracts)


@pytest.fixture
def raw_schema(database_url):
    yield
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS raw CASCADE")


def test_a_contract_lands_in_its_schema_and_the_ledger_receipt_and_outputs_name_it(pipeline, raw_schema):
    use(pipeline, parse_contract("raw_users", raw_users()))
    pipeline.upload("incoming/raw/a.csv", DATA)
    receipt = ingest_object(pipeline.bucket, "incoming/raw/a.csv", pipeline.deps)
    assert (receipt.status, receipt.table) == ("loaded", "raw.users")
    assert pipeline.query("SELECT id FROM raw.users ORDER BY id") == [{"id": 1}, {"id": 2}]
    assert pipeline.query("SELECT to_regclass('public.users') AS t") == [{"t": None}]
    ledger = pipeline.query("SELECT table_name, processed_key FROM ingest_ledger.ingest_files")
    assert ledger == [{"table_name": "raw.users", "processed_key": receipt.processed_key}]
    assert receipt.processed_key.startswith("processed/raw.users/")
    # upsert and evolution work on the qualified table: a new column, then the same ids again
    use(pipeline, parse_contract("raw_users", raw_users(columns=[*USERS["columns"], {"name": "phone"}])))
    pipeline.upload("incoming/raw/b.csv", DATA.replace(b"country\n", b"country,phone\n").replace(b"DE\n", b"DE,+1\n"))
    again = ingest_object(pipeline.bucket, "incoming/raw/b.csv", pipeline.deps)
    assert again.status == "loaded", again
    assert pipeline.query("SELECT id, phone FROM raw.users ORDER BY id") == [
        {"id": 1, "phone": "+1"},
        {"id": 2, "phone": None},
    ]


def test_one_table_name_in_two_schemas_two_contracts_and_the_same_content_loads_into_each(pipeline, raw_schema):
    use(pipeline, parse_contract("users", USERS), parse_contract("raw_users", raw_users()))
    pipeline.upload("incoming/users/a.csv", DATA)
    pipeline.upload("incoming/raw/a.csv", DATA)
    assert ingest_object(pipeline.bucket, "incoming/users/a.csv", pipeline.deps).table == "users"
    assert ingest_object(pipeline.bucket, "incoming/raw/a.csv", pipeline.deps).status == "loaded"  # not skipped
    assert pipeline.query("SELECT count(*) AS n FROM public.users")[0]["n"] == 2
    assert pipeline.query("SELECT count(*) AS n FROM raw.users")[0]["n"] == 2


def test_a_ledger_of_todays_layout_in_public_moves_with_its_rows_on_first_start(pipeline):
    with psycopg.connect(pipeline.database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS ingest_ledger CASCADE")
        # the layout of the previous release: both tables in public, made by that release's function
        old = Database(pipeline.database_url, schema="ingest_ledger")
        old.ensure_tables()
        old.dispose()
        conn.execute("ALTER TABLE ingest_ledger.ingest_files SET SCHEMA public")
        conn.execute("ALTER TABLE ingest_ledger.ingest_attempts SET SCHEMA public")
        conn.execute("DROP SCHEMA ingest_ledger")
        conn.execute(
            "INSERT INTO public.ingest_files (md5, bucket, object_key, table_name, status, started_at) "
            "VALUES (%s, %s, 'incoming/users/a.csv', 'users', 'loaded', now())",
            ("0cd6fd5a0d1d1d2b1e0f8b0ad5ee6b0a", pipeline.bucket),
        )
        conn.execute("INSERT INTO public.ingest_attempts (message_id, bucket, object_key) VALUES ('m', 'b', 'k')")
    # the CLI reads it where it is, before the function moved it
    assert "incoming/users/a.csv" in ingest("status", env={**os.environ, "DATABASE_URL": pipeline.database_url}).stdout
    pipeline.upload("incoming/users/b.csv", DATA)
    assert ingest_object(pipeline.bucket, "incoming/users/b.csv", pipeline.deps).status == "loaded"
    rows = pipeline.query("SELECT object_key FROM ingest_ledger.ingest_files ORDER BY id")
    assert [r["object_key"] for r in rows] == ["incoming/users/a.csv", "incoming/users/b.csv"]  # ids go on
    assert pipeline.query("SELECT count(*) AS n FROM ingest_ledger.ingest_attempts")[0]["n"] == 1
    assert pipeline.query(
        "SELECT to_regclass('public.ingest_files') AS f, to_regclass('public.ingest_attempts') AS a"
    ) == [{"f": None, "a": None}]


def test_the_pipelines_schema_is_the_deployments_choice(pipeline, monkeypatch):
    monkeypatch.setenv("INGEST_SCHEMA", "etl_state")
    pipeline.deps.database = Database(pipeline.database_url)
    try:
        pipeline.upload("incoming/users/a.csv", DATA)
        assert ingest_object(pipeline.bucket, "incoming/users/a.csv", pipeline.deps).status == "loaded"
        assert pipeline.query("SELECT status FROM etl_state.ingest_files") == [{"status": "loaded"}]
        status = ingest(
            "status", env={**os.environ, "DATABASE_URL": pipeline.database_url, "INGEST_SCHEMA": "etl_state"}
        )
        assert "incoming/users/a.csv" in status.stdout
    finally:
        pipeline.deps.database.dispose()
        with psycopg.connect(pipeline.database_url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA etl_state CASCADE")


def test_the_function_role_writes_exactly_its_schemas_and_cannot_touch_anything_else(pipeline, database_url):
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("CREATE TABLE public.secrets (id int); INSERT INTO public.secrets VALUES (1)")
    role = f"ingest_fn_{uuid.uuid4().hex[:6]}"
    with function_role(database_url, role, schemas="ingest_ledger,raw") as function_url:
        use(pipeline, parse_contract("raw_users", raw_users()))
        pipeline.deps.database = Database(function_url)
        try:
            pipeline.upload("incoming/raw/a.csv", DATA)
            assert ingest_object(pipeline.bucket, "incoming/raw/a.csv", pipeline.deps).status == "loaded"
        finally:
            pipeline.deps.database.dispose()
        with psycopg.connect(function_url, autocommit=True) as fn:
            assert fn.execute("SELECT count(*) FROM raw.users").fetchone() == (2,)
            if fn.info.server_version >= 150000:  # a load behind an autovacuum cancels it sooner (DEADLOCK_TIMEOUT)
                fn.execute("SET deadlock_timeout = '100ms'")
            for statement in (
                "CREATE TABLE public.mine (id int)",
                "SELECT * FROM public.secrets",
                "INSERT INTO public.secrets VALUES (2)",
                "DROP TABLE public.secrets",
                "CREATE SCHEMA elsewhere",
            ):
                with pytest.raises(errors.InsufficientPrivilege):
                    fn.execute(statement)
        # a contract whose schema the role was not given: failed, naming what to run
        use(pipeline, parse_contract("users", {**USERS, "schema": "analytics"}))
        pipeline.deps.database = Database(function_url)
        try:
            pipeline.upload("incoming/users/c.csv", DATA)
            with pytest.raises(Exception, match=r"schema 'analytics'.*does not exist.*db/roles\.sql with schemas="):
                ingest_object(pipeline.bucket, "incoming/users/c.csv", pipeline.deps)
        finally:
            pipeline.deps.database.dispose()
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute("DROP TABLE public.secrets")


def test_contract_new_takes_a_schema(tmp_path):
    sample = tmp_path / "orders.csv"
    sample.write_text("id,amount\n1,2.50\n2,3.00\n")
    drafted = ingest("contract", "new", str(sample), "--name", "orders", "--schema", "raw")
    assert drafted.returncode == 0, drafted.stderr
    contract = parse_contract("orders", tomllib.loads(drafted.stdout))
    assert (contract.schema, contract.table, contract.target) == ("raw", "orders", "raw.orders")
    refused = ingest("contract", "new", str(sample), "--name", "orders", "--schema", "ingest_ledger")
    assert refused.returncode == 2 and "--schema: schema 'ingest_ledger' is the pipeline's own" in refused.stderr
