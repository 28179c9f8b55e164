"""The offline stand-ins keep the contracts of the upstream images the stack relies on. Runs where a Docker
engine answers and `make offline-images` has built them (CI does both); elsewhere skipped with the reason.

The compose half of the suite exercises all three in use; this checks what it does not reach: the
PostgreSQL entrypoint (written here) runs its init scripts once, and an initialisation that fails is
tried again on the next start rather than leaving a half-made cluster behind."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from devstack.engine import docker_engine
from devstack.offline_images import LAMBDA_BASE_IMAGE, POSTGRES_IMAGE

pytestmark = pytest.mark.stack


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr}"
    return done


@pytest.fixture(scope="module")
def engine() -> None:
    problem = docker_engine()
    if problem:
        pytest.skip(f"offline images not checked: {problem}")


def need(image: str) -> None:
    if docker("image", "inspect", image, check=False).returncode != 0:
        pytest.skip(f"{image} is not built here (make offline-images)")


def wait_ready(container: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if docker("exec", container, "pg_isready", "-h", "127.0.0.1", "-q", check=False).returncode == 0:
            return
        state = docker("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
        assert state == "running", docker("logs", container, check=False).stdout[-2000:]
        time.sleep(0.3)
    raise AssertionError(f"{container} never answered pg_isready")


def test_the_postgres_stand_in_initialises_once_and_retries_a_failed_initialisation(engine, tmp_path: Path):
    need(POSTGRES_IMAGE)
    init = tmp_path / "initdb.d"
    init.mkdir()
    (init / "10-table.sql").write_text("CREATE TABLE made_by_init (n int); INSERT INTO made_by_init VALUES (1);\n")
    (init / "20-fails.sh").write_text("echo 'the init script fails' >&2; exit 7\n")
    volume = f"ingest-test-pgdata-{uuid.uuid4().hex[:8]}"
    settings = ["-e", "POSTGRES_USER=owner", "-e", "POSTGRES_PASSWORD=secret", "-e", "POSTGRES_DB=things"]
    mounts = ["-v", f"{init}:/docker-entrypoint-initdb.d:ro", "-v", f"{volume}:/var/lib/postgresql/data"]
    name = f"ingest-test-pg-{uuid.uuid4().hex[:8]}"
    try:
        failed = docker("run", "--name", name, *settings, *mounts, POSTGRES_IMAGE, timeout=120, check=False)
        assert failed.returncode != 0
        assert "the init script fails" in failed.stderr and "the next start tries again" in failed.stdout
        docker("rm", name)
        # the script is fixed: the next start initialises from scratch (the .sql runs again, once)
        (init / "20-fails.sh").write_text(
            'psql -v ON_ERROR_STOP=1 --dbname "$POSTGRES_DB" -c "INSERT INTO made_by_init VALUES (2)"\n'
        )
        docker("run", "--detach", "--name", name, *settings, *mounts, POSTGRES_IMAGE)
        wait_ready(name)
        query = ["exec", name, "psql", "-h", "127.0.0.1", "-U", "owner", "-d", "things", "-tAc"]
        assert docker(*query[:-1], "-w", "-tAc", "SELECT 1", check=False).returncode != 0, "TCP needs the password"
        with_password = ["exec", "-e", "PGPASSWORD=secret", *query[1:]]
        assert (
            docker(*with_password, "SELECT string_agg(n::text, ',' ORDER BY n) FROM made_by_init").stdout.strip()
            == "1,2"
        )
        # a restart on the same data directory runs nothing again
        docker("restart", name)
        wait_ready(name)
        assert docker(*with_password, "SELECT count(*) FROM made_by_init").stdout.strip() == "2"
    finally:
        docker("rm", "--force", name, check=False)
        docker("volume", "rm", "--force", volume, check=False)


def test_the_lambda_base_stand_in_keeps_the_entrypoint_contract(engine):
    need(LAMBDA_BASE_IMAGE)
    no_handler = docker("run", "--rm", LAMBDA_BASE_IMAGE, check=False)
    assert no_handler.returncode == 142 and "the handler" in no_handler.stderr
    probe = docker(
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        LAMBDA_BASE_IMAGE,
        "-c",
        'pwd; echo "$LAMBDA_TASK_ROOT"; python3 -c "import awslambdaric";'
        " test -x /usr/local/bin/aws-lambda-rie && echo rie;"
        " pip download --no-deps -q -d /tmp/w boto3 && echo offline-pip",
    )
    assert probe.stdout.split() == ["/var/task", "/var/task", "rie", "offline-pip"]
