"""Peer: dlt with its CSV loader (PostgreSQL COPY), the rules as polars expressions in the resource
(dlt's schema contracts cover tables, columns and types, not row rules), compression off. dlt creates
and owns its table (in a dataset schema of its own); the bench checks that table.

    python bench/peers/dlt_csv.py FILE DATABASE_URL TABLE
"""

from __future__ import annotations

import json
import time
import os
import sys
import tempfile

os.environ.setdefault("NORMALIZE__DATA_WRITER__DISABLE_COMPRESSION", "true")
os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")

import dlt  # noqa: E402
import psycopg  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from users_rules_polars import apply, read  # noqa: E402

DATASET = "bench_dlt"


def main(path: str, url: str, _table: str) -> None:
    started = time.perf_counter()
    info = psycopg.conninfo.conninfo_to_dict(url)
    credentials = (
        f"postgresql://{info.get('user', 'postgres')}:{info.get('password') or 'unused'}@"
        f"{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/{info['dbname']}"
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench_users",
        destination=dlt.destinations.postgres(credentials=credentials),
        dataset_name=DATASET,
        pipelines_dir=tempfile.mkdtemp(prefix="dlt-"),
    )
    valid = apply(read(path))
    pipeline.run(
        valid.to_arrow(),
        table_name="users",
        loader_file_format="csv",
        write_disposition="replace",
    )
    print(
        json.dumps({"seconds": time.perf_counter() - started, "rows_loaded": valid.height, "table": f"{DATASET}.users"})
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
