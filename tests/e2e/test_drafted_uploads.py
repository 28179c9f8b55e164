"""Files a user drafts a contract for, then uploads, through the embedded stack (a contracts folder of its own):
`ingest contract new FILE`, the draft saved among the stack's contracts, the file uploaded to S3, and every cell
read back from PostgreSQL and compared with the file. One file of each kind that used to load otherwise than
written, or not at all, written here in the shape seen in public data (the network beyond the package
registries is closed): a leading space first seen far past the drafter's sample, cells of one space in a number
column, a statistics office's title block above its table and a footer below, and a header naming a column
twice."""

from __future__ import annotations

import csv
import io
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from ingest.contract import parse_contract
from tests.e2e.conftest import Stack, embedded_stack
from tests.integration.test_cli import ingest
from tests.integration.test_drafted_contracts import assert_round_trip

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def drafting(session_database_url, tmp_path_factory) -> Iterator[tuple[Stack, Path]]:
    contracts = tmp_path_factory.mktemp("drafted_contracts")
    settings = {"DATABASE_URL": session_database_url, "INGEST_CONTRACTS_DIR": str(contracts)}
    for stack in embedded_stack(tmp_path_factory.mktemp("drafting"), settings):
        yield stack, contracts


def agencies() -> tuple[str, list[str], list[list[str]], int, int]:
    """22,800 rows; a text cell starting with a space at line 22,763, far past a sample of 10,000 rows."""
    rows = [[str(i), f"Agency {i} Police Department, OH", f"{i % 90}.5"] for i in range(1, 22_800)]
    rows[22_761][1] = " Hilliard Division of Police, OH"
    return "agencies", ["id", "agency", "rate"], rows, 0, 0


def churn() -> tuple[str, list[str], list[list[str]], int, int]:
    """A customer-churn export: TotalCharges is ' ' in 11 rows of an otherwise numeric column."""
    rows = [[f"{7590 + i}-VHVEG", "Female" if i % 2 else "Male", f"{29.85 + i:.2f}"] for i in range(3_000)]
    for n in range(11):
        rows[250 * n + 7][2] = " "
    return "churn", ["customerID", "gender", "TotalCharges"], rows, 0, 0


def genesis() -> tuple[str, list[str], list[list[str]], int, int]:
    """A statistics office's export: title lines of one field above a ';' header, a footer below the rows."""
    rows = [
        [f"Gemeinde {i}", f"{5_111_000 + i:08d}", str(1_000 + i), f"{12 + i / 10:.1f}".replace(".", ",")]
        for i in range(554)
    ]
    return "genesis", ["Gemeinde", "AGS", "Einwohner", "Fläche km2"], rows, 4, 2


def pollsters() -> tuple[str, list[str], list[list[str]], int, int]:
    """A pollster-ratings file whose header names 'Mean-Reverted Bias' twice (columns 3 and 5)."""
    rows = [[f"Pollster {i}", str(i), f"{i / 10:.1f}", f"{i % 7}", f"{-i / 10:.1f}"] for i in range(1, 60)]
    return "pollsters", ["Pollster", "Rank", "Mean-Reverted Bias", "Races", "Mean-Reverted Bias"], rows, 0, 0


def render(name: str, header: list[str], rows: list[list[str]]) -> bytes:
    if name != "genesis":
        out = io.StringIO(newline="")
        csv.writer(out, lineterminator="\n").writerows([header, *rows])
        return out.getvalue().encode()
    title = [
        "GENESIS-Tabelle: 44211-11i",
        "Lohn- und Einkommensteuerstatistik: Deutschland, Jahre",
        "Einwohner (Anzahl)",
    ]
    lines = [*title, "Stand: 12.08.2026", ";".join(header), *(";".join(r) for r in rows)]
    lines += ["__________", "(C)opyright Statistisches Bundesamt, Wiesbaden 2026"]
    return ("\n".join(lines) + "\n").encode("utf-8")


@pytest.mark.parametrize("shape", [agencies, churn, genesis, pollsters], ids=lambda f: f.__name__)
def test_a_drafted_contract_loads_its_file_through_the_stack_every_cell_as_written_or_declared(
    drafting, tmp_path, shape
):
    stack, contracts = drafting
    kind, header, rows, skipped, footer = shape()
    name = f"{kind}_{uuid.uuid4().hex[:6]}"
    file = tmp_path / f"{name}.csv"
    file.write_bytes(render(kind, header, rows))
    drafted = ingest("--contracts", str(contracts), "contract", "new", str(file), "--name", name)
    assert drafted.returncode == 0, drafted.stderr
    contract = parse_contract(name, tomllib.loads(drafted.stdout))
    assert contract.skip_lines == skipped, drafted.stdout
    (contracts / f"{name}.toml").write_text(drafted.stdout)
    key = f"incoming/{name}.csv"
    stack.upload(key, file.read_bytes())
    [receipt] = stack.receipts_for(key, timeout=120)
    assert receipt["status"] == "loaded", (receipt, drafted.stdout)
    assert (receipt["rows_loaded"], receipt["rows_rejected"]) == (len(rows), footer), receipt
    assert_round_trip(SimpleNamespace(database_url=stack.database_url), contract, header, rows)
    if kind == "agencies":
        assert "agency has 1 cell (the first at line 22763) with whitespace at an edge" in drafted.stdout
        back = stack.query(f"SELECT agency FROM {name} WHERE id = 22762")[0]["agency"]
        assert back == " Hilliard Division of Police, OH"
    if kind == "churn":
        assert "11 cells (the first at line 9) of whitespace alone (' '): trimmed to empty, so NULL" in drafted.stdout
        assert stack.query(f"SELECT count(*) AS n FROM {name} WHERE totalcharges IS NULL")[0]["n"] == 11
    if kind == "pollsters":
        columns = [(c.name, c.position) for c in contract.columns]
        assert columns[2] == ("mean_reverted_bias", 3) and columns[4] == ("mean_reverted_bias_2", 5)
