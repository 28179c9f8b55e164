"""What can be checked about the Docker side without a Docker engine: compose.yaml against the Compose
Specification (the compose-spec package's strict parser), parity with the embedded stack, the
Dockerfile and the LocalStack init hook."""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from compose_spec import PyCompose

from devstack import compose
from devstack.stack import Settings, function_environment

REPO = Path(__file__).resolve().parents[2]
DEFINITION = json.loads((REPO / "localstack" / "resources.json").read_text())


def interpolate(text: str) -> str:
    """Compose's ${VAR:-default} interpolation, with every variable unset (the defaults)."""
    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}", lambda m: m.group(2) or "", text)


def load(name: str) -> dict:
    return yaml.safe_load(interpolate((REPO / name).read_text()))


@pytest.mark.parametrize("name", ["compose.yaml", "compose.floci.yaml"])
def test_compose_files_are_valid_compose_specification(name):
    PyCompose.from_yaml(interpolate((REPO / name).read_text())).validate()


def test_the_validator_does_catch_mistakes():
    with pytest.raises(ValueError, match="condition"):
        PyCompose.from_yaml("services:\n  a:\n    image: x\n    depends_on:\n      b:\n        condition: up\n")


def test_images_are_pinned():
    services = load("compose.yaml")["services"]
    assert services["localstack"]["image"] == "localstack/localstack:4.14.0"
    assert re.fullmatch(r"postgres:\d+\.\d+", services["postgres"]["image"])
    assert re.fullmatch(r"floci/floci:\d+\.\d+\.\d+", load("compose.floci.yaml")["services"]["localstack"]["image"])
    dockerfile = (REPO / "lambda" / "Dockerfile").read_text()
    base = re.search(r"^ARG LAMBDA_BASE_IMAGE=(\S+)$", dockerfile, re.M)
    assert base and re.fullmatch(r"public\.ecr\.aws/lambda/python:3\.12\.\d{4}\.\d\d\.\d\d\.\d\d", base.group(1))
    assert "FROM ${LAMBDA_BASE_IMAGE}" in dockerfile


def test_the_token_is_passed_through_and_everything_binds_to_loopback():
    services = load("compose.yaml")["services"]
    raw = (REPO / "compose.yaml").read_text()
    assert "LOCALSTACK_AUTH_TOKEN: ${LOCALSTACK_AUTH_TOKEN:-}" in raw
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_compose_agrees_with_the_embedded_stack():
    services = load("compose.yaml")["services"]
    settings = Settings.from_env({})
    assert "127.0.0.1:4566:4566" in services["localstack"]["ports"] and settings.emulator_port == 4566

    # as many function instances as the embedded stack runs, fed as the event source feeds them
    event_source = DEFINITION["event_source"]
    instances = event_source["maximum_concurrency"]
    assert instances > 1 and settings.concurrency is None  # INGEST_CONCURRENCY unset: resources.json's
    assert services["lambda"]["deploy"]["replicas"] == instances and "ports" not in services["lambda"]
    command = services["dispatcher"]["command"]
    assert f"--instances={instances}" in command
    assert f"--batch-size={event_source['batch_size']}" in command
    assert f"--batching-window={event_source['maximum_batching_window_seconds']}" in command
    raw = (REPO / "compose.yaml").read_text()
    assert raw.count("${INGEST_CONCURRENCY:-" + str(instances) + "}") == 2  # the replicas and the dispatcher's
    url = next(c for c in command if c.startswith("--function-url="))
    assert url.startswith("--function-url=http://ingest-lambda-{instance}:8080/")  # a container per instance
    assert load("compose.yaml")["name"] == "ingest"

    # the function gets the same variables in both stacks, with the same names and values where they can agree
    embedded = function_environment(DEFINITION, "http://x", "postgresql://x", "arn:x")
    env_file = dict(
        line.split("=", 1)
        for line in (REPO / "localstack" / "compose.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    in_container = {**env_file, **services["lambda"]["environment"]}
    assert set(embedded) <= set(in_container)
    for same in (
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_TIMEOUT",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "INGEST_BUCKET",
        "INGEST_MAX_RECEIVE_COUNT",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "POWERTOOLS_SERVICE_NAME",
    ):
        assert in_container[same] == embedded[same], same
    assert in_container["INGEST_TOPIC_ARN"].endswith(":" + DEFINITION["topic"])
    assert "--queue-name=" + DEFINITION["queue"]["name"] in services["dispatcher"]["command"]

    # `make -s env` prints the same variables for both stacks
    from devstack.stack import environment

    state = {
        "emulator": {"endpoint": "http://127.0.0.1:4566"},
        "region": "us-east-1",
        "resources": {"bucket": "b", "topic_arn": "t", "queue_url": "q", "dlq_url": "d"},
        "postgres": {"url": "p"},
    }
    assert list(environment(state)) == list(compose.environment())


def test_dockerfile_cmd_names_a_handler_that_imports():
    dockerfile = (REPO / "lambda" / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    module, function = cmd[0].rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), function))
    assert DEFINITION["function"]["handler"] == cmd[0]
    # dependencies before code, for layer caching
    assert dockerfile.index("requirements.txt") < dockerfile.index("COPY ingest/")
    assert (REPO / "lambda" / ".dockerignore").exists()


