"""Peer: polars reads the whole file, applies the rules as expressions, and psycopg COPYs the valid rows.

python bench/peers/polars_copy.py FILE DATABASE_URL TABLE
"""

from __future__ import annotations

import io
import json
import time
import sys

import psycopg

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from users_rules_polars import COLUMNS, apply, read  # noqa: E402


def main(path: str, url: str, table: str) -> None:
    started = time.perf_counter()
    valid = apply(read(path))
    buffer = io.BytesIO()
    valid.write_csv(buffer, include_header=False, null_value="")
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        columns = ", ".join(COLUMNS)
        with cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT csv)") as copy:
            copy.write(buffer.getbuffer())
    print(json.dumps({"seconds": time.perf_counter() - started, "rows_loaded": valid.height, "table": table}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
