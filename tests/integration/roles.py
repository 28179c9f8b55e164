"""The function's least-privilege role of db/roles.sql, made for a test in the test's database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from tests.conftest import REPO


def roles_sql() -> str:
    text = (REPO / "db" / "roles.sql").read_text()
    return "\n".join(line for line in text.splitlines() if not line.startswith("--"))


@contextmanager
def function_role(
    database_url: str, role: str, password: str = "fn-pass", schemas: str = "ingest_ledger,public"
) -> Iterator[str]:
    """Create ``role`` as db/roles.sql makes ingest_function, with USAGE and CREATE on ``schemas``; yield its
    URL; drop everything afterwards (the schemas are emptied: the role owns what it created)."""
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        template = roles_sql().replace("ingest_function", role).replace(":password", f"'{password}'")
        admin.execute(template.replace(":'schemas'", f"'{schemas}'"))  # type: ignore[arg-type]
    try:
        yield psycopg.conninfo.make_conninfo(database_url, user=role, password=password)
    finally:
        with psycopg.connect(database_url, autocommit=True) as admin:
            for schema in schemas.split(","):
                admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            admin.execute("CREATE SCHEMA IF NOT EXISTS public")
            admin.execute(sql.SQL("DROP OWNED BY {}; DROP ROLE {}").format(sql.Identifier(role), sql.Identifier(role)))
