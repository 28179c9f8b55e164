"""Builds the real adapters from the environment, once per process (a warm Lambda reuses them).

Environment:
  DATABASE_URL           libpq URL of the PostgreSQL database (required)
  INGEST_TOPIC_ARN       SNS topic for receipts (optional: without it receipts are only logged)
  INGEST_OUTPUT_BUCKET   bucket for processed/ and errors/ (default: the bucket of the upload)
  INGEST_CONTRACTS_DIR   folder of contract files (default: lambda/contracts beside the package)
  AWS_ENDPOINT_URL       an emulator's endpoint (read by boto3 itself)
"""

from __future__ import annotations

import os
from functools import lru_cache

import boto3
from botocore.config import Config

from .adapters.postgres import Database
from .adapters.s3 import ObjectStore
from .adapters.sns import Notifier
from .contract import ContractRegistry, default_contracts_dir
from .service import Dependencies

AWS_CONFIG = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60)


class ConfigurationError(RuntimeError):
    pass


@lru_cache(maxsize=1)
def dependencies() -> Dependencies:
    database_url = os.environ.get("DATABASE_URL")
    if not database_url:
        raise ConfigurationError("DATABASE_URL is not set: the function does not know where to load")
    session = boto3.session.Session()
    return Dependencies(
        contracts=ContractRegistry.from_directory(os.environ.get("INGEST_CONTRACTS_DIR") or default_contracts_dir()),
        store=ObjectStore(session.client("s3", config=AWS_CONFIG)),
        database=Database(database_url),
        notifier=Notifier(session.client("sns", config=AWS_CONFIG), os.environ.get("INGEST_TOPIC_ARN") or None),
        output_bucket=os.environ.get("INGEST_OUTPUT_BUCKET") or None,
    )
