# Two commands matter on a fresh machine: `make demo` and `make test`. Both build the venv themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STACK ?= embedded
export STACK
export OFFLINE  # 1: the compose stack runs on the stand-ins of make offline-images

.PHONY: docker-engine docker-engine-stop offline-images help venv test unit unit-py312 lint typecheck scan schema bench rds-ca image push deploy clean up down status logs env demo

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.lock requirements-dev.txt lambda/requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c requirements.lock -r requirements-dev.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

venv: $(STAMP) ## create .venv from the pinned requirements

lint: venv ## ruff (lint and format check)
	$(BIN)/ruff check lambda scripts tests localstack
	$(BIN)/ruff format --check lambda scripts tests localstack

typecheck: venv ## mypy over the function and the dev-stack code
	$(BIN)/mypy

unit: venv ## the pure unit tests only (milliseconds, no servers)
	$(BIN)/pytest -q tests/unit

test: venv lint typecheck scan unit-py312 ## everything: lint, types, security scan, unit (3.11 and 3.12), integration, end-to-end
	$(BIN)/pytest -q

# checkov (pinned, in a venv of its own) over the template and the function's Dockerfile: a finding fails; each
# one decided otherwise is suppressed where it arises, with its reason (deploy/template.yaml, lambda/Dockerfile).
SCAN_VENV := .venv-scan
$(SCAN_VENV)/.installed: deploy/requirements-scan.txt deploy/requirements-scan.lock
	@test -x $(SCAN_VENV)/bin/python || $(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/python -m pip install -q --disable-pip-version-check -c deploy/requirements-scan.lock -r deploy/requirements-scan.txt
	@touch $@

scan: $(SCAN_VENV)/.installed ## security scan: checkov over deploy/template.yaml and lambda/Dockerfile
	$(SCAN_VENV)/bin/checkov --quiet --compact --skip-download -f deploy/template.yaml -f lambda/Dockerfile

# The function must run on Python 3.11 and 3.12 (the Lambda base image): the pure core's tests run on
# 3.12 too when the machine has it, in a small venv of the function's own dependencies.
PY312 := $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do \
	  "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
VENV312 := .venv312
$(VENV312)/.installed: lambda/requirements.txt requirements.lock
	@test -x $(VENV312)/bin/python || $(PY312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock -r lambda/requirements.txt pytest hypothesis
	@touch $@

unit-py312: ## the unit tests on Python 3.12 (skipped, with a note, where there is none)
ifeq ($(PY312),)
	@echo "unit-py312: no python3.12 on this machine; the 3.11 run covers the core"
else
	@$(MAKE) -s $(VENV312)/.installed
	PYTHONPATH=lambda:scripts $(VENV312)/bin/python -m pytest -q -p no:cacheprovider tests/unit
endif

# The peers of the bench (polars, dlt, pandas + pandera) live in a venv of their own, never in the function's.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: bench/requirements.txt bench/requirements.lock
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check -c bench/requirements.lock -r bench/requirements.txt
	@touch $@

bench: venv $(BENCH_VENV)/.installed ## the pipeline against raw \copy and its peers, 1M and 5M rows (generates bench/data once; ~15 min)
	$(BIN)/python -m devstack.bench --peers-python $(BENCH_VENV)/bin/python --chart bench/results.png $(BENCH_ARGS)

rds-ca: ## fetch AWS's RDS CA bundle into lambda/certs/ (for DatabaseSslMode=verify-full; make image does it if missing)
	scripts/deploy.sh rds-ca

image: ## build the Lambda image (needs Docker)
	scripts/deploy.sh image

push: venv ## build, tag and push the image to ECR (needs Docker and AWS credentials)
	scripts/deploy.sh push

deploy: venv ## push, then deploy deploy/template.yaml with the new image digest (needs DATABASE_SECRET_ARN)
	scripts/deploy.sh deploy

schema: venv ## regenerate db/ledger.sql from the SQLAlchemy description
	@{ head -n 3 db/ledger.sql; echo; $(BIN)/python -c "from ingest.adapters.tables import ledger_ddl; print(ledger_ddl(), end='')"; } > db/ledger.sql.new && mv db/ledger.sql.new db/ledger.sql

demo: venv ## the walking path: start the stack, upload the samples, report, stop
	$(BIN)/python -m devstack demo

up: venv ## start the embedded stack in the background (returns when every part answers)
	$(BIN)/python -m devstack up

down: venv ## stop every process of the embedded stack and remove its state
	$(BIN)/python -m devstack down

status: venv ## what runs where
	$(BIN)/python -m devstack status

logs: venv ## follow the function's and the dispatcher's logs
	$(BIN)/python -m devstack logs

env: venv ## export lines for the running stack: eval "$$(make -s env)"
	@$(BIN)/python -m devstack env

docker-engine: ## as root on Debian: install and start a Docker engine for the compose stack (else: what it needs)
	scripts/docker-engine.sh start

docker-engine-stop: ## stop that engine and undo what it changed on the host
	scripts/docker-engine.sh stop

offline-images: venv ## without a registry: build local stand-ins of the compose stack's images (use with OFFLINE=1)
	$(BIN)/python -m devstack.offline_images $(if $(FORCE),--force)

clean: ## remove the venv and caches
	rm -rf $(VENV) $(VENV312) $(BENCH_VENV) $(SCAN_VENV) .pytest_cache .mypy_cache .ruff_cache