def test_the_localstack_hook_is_executable_and_applies_the_shared_bootstrap():
    hook = REPO / "localstack" / "init" / "ready.d" / "10-bootstrap.sh"
    assert os.access(hook, os.X_OK) and hook.read_text().startswith("#!/bin/bash")
    assert "/opt/ingest-bootstrap/bootstrap.py" in hook.read_text()
    volumes = load("compose.yaml")["services"]["localstack"]["volumes"]
    assert "./localstack/init/ready.d:/etc/localstack/init/ready.d:ro" in volumes
    assert "./localstack:/opt/ingest-bootstrap:ro" in volumes


def test_compose_postgres_creates_the_function_role_and_the_function_connects_as_it():
    services = load("compose.yaml")["services"]
    volumes = services["postgres"]["volumes"]
    # only the role script runs at init (db/roles.sql needs a psql variable the image's entrypoint never sets)
    assert [v for v in volumes if "docker-entrypoint-initdb.d" in v] == [
        "./db/compose-init.sh:/docker-entrypoint-initdb.d/10-roles.sh:ro"
    ]
    script = (REPO / "db" / "compose-init.sh").read_text()
    assert os.access(REPO / "db" / "compose-init.sh", os.X_OK)
    assert "-v password=" in script and "/opt/ingest-db/roles.sql" in script
    assert "./db/roles.sql:/opt/ingest-db/roles.sql:ro" in volumes
    password = services["postgres"]["environment"]["INGEST_FUNCTION_PASSWORD"]
    url = services["lambda"]["environment"]["DATABASE_URL"]
    assert url.startswith(f"postgresql://ingest_function:{password}@postgres:5432/")
    assert "CREATE ROLE ingest_function" in (REPO / "db" / "roles.sql").read_text()


def test_every_service_on_the_function_image_builds_it_rather_than_pulling_it():
    services = load("compose.yaml")["services"]
    for name, service in services.items():
        if service.get("image", "").startswith("ingest-lambda"):
            assert service.get("build", {}).get("context") == "./lambda", name


def test_the_image_variables_default_to_the_upstream_images_and_offline_names_the_stand_ins():
    from devstack.offline_images import COMPOSE_VARIABLES, offline_environment

    raw = (REPO / "compose.yaml").read_text()
    defaults = dict(re.findall(r"\$\{(INGEST_[A-Z_]+_IMAGE):-([^}]+)\}", raw))
    assert set(defaults) == set(COMPOSE_VARIABLES)
    dockerfile_default = re.search(r"^ARG LAMBDA_BASE_IMAGE=(\S+)$", (REPO / "lambda" / "Dockerfile").read_text(), re.M)
    assert dockerfile_default and defaults["INGEST_LAMBDA_BASE_IMAGE"] == dockerfile_default.group(1)
    assert defaults["INGEST_LOCALSTACK_IMAGE"] == "localstack/localstack:4.14.0"
    ci = (REPO / ".ci" / "run").read_text()
    assert all(image in ci for image in defaults.values()), "CI checks the images compose.yaml runs"
    assert offline_environment({}) == {}
    assert offline_environment({"OFFLINE": "1"}) == COMPOSE_VARIABLES
    mine = offline_environment({"OFFLINE": "1", "INGEST_POSTGRES_IMAGE": "my/postgres:16"})
    assert mine["INGEST_POSTGRES_IMAGE"] == "my/postgres:16"  # a variable the user set wins
    assert all(
        not image.startswith(("localstack/", "postgres:", "public.ecr.aws")) for image in COMPOSE_VARIABLES.values()
    )


def test_every_stand_in_builds_on_the_local_base_and_keeps_the_upstream_entry_points():
    from devstack.offline_images import STAND_INS

    for stand_in in STAND_INS:
        dockerfile = (stand_in.folder / "Dockerfile").read_text()
        assert "ARG BASE_IMAGE=ingest-offline/debian:trixie\nFROM ${BASE_IMAGE}" in dockerfile, stand_in.name
        assert "pip install" not in dockerfile or "--no-index" in dockerfile, "no registry inside docker build"
    lambda_base = (REPO / "offline-images" / "lambda-python" / "Dockerfile").read_text()
    for promise in ('ENTRYPOINT ["/lambda-entrypoint.sh"]', "LAMBDA_TASK_ROOT=/var/task", "PIP_NO_INDEX=1"):
        assert promise in lambda_base
    hook = (REPO / "localstack" / "init" / "ready.d" / "10-bootstrap.sh").read_text()
    assert "/opt/code/localstack/.venv/bin/python" in hook
    assert (
        "python3 -m venv /opt/code/localstack/.venv"
        in (REPO / "offline-images" / "localstack" / "Dockerfile").read_text()
    )
