"""Builds the real adapters from the environment, once per process (a warm Lambda reuses them).

Environment:
  DATABASE_URL           libpq URL of the PostgreSQL database, or:
  DATABASE_SECRET_ARN    a Secrets Manager secret holding it (the RDS JSON form: host, port, username,
                         password, dbname; or a plain URL string), read once per cold start
  INGEST_TOPIC_ARN       SNS topic for receipts (optional: without it receipts are only logged)
  INGEST_OUTPUT_BUCKET   bucket for processed/ and errors/ (default: the bucket of the upload)
  INGEST_CONTRACTS_DIR   folder of contract files (default: lambda/contracts beside the package)
  AWS_ENDPOINT_URL       an emulator's endpoint (read by boto3 itself)
  ARROW_DEFAULT_MEMORY_POOL  pyarrow's memory pool (default here: jemalloc, see compact_arrow_memory)
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any

import boto3
import pyarrow as pa
from botocore.config import Config
from psycopg.conninfo import make_conninfo

from .adapters.network import AWS_CONFIG, Reaching
from .adapters.postgres import Database
from .adapters.s3 import ObjectStore
from .adapters.sns import Notifier
from .contract import ContractRegistry, default_contracts_dir
from .service import Dependencies

# S3 bodies are not hashed into the signature (their CRC32 checksum still travels with them): over HTTPS
# that is botocore's default anyway, and against a local emulator over plain HTTP it spares a SHA-256 pass
# over every byte written.
S3_CONFIG = AWS_CONFIG.merge(Config(s3={"payload_signing_enabled": False}))


#: How long jemalloc keeps pages pyarrow freed before it hands them back. Each page handed back costs a
#: page fault (and zeroing) when the next block takes it again. At 0 (pages back at once) 1M loads took
#: 2.42-2.55 s against 2.32-2.42 s at 100 ms (medians of 6, alternating, two runs), using ~0.2 CPU-s more;
#: peak RSS is 10-15 MB higher at 100 ms (1M: 234-249 against 222-232 MB; 5M: 258-272 against 248-257 MB).
#: 1000 ms was no faster and 15-25 MB bigger. (Measured before the COPY's queue shrank to 8 MB, a decay of
#: 200 ms let a 5M load reach 299-312 MB; the limit is 300.)
ARROW_DECAY_MS = 100


class ConfigurationError(RuntimeError):
    """The function's environment does not say how to reach what it needs."""

    reason = "configuration_error"


def compact_arrow_memory() -> None:
    """pyarrow's jemalloc pool, handing freed pages back after ARROW_DECAY_MS, where the wheel has it and the
    environment names no other (ARROW_DEFAULT_MEMORY_POOL). The columnar engine allocates blocks in its
    parsing thread and frees them in the validating one: with pyarrow's default (mimalloc) that kept ~50 MB
    more resident at 5M rows (peak 226-234 MB for the core alone against 167 MB, 175 MB before the parsing
    thread)."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(ARROW_DECAY_MS)
    except NotImplementedError:  # a pyarrow built without jemalloc: its default stays
        pass


@lru_cache(maxsize=1)
def dependencies() -> Dependencies:
    compact_arrow_memory()
    session = boto3.session.Session()
    database_url = os.environ.get("DATABASE_URL") or _database_url_from_secret(session)
    return Dependencies(
        contracts=ContractRegistry.from_directory(os.environ.get("INGEST_CONTRACTS_DIR") or default_contracts_dir()),
        store=ObjectStore(session.client("s3", config=S3_CONFIG)),
        database=Database(database_url),
        notifier=notifier(),
        output_bucket=os.environ.get("INGEST_OUTPUT_BUCKET") or None,
    )


@lru_cache(maxsize=1)
def notifier() -> Notifier:
    """The receipts' publisher alone: it needs neither the database nor its secret, so that a function that
    could not build the rest still says why on the topic."""
    client = boto3.session.Session().client("sns", config=AWS_CONFIG)
    return Notifier(client, os.environ.get("INGEST_TOPIC_ARN") or None)


def _database_url_from_secret(session: Any) -> str:
    arn = os.environ.get("DATABASE_SECRET_ARN")
    if not arn:
        raise ConfigurationError(
            "neither DATABASE_URL nor DATABASE_SECRET_ARN is set: the function does not know where to load"
        )
    secrets = Reaching(session.client("secretsmanager", config=AWS_CONFIG), "Secrets Manager")
    value = secrets.get_secret_value(SecretId=arn)["SecretString"]
    return database_url_from_secret(value)


def database_url_from_secret(value: str) -> str:
    """A libpq connection string from a secret: a URL as it is, or the RDS JSON form."""
    text = value.strip()
    if not text.startswith("{"):
        return text
    secret = json.loads(text)
    return str(
        make_conninfo(
            host=secret["host"],
            port=str(secret.get("port", 5432)),
            user=secret["username"],
            password=secret["password"],
            dbname=secret.get("dbname") or secret.get("dbInstanceIdentifier") or "postgres",
            # TLS: the secret's own sslmode, else libpq's PGSSLMODE (the template's DatabaseSslMode), else require
            sslmode=secret.get("sslmode") or os.environ.get("PGSSLMODE") or "require",
        )
    )
