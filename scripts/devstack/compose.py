"""The compose stack behind the same commands: ``make up|down|status|env STACK=compose``.

It needs a Docker engine with the compose plugin; without one every command says so and stops.
Names come from localstack/resources.json; ports and credentials are the embedded stack's. With OFFLINE=1
the compose file's image variables name the local stand-ins of ``make offline-images``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .engine import docker_engine
from .function import REPO
from .offline_images import offline_environment

LOCALSTACK_ACCOUNT = "000000000000"  # LocalStack's (and Floci's) fixed account id; moto's is 123456789012


class DockerUnavailable(RuntimeError):
    pass


def compose_files(emulator: str | None = None) -> list[Path]:
    files = [REPO / "compose.yaml"]
    if (emulator or os.environ.get("EMULATOR", "localstack")) == "floci":
        files.append(REPO / "compose.floci.yaml")
    return files


def compose_environment() -> dict[str, str]:
    """The environment ``docker compose`` runs with: this one, plus the stand-ins' names with OFFLINE=1."""
    return {**os.environ, **offline_environment()}


def missing_images(env: dict[str, str]) -> list[str]:
    """The OFFLINE=1 stand-ins this engine does not have (pulling them would fail: they exist nowhere else)."""
    wanted = offline_environment(env).values()
    return [
        image
        for image in wanted
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0
    ]


def _compose(*args: str, emulator: str | None = None) -> None:
    problem = docker_engine()
    if problem:
        raise DockerUnavailable(f"the compose stack needs Docker: {problem}. The embedded stack needs none: make up")
    env = compose_environment()
    missing = missing_images(env)
    if missing:
        raise DockerUnavailable(f"OFFLINE=1 but this engine lacks {', '.join(missing)}: run make offline-images")
    subprocess.run([*compose_command(emulator), *args], check=True, cwd=REPO, env=env)


def compose_command(emulator: str | None = None) -> list[str]:
    """``docker compose -f …`` for this project's files (run it with ``compose_environment()``)."""
    argv = ["docker", "compose"]
    for path in compose_files(emulator):
        argv += ["-f", str(path)]
    return argv


def up(emulator: str | None = None) -> None:
    _compose("up", "--build", "--detach", "--wait", emulator=emulator)


def down(emulator: str | None = None) -> None:
    _compose("down", "--volumes", "--remove-orphans", emulator=emulator)


def status(emulator: str | None = None) -> None:
    _compose("ps", emulator=emulator)


def logs(emulator: str | None = None) -> None:
    _compose("logs", "--follow", "lambda", "dispatcher", emulator=emulator)


def environment() -> dict[str, str]:
    definition = json.loads((REPO / "localstack" / "resources.json").read_text())
    region = definition["region"]
    endpoint = "http://127.0.0.1:4566"
    postgres_port = os.environ.get("INGEST_POSTGRES_PORT", "55432")
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "LOCALSTACK_HOST": "127.0.0.1:4566",
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "INGEST_BUCKET": definition["bucket"],
        "INGEST_TOPIC_ARN": f"arn:aws:sns:{region}:{LOCALSTACK_ACCOUNT}:{definition['topic']}",
        "INGEST_QUEUE_URL": f"{endpoint}/{LOCALSTACK_ACCOUNT}/{definition['queue']['name']}",
        "INGEST_DLQ_URL": f"{endpoint}/{LOCALSTACK_ACCOUNT}/{definition['dead_letter_queue']['name']}",
        "DATABASE_URL": f"postgresql://ingest:ingest@127.0.0.1:{postgres_port}/ingest",
    }
