"""The AWS emulator of the embedded stack: a moto server (S3, SQS, SNS) on 127.0.0.1.

It runs as ``devstack.moto_server``: moto's own server, whose multipart completion copies the parts in the
kernel rather than through Python, and whose GetObject streams big objects from their files (see that module).

Port 4566 is LocalStack's, so ``awslocal`` and any SDK with ``AWS_ENDPOINT_URL`` work unchanged.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from .processes import HOST, spawn, wait_until

DEFAULT_PORT = 4566


def moto_command(port: int) -> list[str]:
    return [sys.executable, "-m", "devstack.moto_server", "-H", HOST, "-p", str(port)]


def is_up(endpoint: str) -> bool:
    with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=1) as response:
        return bool(response.status == 200)


def start_moto(port: int, log_file: Path) -> subprocess.Popen[bytes]:
    process = spawn("moto", moto_command(port), log_file)
    wait_until(lambda: is_up(f"http://{HOST}:{port}"), 30, f"moto server on {HOST}:{port}", process, log_file)
    return process


def reset(endpoint: str) -> None:
    """Forget every bucket, queue and topic (moto's own reset API)."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=5):
        pass
