"""Contracts evolve: on a real PostgreSQL, each kind of difference between a contract and its live table,
the automatic path for additive ones and the refusal (with the DDL) for breaking ones, a race of two loads
adding the same column, and the function's least-privilege role doing it on its own tables only."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from ingest.adapters.evolution import BREAKING, compare
from ingest.adapters.postgres import Database
from ingest.adapters.tables import ledger, target_table
from ingest.contract import ContractRegistry
from ingest.service import ingest_object
from tests.integration.roles import function_role

BASE = """
table = "things"
keys = ["incoming/things/*.csv"]
load = {{ mode = "{mode}"{key} }}
{columns}
"""

ID = '[[columns]]\nname = "id"\ntype = "{id_type}"\n{pk}'
LABEL = '[[columns]]\nname = "label"\ntype = "text"\nrequired = {label_required}'
AMOUNT = '[[columns]]\nname = "amount"\ntype = "numeric"\nprecision = {precision}\nscale = 2'


def contract_text(
    *extra: str,
    id_type: str = "integer",
    pk: bool = True,
    label_required: bool = True,
    precision: int = 10,
    mode: str = "append",
    key: str = "",
    without: tuple[str, ...] = (),
) -> str:
    columns = {
        "id": ID.format(id_type=id_type, pk="primary_key = true" if pk else ""),
        "label": LABEL.format(label_required=str(label_required).lower()),
        "amount": AMOUNT.format(precision=precision),
    }
    parts = [text for name, text in columns.items() if name not in without] + list(extra)
    return BASE.format(mode=mode, key=f", key = {key}" if key else "", columns="\n\n".join(parts))


def use(pipeline, tmp_path: Path, text: str) -> None:
    folder = tmp_path / f"contracts_{abs(hash(text))}"
    folder.mkdir(exist_ok=True)
    (folder / "things.toml").write_text(text)
    pipeline.deps.contracts = ContractRegistry.from_directory(folder)


def load(pipeline, name: str, body: str):
    key = f"incoming/things/{name}.csv"
    pipeline.upload(key, body.encode())
    try:
        return ingest_object(pipeline.bucket, key, pipeline.deps)
    except Exception:
        return pipeline.receipts()[-1]


def status(receipt) -> tuple[str, str | None]:
    if isinstance(receipt, dict):
        return receipt["status"], receipt["reason"]
    return receipt.status, receipt.reason


def test_a_new_column_is_added_nullable_on_load_recorded_and_required_for_new_rows(pipeline, tmp_path):
    use(pipeline, tmp_path, contract_text())
    assert load(pipeline, "v1", "id,label,amount\n1,one,1.50\n").status == "loaded"
    use(pipeline, tmp_path, contract_text('[[columns]]\nname = "phone"\ntype = "text"\nrequired = true'))
    receipt = load(pipeline, "v2", "id,label,amount,phone\n2,two,2.50,+44 20 7946 0000\n")
    assert receipt.status == "loaded"
    [change] = receipt.schema_changes
    assert change.startswith("ALTER TABLE things ADD COLUMN phone TEXT; COMMENT ON COLUMN things.phone IS '[added")
    rows = pipeline.query("SELECT id, phone FROM things ORDER BY id")
    assert rows == [{"id": 1, "phone": None}, {"id": 2, "phone": "+44 20 7946 0000"}]
    ledger = pipeline.query(
        "SELECT schema_changes FROM ingest_ledger.ingest_files WHERE object_key = 'incoming/things/v2.csv'"
    )
    assert ledger == [{"schema_changes": change}]
    # required applies to the rows of new files; the older rows' NULLs are no difference
    assert compare_now(pipeline).differences == ()
    bad = load(pipeline, "v3", "id,label,amount,phone\n3,three,3.50,\n")
    assert bad.status == "rejected" and bad.rows_rejected == 1
    # a new runtime (nothing cached) finds nothing to change either
    pipeline.deps.database = Database(pipeline.database_url)
    assert load(pipeline, "v4", "id,label,amount,phone\n4,four,4.50,x\n").schema_changes == []


def compare_now(pipeline):
    contract = pipeline.deps.contracts.contracts["things"]
    with pipeline.deps.database.engine.connect() as conn:
        return compare(conn, contract)


@pytest.mark.parametrize(
    ("before", "after", "ddl"),
    [
        ({"id_type": "integer"}, {"id_type": "bigint"}, "ALTER TABLE things ALTER COLUMN id TYPE BIGINT;"),
        ({"precision": 10}, {"precision": 14}, "ALTER TABLE things ALTER COLUMN amount TYPE NUMERIC(14, 2);"),
    ],
    ids=["integer-to-bigint", "numeric-more-digits"],
)
def test_a_widened_type_is_applied_and_keeps_every_value(pipeline, tmp_path, before, after, ddl):
    use(pipeline, tmp_path, contract_text(**before))
    assert load(pipeline, "v1", "id,label,amount\n2147483647,max,12345678.99\n").status == "loaded"
    use(pipeline, tmp_path, contract_text(**after))
    receipt = load(pipeline, "v2", "id,label,amount\n7,seven,0.01\n")
    assert receipt.status == "loaded" and receipt.schema_changes == [ddl]
    rows = pipeline.query("SELECT id, amount::text AS amount FROM things ORDER BY id")
    assert rows == [{"id": 7, "amount": "0.01"}, {"id": 2147483647, "amount": "12345678.99"}]


BREAKING_CASES = {
    "narrowed-numeric": (
        {"precision": 12},
        {"precision": 8},
        "column amount: numeric(12, 2) in the table, numeric(8, 2) in the contract",
        "ALTER TABLE things ALTER COLUMN amount TYPE NUMERIC(8, 2) USING amount::NUMERIC(8, 2);",
    ),
    "text-to-integer": (
        {},
        {"extra_label": True},
        "column label: text in the table, integer in the contract",
        "ALTER TABLE things ALTER COLUMN label TYPE INTEGER USING label::INTEGER;",
    ),
    "primary-key-changed": (
        {},
        {"pk": False},
        "primary key: (id) in the table, (none) in the contract",
        "ALTER TABLE things DROP CONSTRAINT things_pkey;",
    ),
    "not-null-dropped": (
        {},
        {"label_required": False},
        "column label: the contract allows NULL (the table is NOT NULL)",
        "ALTER TABLE things ALTER COLUMN label DROP NOT NULL;",
    ),
    "not-null-added": (
        {"label_required": False},
        {"label_required": True},
        "column label: the contract requires a value; the table allows NULL",
        "ALTER TABLE things ALTER COLUMN label SET NOT NULL;",
    ),
    "upsert-needs-a-key": (
        {"pk": False},
        {"pk": False, "mode": "upsert", "key": '["id"]'},
        "unique key (id): asked for by the contract, absent from the table",
        "ALTER TABLE things ADD CONSTRAINT things_upsert_key UNIQUE (id);",
    ),
    "not-null-column-dropped": (
        {},
        {"without": ("label",)},
        "column label: NOT NULL in the table but no longer in the contract",
        "ALTER TABLE things ALTER COLUMN label DROP NOT NULL;",
    ),
}


def _variant(options: dict) -> str:
    options = dict(options)
    if options.pop("extra_label", False):
        text = contract_text(**options).replace('name = "label"\ntype = "text"', 'name = "label"\ntype = "integer"')
        return text
    return contract_text(**options)


@pytest.mark.parametrize(("before", "after", "what", "ddl"), BREAKING_CASES.values(), ids=BREAKING_CASES.keys())
def test_a_breaking_difference_fails_the_file_with_the_ddl_and_a_replay_loads_it_after_the_fix(
    pipeline, tmp_path, before, after, what, ddl
):
    use(pipeline, tmp_path, _variant(before))
    assert load(pipeline, "v1", "id,label,amount\n1,1,1.00\n").status == "loaded"
    use(pipeline, tmp_path, _variant(after))
    header = "id,amount" if "label" in after.get("without", ()) else "id,label,amount"
    row = "2,2.00" if "label" in after.get("without", ()) else "2,2,2.00"
    receipt = load(pipeline, "v2", f"{header}\n{row}\n")
    assert status(receipt) == ("failed", "contract_table_mismatch")
    message = receipt["message"]
    assert what in message and ddl in message and "ingest replay s3://" in message
    assert pipeline.query("SELECT count(*) AS n FROM things")[0]["n"] == 1  # nothing of the file
    assert "incoming/things/v2.csv" in pipeline.keys("incoming/")  # the object is kept
    plan = compare_now(pipeline)
    assert {d.kind for d in plan.differences} == {BREAKING}
    # the user runs the DDL the message gave (and any it listed), then replays: loaded once
    with psycopg.connect(pipeline.database_url, autocommit=True) as admin:
        for line in message.splitlines():
            if line.startswith("    "):
                admin.execute(line.strip())
    again = ingest_object(pipeline.bucket, "incoming/things/v2.csv", pipeline.deps)
    assert again.status == "loaded" and again.rows_loaded == 1
    assert compare_now(pipeline).differences == ()


def test_on_an_empty_table_any_difference_is_applied(pipeline, tmp_path):
    use(pipeline, tmp_path, contract_text(precision=12, label_required=False))
    with pipeline.deps.database.engine.begin() as conn:
        target_table(pipeline.deps.contracts.contracts["things"]).create(conn)
    use(pipeline, tmp_path, contract_text(precision=8, label_required=True))
    receipt = load(pipeline, "v1", "id,label,amount\n1,one,1.00\n")
    assert receipt.status == "loaded" and len(receipt.schema_changes) == 2


def test_a_dropped_nullable_column_stays_and_later_rows_leave_it_null(pipeline, tmp_path):
    use(pipeline, tmp_path, contract_text())
    assert load(pipeline, "v1", "id,label,amount\n1,one,1.00\n").status == "loaded"
    use(pipeline, tmp_path, contract_text(without=("amount",)))
    receipt = load(pipeline, "v2", "id,label\n2,two\n")
    assert receipt.status == "loaded" and receipt.schema_changes == []
    rows = pipeline.query("SELECT id, amount::text AS amount FROM things ORDER BY id")
    assert rows == [{"id": 1, "amount": "1.00"}, {"id": 2, "amount": None}]


def test_two_loads_adding_the_same_column_at_once_one_adds_it_both_load(pipeline, tmp_path):
    use(pipeline, tmp_path, contract_text())
    assert load(pipeline, "v1", "id,label,amount\n1,one,1.00\n").status == "loaded"
    use(pipeline, tmp_path, contract_text('[[columns]]\nname = "phone"\ntype = "text"'))
    # Each load has its own runtime (database pool); a lock the test holds makes both wait at the same
    # point, so they race for the change however fast the machine is.
    databases = [Database(pipeline.database_url) for _ in range(2)]
    results: dict[int, object] = {}
    with psycopg.connect(pipeline.database_url) as holder:
        holder.execute("LOCK TABLE things IN SHARE MODE")

        def run(i: int) -> None:
            deps = type(pipeline.deps)(**{**pipeline.deps.__dict__, "database": databases[i]})
            key = f"incoming/things/race_{i}.csv"
            results[i] = ingest_object(pipeline.bucket, key, deps)

        for i in range(2):
            pipeline.upload(f"incoming/things/race_{i}.csv", f"id,label,amount,phone\n{10 + i},r,1.00,p{i}\n".encode())
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        _wait_for_lock_waiters(pipeline.database_url, 2)
        holder.rollback()
    for t in threads:
        t.join(60)
    receipts = [results[0], results[1]]
    assert [r.status for r in receipts] == ["loaded", "loaded"]  # type: ignore[attr-defined]
    changes = sorted(len(r.schema_changes) for r in receipts)  # type: ignore[attr-defined]
    assert changes == [0, 1]  # one added it; the other found it there once it had the lock
    assert pipeline.query("SELECT phone FROM things WHERE id >= 10 ORDER BY id") == [{"phone": "p0"}, {"phone": "p1"}]
    for database in databases:
        database.dispose()


def _wait_for_lock_waiters(url: str, count: int, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE NOT l.granted AND l.relation = 'things'::regclass AND a.application_name = 'ingest'"
            ).fetchone()[0]  # type: ignore[index]
        if waiting >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} loads waited for the lock")


def test_the_least_privilege_role_evolves_its_own_tables_and_nothing_else(pipeline, database_url, tmp_path):
    with function_role(database_url, "ingest_fn_evolve") as function_url:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("CREATE TABLE payroll (id int primary key, salary int)")
        pipeline.deps.database = Database(function_url)
        use(pipeline, tmp_path, contract_text())
        assert load(pipeline, "v1", "id,label,amount\n1,one,1.00\n").status == "loaded"
        use(pipeline, tmp_path, contract_text('[[columns]]\nname = "phone"\ntype = "text"', id_type="bigint"))
        receipt = load(pipeline, "v2", "id,label,amount,phone\n2,two,2.00,x\n")
        assert receipt.status == "loaded" and len(receipt.schema_changes) == 2
        pipeline.deps.database.dispose()
        with (
            psycopg.connect(function_url, autocommit=True) as fn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            fn.execute("ALTER TABLE payroll ADD COLUMN phone text")


def test_contract_diff_and_migrate_show_classify_and_apply_only_the_additive_ddl(pipeline, tmp_path):
    import os

    from tests.integration.test_cli import ingest

    use(pipeline, tmp_path, contract_text())
    assert load(pipeline, "v1", "id,label,amount\n1,one,1.00\n").status == "loaded"
    folder = tmp_path / "edited"
    folder.mkdir()
    (folder / "things.toml").write_text(
        contract_text('[[columns]]\nname = "phone"\ntype = "text"', id_type="bigint", precision=8)
    )
    env = {**os.environ, "DATABASE_URL": pipeline.database_url, "INGEST_CONTRACTS_DIR": str(folder)}
    diff = ingest("contract", "diff", "things", env=env)
    assert diff.returncode == 1, diff.stderr  # something breaking
    assert "additive: column phone: new in the contract" in diff.stdout
    assert "additive: column id: integer in the table, bigint in the contract" in diff.stdout
    assert "breaking: column amount: numeric(10, 2) in the table, numeric(8, 2)" in diff.stdout
    dry = ingest("contract", "migrate", "things", env=env)
    assert dry.returncode == 1 and "ALTER TABLE things ALTER COLUMN id TYPE BIGINT;" in dry.stdout
    assert "-- not applied (breaking)" in dry.stdout and "not applied: add --apply" in dry.stderr
    assert compare_now(pipeline).differences == ()  # the pipeline's contract: nothing was applied
    applied = ingest("contract", "migrate", "things", "--apply", env=env)
    assert applied.returncode == 1 and "applied to things: 2 change(s)" in applied.stderr
    after = ingest("contract", "diff", "things", "--json", env=env)
    import json

    [plan] = json.loads(after.stdout)["plans"]
    assert [d["kind"] for d in plan["differences"]] == ["breaking"]
    (folder / "things.toml").write_text(contract_text('[[columns]]\nname = "phone"\ntype = "text"', id_type="bigint"))
    clean = ingest("contract", "diff", env=env)
    assert clean.returncode == 0 and "matches" in clean.stdout


def test_a_table_the_function_does_not_own_gets_the_additive_ddl_to_run_by_hand(pipeline, database_url, tmp_path):
    use(pipeline, tmp_path, contract_text())
    with function_role(database_url, "ingest_fn_notowner") as function_url:
        with pipeline.deps.database.engine.begin() as conn:  # made by the admin, granted as roles.sql says
            target_table(pipeline.deps.contracts.contracts["things"]).create(conn)
            ledger.create(conn)
            conn.execute(
                sa.text(
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON things, ingest_ledger.ingest_files TO ingest_fn_notowner"
                )
            )
            conn.execute(sa.text("INSERT INTO things VALUES (1, 'one', 1.00)"))
        pipeline.deps.database = Database(function_url)
        use(pipeline, tmp_path, contract_text('[[columns]]\nname = "phone"\ntype = "text"'))
        receipt = load(pipeline, "v2", "id,label,amount,phone\n2,two,2.00,x\n")
        assert status(receipt) == ("failed", "contract_table_mismatch")
        assert "does not own table things" in receipt["message"]
        assert "ALTER TABLE things ADD COLUMN phone TEXT;" in receipt["message"]
        pipeline.deps.database.dispose()


def test_a_table_the_function_makes_from_its_contract_is_not_compared_with_it(pipeline, monkeypatch):
    """The first load makes the table from the contract, so comparing the two (reflection, ~50 ms) can only
    find them alike: it is skipped. A table found already there is compared, as before."""
    from ingest.adapters import evolution

    compared = []
    real_compare = evolution.compare
    monkeypatch.setattr(
        evolution, "compare", lambda conn, contract: compared.append(contract.table) or real_compare(conn, contract)
    )
    pipeline.upload("incoming/users.csv", b"id,email,full_name\n1,a@b.co,A\n")
    assert ingest_object(pipeline.bucket, "incoming/users.csv", pipeline.deps).status == "loaded"
    assert compared == []
    fresh = Database(pipeline.database_url)  # another runtime: the table is there, not made by it
    try:
        pipeline.deps.database, before = fresh, pipeline.deps.database
        pipeline.upload("incoming/users_2.csv", b"id,email,full_name\n2,c@d.ef,B\n")
        assert ingest_object(pipeline.bucket, "incoming/users_2.csv", pipeline.deps).status == "loaded"
        assert compared == ["users"]
    finally:
        pipeline.deps.database = before
        fresh.dispose()
