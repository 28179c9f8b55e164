# Two commands matter on a fresh machine: `make demo` and `make test`. Both build the venv themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv test unit lint typecheck clean up down status logs env demo

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

test: venv lint typecheck ## everything: lint, types, unit, integration, end-to-end
	$(BIN)/pytest -q

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

clean: ## remove the venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
