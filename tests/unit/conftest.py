from pathlib import Path

import pytest

from ingest.columnar import ExactEngineNeeded
from ingest.contract import ContractRegistry, default_contracts_dir
from ingest.processing import Outcome, process

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(scope="session")
def contracts() -> ContractRegistry:
    return ContractRegistry.from_directory(default_contracts_dir())


@pytest.fixture
def users(contracts):
    return contracts["users"]


@pytest.fixture
def measurements(contracts):
    return contracts["test"]


class Run:
    """The outputs of one call to ``process``, decoded for assertions."""

    def __init__(self, outcome: Outcome, valid: bytes, errors: bytes):
        self.outcome = outcome
        self.valid = valid.decode()
        self.errors = errors.decode()
        self.valid_rows = [line.split(",") for line in self.valid.splitlines()[1:]]


@pytest.fixture(params=["exact", "auto"])
def engine(request) -> str:
    """Core tests run with both engines: the results must be identical."""
    return request.param


def run(data: bytes | list[bytes], contract, engine: str = "auto") -> Run:
    """Process like the service does: the columnar engine, and the exact one when it asks for it."""
    chunks = data if isinstance(data, list) else [data]
    valid: list[bytes] = []
    errors: list[bytes] = []
    try:
        outcome = process(list(chunks), contract, valid.append, errors.append, engine=engine)
    except ExactEngineNeeded:
        valid.clear()
        errors.clear()
        outcome = process(list(chunks), contract, valid.append, errors.append, engine="exact")
    return Run(outcome, b"".join(valid), b"".join(errors))
