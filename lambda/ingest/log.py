"""The one structured logger (Powertools): JSON lines carrying request id, key and md5."""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "ingest"))
