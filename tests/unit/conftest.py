from pathlib import Path

import pytest

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


def run(data: bytes | list[bytes], contract) -> Run:
    chunks = data if isinstance(data, list) else [data]
    valid: list[bytes] = []
    errors: list[bytes] = []
    outcome = process(chunks, contract, valid.append, errors.append)
    return Run(outcome, b"".join(valid), b"".join(errors))
