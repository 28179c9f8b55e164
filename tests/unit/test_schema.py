from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.schema import CreateTable

from ingest.adapters.tables import ledger_ddl, target_table

REPO = Path(__file__).resolve().parents[2]


def test_db_ledger_sql_is_generated_from_the_sqlalchemy_description():
    assert (REPO / "db" / "ledger.sql").read_text().endswith(ledger_ddl()), "run: make schema"


def test_contract_tables_quote_nothing_and_keep_their_types(users, measurements):
    ddl = str(CreateTable(target_table(users)).compile(dialect=pg.dialect()))
    assert "id INTEGER NOT NULL" in ddl and "balance NUMERIC(12, 2)" in ddl and "signup_date DATE" in ddl
    assert "PRIMARY KEY (id)" in ddl and "_ingest_md5 VARCHAR(32) DEFAULT current_setting('ingest.md5', true)" in ddl
    ddl = str(CreateTable(target_table(measurements)).compile(dialect=pg.dialect()))
    assert "measured_at TIMESTAMP WITH TIME ZONE NOT NULL" in ddl and "temperature_c DOUBLE PRECISION" in ddl
    assert isinstance(target_table(users).c.is_active.type, sa.Boolean)
