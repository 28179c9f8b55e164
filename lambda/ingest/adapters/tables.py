"""The pipeline's tables as SQLAlchemy describes them: the ledger and the attempts (in the pipeline's own
schema), a contract's target table and its staging tables; and how statements name them. No connection
here: the PostgreSQL adapter and contract evolution both build on these descriptions."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from ..contract import ATTEMPTS_TABLE, DEFAULT_SCHEMA, LEDGER_TABLE, PIPELINE_SCHEMA, Contract

STATUSES = ("loaded", "rejected", "skipped", "failed")

metadata = sa.MetaData()

ledger = sa.Table(
    LEDGER_TABLE,
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("md5", sa.String(32), nullable=False),
    sa.Column("bucket", sa.Text, nullable=False),
    sa.Column("object_key", sa.Text, nullable=False),
    sa.Column("contract", sa.Text),
    sa.Column("contract_sha256", sa.String(64)),
    sa.Column("table_name", sa.Text),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("rows_total", sa.BigInteger),
    sa.Column("rows_valid", sa.BigInteger),
    sa.Column("rows_rejected", sa.BigInteger),
    sa.Column("rows_loaded", sa.BigInteger),
    sa.Column("size_bytes", sa.BigInteger),
    sa.Column("encoding", sa.Text),
    sa.Column("delimiter", sa.Text),
    sa.Column("compression", sa.Text),
    sa.Column("processed_key", sa.Text),
    sa.Column("errors_key", sa.Text),
    sa.Column("request_id", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("duration_ms", sa.Integer),
    sa.Column("schema_changes", sa.Text),  # the additive DDL a load applied to its table (contract evolution)
    sa.Column("lag_ms", sa.BigInteger),  # a load's: from the S3 event's time (the upload) to its commit
    sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="ingest_files_status_check"),
    sa.Index(
        "ingest_files_loaded_table_md5", "table_name", "md5", unique=True, postgresql_where=sa.text("status = 'loaded'")
    ),
    sa.Index("ingest_files_md5", "md5"),
    sa.Index("ingest_files_finished_at", "finished_at"),
    schema=PIPELINE_SCHEMA,  # the deployment's own (INGEST_SCHEMA), by the engine's schema_translate_map
)

#: One row per delivery of an object by the queue (an SQS message's receive), written as it begins and closed as
#: it answers: one still open when the message comes back never answered (its runtime was killed: out of
#: memory, the hard timeout, a crash). Bookkeeping, not a promise: it commits without waiting for the disk.
attempts = sa.Table(
    ATTEMPTS_TABLE,
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("message_id", sa.Text, nullable=False),
    sa.Column("receive_count", sa.Integer),
    sa.Column("bucket", sa.Text, nullable=False),
    sa.Column("object_key", sa.Text, nullable=False),
    sa.Column("request_id", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("progress_at", sa.DateTime(timezone=True)),  # its last heartbeat: rows and bytes read by then
    sa.Column("rows_read", sa.BigInteger),
    sa.Column("bytes_read", sa.BigInteger),
    sa.Column("size_bytes", sa.BigInteger),
    sa.Column("finished_at", sa.DateTime(timezone=True)),  # NULL: it has not answered (yet)
    sa.Column("outcome", sa.Text),  # the receipt's status; "died" once a later delivery found it unanswered
    sa.Index("ingest_attempts_message", "message_id", "bucket", "object_key"),
    schema=PIPELINE_SCHEMA,
)

_COLUMN_TYPES: dict[str, Any] = {
    "text": sa.Text,
    "integer": sa.Integer,
    "bigint": sa.BigInteger,
    "double": sa.Double,
    "boolean": sa.Boolean,
    "date": sa.Date,
    "timestamp": lambda: sa.DateTime(timezone=False),
    "timestamptz": lambda: sa.DateTime(timezone=True),
}


def sql_identifier(name: str) -> str:
    """A quoted identifier for the few statements SQLAlchemy has no construct for (LOCK TABLE, MERGE)."""
    return '"' + name.replace('"', '""') + '"'


def quoted(table: sa.Table) -> str:
    """A table's name as a statement writes it: schema-qualified (but a temporary table's), quoted."""
    name = sql_identifier(table.name)
    return f"{sql_identifier(table.schema)}.{name}" if table.schema else name


def target_schema(contract: Contract) -> str | None:
    """The schema statements name a contract's table in: None for the default one, which stays unqualified as
    before contracts named schemas (the role's search_path finds it)."""
    return None if contract.schema == DEFAULT_SCHEMA else contract.schema


def quoted_target(contract: Contract) -> str:
    """A contract's table as a statement writes it (see quoted), without describing the whole table."""
    schema, name = target_schema(contract), sql_identifier(contract.table)
    return f"{sql_identifier(schema)}.{name}" if schema else name


def column_type(col: Any) -> Any:
    if col.type == "numeric":
        return sa.Numeric(col.precision, col.scale) if col.precision else sa.Numeric()
    return _COLUMN_TYPES[col.type]()


def target_table(contract: Contract, meta: sa.MetaData | None = None) -> sa.Table:
    """The table a contract loads: its columns, keys, and two lineage columns."""
    meta = meta if meta is not None else sa.MetaData()
    columns: list[Any] = [
        sa.Column(
            c.name,
            column_type(c),
            primary_key=c.primary_key,
            autoincrement=False,  # a contract's key comes from the file, never from a sequence
            nullable=not c.required,
            unique=c.unique,
            comment=c.description or None,
        )
        for c in contract.columns
    ]
    if contract.load_mode == "upsert" and not contract.primary_key:
        columns.append(sa.UniqueConstraint(*contract.upsert_key, name=f"{contract.table}_upsert_key"))
    columns += [
        sa.Column(
            "_ingest_md5",
            sa.String(32),
            server_default=sa.text("current_setting('ingest.md5', true)"),
            comment="MD5 of the file that last wrote this row (NULL: not written by the pipeline)",
        ),
        sa.Column("_ingest_loaded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    ]
    return sa.Table(
        contract.table, meta, *columns, schema=target_schema(contract), comment=contract.description or None
    )


def staging_table(contract: Contract, backend_pid: int | None = None, schema: str = PIPELINE_SCHEMA) -> sa.Table:
    """A copy of the target's columns without constraints: temporary, dropped at commit; or, with the
    session's ``backend_pid`` (unique among the sessions of the moment), a plain table without WAL
    (UNLOGGED) named after it, made and dropped inside one transaction, so that no other session ever sees
    it and a rollback or a crash leaves nothing behind, in the pipeline's ``schema``. Unlike a temporary
    table, parallel workers can scan it."""
    columns = (sa.Column(c.name, column_type(c)) for c in contract.columns)
    if backend_pid is not None:
        return sa.Table(f"_ingest_stage_{backend_pid}", sa.MetaData(), *columns, schema=schema, prefixes=["UNLOGGED"])
    return sa.Table(
        f"_ingest_stage_{contract.table}",
        sa.MetaData(),
        *columns,
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )


def ledger_ddl() -> str:
    """The ledger's DDL as PostgreSQL runs it; ``db/ledger.sql`` is this text (a test keeps them equal)."""
    from sqlalchemy.schema import CreateIndex, CreateTable

    dialect = pg.dialect()  # type: ignore[no-untyped-call]
    parts = []
    for table in (ledger, attempts):
        parts.append(str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)).strip() + ";")
        parts += [
            str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)).strip() + ";"
            for index in sorted(table.indexes, key=lambda i: str(i.name))
        ]
    return "\n\n".join(parts) + "\n"
