"""Contract evolution: how a contract and its live table differ, which differences are safe to apply, and
the DDL for each.

Alembic does the comparison (``autogenerate.compare_metadata`` of the contract's table, as the loader
would create it, with the reflected table) and renders and runs the DDL (``Operations``, offline for the
text, on the load's connection to apply it). This module only classifies:

- *additive*, applied by the function inside the load's transaction: a new column (always added
  nullable: ``required`` applies to the rows of new files; its comment says so), a widened type
  (smallint → integer → bigint, an integer into a numeric wide enough, a numeric with more digits), and
  on an empty table any change at all;
- *breaking*, never applied by the function: a type change that could fail or lose data, a changed
  primary key, a ``NOT NULL`` the contract adds or drops on a table with rows, a unique key the contract
  adds on a table with rows, which includes a load mode that needs a key the table does not have, and a
  ``NOT NULL`` column the contract no longer has.

A column the contract drops stays in the table and is left NULL by later loads; keys and indexes the
table has beyond the contract's are left alone.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.dialects import postgresql

from ..contract import Contract
from .tables import quoted_target, target_table

ADDITIVE = "additive"
BREAKING = "breaking"
#: The comment a column added by evolution carries: its NULLs in older rows are expected.
ADDED_MARK = "[added by ingest contract evolution: NULL in rows loaded before]"
_LINEAGE = ("_ingest_md5", "_ingest_loaded_at")
_INTEGER_DIGITS = {"SMALLINT": 5, "INTEGER": 10, "BIGINT": 19}
_DIALECT = postgresql.dialect()


@dataclass(frozen=True)
class Difference:
    kind: str  # ADDITIVE or BREAKING
    what: str  # for people: "column phone: new (added nullable)"
    ddl: str  # the statement that resolves it
    apply: Callable[[Operations], None] = lambda op: None


@dataclass(frozen=True)
class Plan:
    """The differences between a contract and its live table (none: the table matches, or is absent)."""

    contract: str
    table: str
    differences: tuple[Difference, ...] = ()

    @property
    def additive(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.kind == ADDITIVE)

    @property
    def breaking(self) -> tuple[Difference, ...]:
        return tuple(d for d in self.differences if d.kind == BREAKING)

    def describe(self, differences: tuple[Difference, ...] | None = None) -> str:
        return "\n".join(f"- {d.kind}: {d.what}\n    {d.ddl}" for d in (differences or self.differences))

    def mismatch_message(self, not_allowed: str | None = None) -> str:
        if not_allowed:  # additive changes the function's role may not make
            what = f"these additive changes could not be applied ({not_allowed}):\n{self.describe(self.additive)}"
        else:
            what = f"the function applies only additive changes, and these are not:\n{self.describe(self.breaking)}"
        return (
            f"table {self.table} does not match contract {self.contract}; {what}\n"
            "Run the DDL (or change the contract back), then replay the file"
        )

    def apply(self, conn: sa.Connection, differences: tuple[Difference, ...] | None = None) -> list[str]:
        """Run the additive differences (or those given) on ``conn``, in its transaction; their DDL."""
        chosen = self.additive if differences is None else differences
        op = Operations(MigrationContext.configure(connection=conn))
        for difference in chosen:
            difference.apply(op)
        return [d.ddl for d in chosen]


class ContractTableMismatch(Exception):
    """The live table differs from its contract in a way the function must not resolve by itself."""

    def __init__(self, plan: Plan, not_allowed: str | None = None):
        super().__init__(plan.mismatch_message(not_allowed))
        self.plan = plan


def compare_locked(conn: sa.Connection, contract: Contract) -> Plan:
    """``compare`` under ACCESS EXCLUSIVE on the table, taken first in ``conn``'s transaction: what is found
    is what stays until that transaction ends, so the additive DDL can be applied safely, once."""
    conn.execute(sa.text(f"LOCK TABLE {quoted_target(contract)} IN ACCESS EXCLUSIVE MODE"))
    return compare(conn, contract)


def compare(conn: sa.Connection, contract: Contract) -> Plan:
    """The differences between ``contract`` and its table as it is now (an absent table has none)."""
    inspector = sa.inspect(conn)
    metadata = sa.MetaData()
    wanted = target_table(contract, metadata)
    table, schema = contract.table, wanted.schema  # schema None: the default one, unqualified
    if not inspector.has_table(table, schema=schema):
        return Plan(contract.name, contract.target)
    has_rows = bool(conn.execute(sa.select(sa.exists().select_from(sa.table(table, schema=schema)))).scalar())

    def include(name: str | None, kind: str, _parent: Any) -> bool:
        return name == schema if kind == "schema" else kind != "table" or name == table

    context = MigrationContext.configure(
        connection=conn, opts={"compare_type": True, "include_schemas": schema is not None, "include_name": include}
    )
    live_columns = {c["name"]: c for c in inspector.get_columns(table, schema=schema)}
    differences: list[Difference] = []
    for diff in compare_metadata(context, metadata):
        for item in diff if isinstance(diff, list) else [diff]:
            found = _classify(item, _Target(table, schema), wanted, has_rows, live_columns)
            if found:
                differences.append(found)
    live_pk = inspector.get_pk_constraint(table, schema=schema)
    wanted_pk = [c.name for c in wanted.primary_key.columns]
    if list(live_pk.get("constrained_columns") or []) != wanted_pk:  # first: its columns' NOT NULL depends on it
        differences.insert(0, _primary_key(_Target(table, schema), live_pk, wanted_pk, has_rows))
    return Plan(contract.name, contract.target, tuple(differences))


@dataclass(frozen=True)
class _Target:
    """The table the operations change: its name, and its schema (None: the default one)."""

    table: str
    schema: str | None


def _classify(item: Any, to: _Target, wanted: sa.Table, has_rows: bool, live: Mapping[str, Any]) -> Difference | None:
    table, schema = to.table, to.schema
    kind = item[0]
    safe_if_empty = ADDITIVE if not has_rows else BREAKING
    if kind == "add_column":
        column: sa.Column[Any] = item[3]
        comment = _added_comment(column.comment)
        return _difference(
            ADDITIVE,
            f"column {column.name}: new in the contract (added nullable)",
            lambda op: op.add_column(
                table, sa.Column(column.name, column.type, nullable=True, comment=comment), schema=schema
            ),
        )
    if kind == "remove_column":
        column = item[3]
        if column.nullable or column.name in _LINEAGE:
            return None  # stays in the table, NULL in later rows
        return _difference(
            safe_if_empty,
            f"column {column.name}: NOT NULL in the table but no longer in the contract (later rows would fail)",
            lambda op: op.alter_column(table, column.name, nullable=True, existing_type=column.type, schema=schema),
        )
    if kind == "modify_type":
        name, existing, new = item[3], item[5], item[6]
        widened = _widens(existing, new)
        using = None if widened else f"{_quoted(name)}::{new.compile(dialect=_DIALECT)}"
        return _difference(
            ADDITIVE if widened or not has_rows else BREAKING,
            f"column {name}: {_type(existing)} in the table, {_type(new)} in the contract"
            + ("" if widened else " (not a widening: it could fail, lose data or change how values compare)"),
            lambda op: op.alter_column(
                table, name, type_=new, existing_type=existing, postgresql_using=using, schema=schema
            ),
        )
    if kind == "modify_nullable":
        name, options, was_nullable, nullable = item[3], item[4], item[5], item[6]
        if not nullable and was_nullable and ADDED_MARK in (live.get(name, {}).get("comment") or ""):
            return None  # added by evolution: required applies to the rows of new files
        what = "the contract requires a value; the table allows NULL" if not nullable else "the contract allows NULL"
        return _difference(
            safe_if_empty,
            f"column {name}: {what}" + (" (the table is NOT NULL)" if nullable else ""),
            lambda op: op.alter_column(
                table, name, nullable=nullable, existing_type=options.get("existing_type"), schema=schema
            ),
        )
    if kind in ("add_constraint", "add_index") and _unique_columns(item[1]):
        columns = _unique_columns(item[1])
        name = item[1].name or f"{table}_{'_'.join(columns)}_key"
        return _difference(
            safe_if_empty,
            f"unique key ({', '.join(columns)}): asked for by the contract, absent from the table",
            lambda op: op.create_unique_constraint(name, table, columns, schema=schema),
        )
    # Keys and indexes the table has beyond the contract's are someone's deliberate addition: left alone
    # (like comments and server defaults).
    return None


def _primary_key(to: _Target, live: Mapping[str, Any], wanted: list[str], has_rows: bool) -> Difference:
    table, schema = to.table, to.schema
    name = live.get("name")
    before = live.get("constrained_columns") or []

    def apply(op: Operations) -> None:
        if name:
            op.drop_constraint(name, table, type_="primary", schema=schema)
        if wanted:
            op.create_primary_key(f"{table}_pkey", table, wanted, schema=schema)

    return _difference(
        ADDITIVE if not has_rows else BREAKING,
        f"primary key: ({', '.join(before) or 'none'}) in the table, ({', '.join(wanted) or 'none'}) in the contract",
        apply,
    )


def _difference(kind: str, what: str, apply: Callable[[Operations], None]) -> Difference:
    return Difference(kind, what, render(apply), apply)


def render(apply: Callable[[Operations], None]) -> str:
    """The DDL an operation would run, as text (Alembic's offline mode)."""
    buffer = io.StringIO()
    context = MigrationContext.configure(dialect_name="postgresql", opts={"as_sql": True, "output_buffer": buffer})
    apply(Operations(context))
    return " ".join(line.strip() for line in buffer.getvalue().splitlines() if line.strip())


def _added_comment(description: str | None) -> str:
    return f"{description} {ADDED_MARK}" if description else ADDED_MARK


def _quoted(name: str) -> str:
    return _DIALECT.identifier_preparer.quote(name)


def _type(t: Any) -> str:
    return str(t.compile(dialect=_DIALECT)).lower()


def _unique_columns(obj: Any) -> list[str]:
    if isinstance(obj, sa.UniqueConstraint) or (isinstance(obj, sa.Index) and obj.unique):
        return [c.name for c in obj.columns]
    return []


def _digits(t: Any) -> tuple[int | None, int] | None:
    """(integer digits, scale) a numeric type holds; None for unbounded numeric; absent for others."""
    name = _type(t).split("(")[0].upper()
    if name in _INTEGER_DIGITS:
        return _INTEGER_DIGITS[name], 0
    if isinstance(t, sa.Numeric) and not isinstance(t, sa.Float):
        if t.precision is None:
            return None, 0
        scale = t.scale or 0
        return t.precision - scale, scale
    raise ValueError


def _widens(existing: Any, new: Any) -> bool:
    """True when every value of ``existing`` fits ``new`` exactly."""
    try:
        before, after = _digits(existing), _digits(new)
    except ValueError:
        old_name, new_name = _type(existing), _type(new)
        return (old_name, new_name) == ("real", "double precision")
    if after is None:  # unbounded numeric holds every integer and numeric exactly
        return True
    if before is None:
        return False
    new_is_integer = _type(new).split("(")[0].upper() in _INTEGER_DIGITS
    if new_is_integer and before[1] > 0:
        return False
    return (after[0] or 0) >= (before[0] or 0) and after[1] >= before[1]
