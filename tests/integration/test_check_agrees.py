"""`ingest check` reaches the function's verdict: the same outcome, reason and counts of rows and of problems
by rule, for hostile and edge-case files, and never a traceback. Each file goes through the function's
service (uploaded to the emulator, loaded into PostgreSQL) and through `ingest check` on a local copy."""

from __future__ import annotations

import gzip
import json

import pytest
from click.testing import CliRunner

from ingest.cli import main
from ingest.contract import ContractRegistry, default_contracts_dir, parse_contract
from ingest.service import ingest_object
from tests.integration.test_reliability import BAD_INPUTS

EDGE_CASES = {
    **{name: data for name, (data, _reason) in BAD_INPUTS.items()},
    "mixed_good_and_bad": b"id,email,full_name\n1,a@b.co,Ann\n2,nope,Bob\n3,c@d.ef,\n4,d@e.fg,Dee\n",
    "formula_cells": b'id,email,full_name\n1,a@b.co,=HYPERLINK("x")\n2,+bad,B\n3,c@d.ef,@SUM(A1)\n',
    "multi_line_cells": b'id,email,full_name\n1,a@b.co,"Ann\nLine two"\n2,b@c.de,"Bo, ""the"" B"\n',
    "lone_cr_for_the_exact_engine": b"id,email,full_name\n1,a@b.co,Ann\r2,b@c.de,Bob\n3,c@d.ef,Cy\n",
    "a_quote_midway": b'id,email,full_name\n1,a@b.co,An"n\n2,b@c.de,Bob\n',
    "semicolons_and_bom": "\ufeffid;email;full_name\n1;a@b.co;Zoë\n".encode(),
    "utf16": "id,email,full_name\n1,a@b.co,Zoë\n".encode("utf-16"),
    "cp1252": "id,email,full_name\n1,a@b.co,Caf\u00e9 \u2013 ok\n".encode("cp1252"),
    "gzip": gzip.compress(b"id,email,full_name\n" + b"".join(f"{i},u{i}@x.io,U {i}\n".encode() for i in range(500))),
    "repeated_header": b"id,email,full_name\n1,a@b.co,A\nid,email,full_name\n2,b@c.de,B\n",
    "no_contract_key": b"sku,qty\n1,2\n",
}
#: A file the contract's max_bytes rejects by its size alone, and one the hostile pattern would stall in re.
LIMITED = parse_contract(
    "tiny",
    {
        "table": "tiny",
        "keys": ["incoming/tiny/*.csv"],
        "max_bytes": 100,
        "columns": [{"name": "name", "pattern": r"^(\w+\s?)*$"}],
    },
)
LIMITED_CASES = {
    "too_large": b"name\n" + b"Ada Lovelace\n" * 20,
    "backtracking_pattern": b"name\nAda\n" + b"a" * 35 + b"!\n",
}


def key_of(name: str) -> str:
    if name == "no_contract_key":
        return "incoming/inventory/items.csv"
    if name in LIMITED_CASES:
        return f"incoming/tiny/{name}.csv"
    return f"incoming/users/{name}" + (".csv.gz" if "gzip" in name else ".csv")


def checked(tmp_path, name: str, data: bytes, contracts: str) -> dict:
    local = tmp_path / name
    local.write_bytes(data)
    result = CliRunner().invoke(main, ["--contracts", contracts, "check", str(local), "--key", key_of(name), "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return json.loads(result.output)


@pytest.mark.parametrize("name", [*EDGE_CASES, *LIMITED_CASES])
def test_check_reaches_the_functions_verdict(pipeline, tmp_path, name):
    data = EDGE_CASES[name] if name in EDGE_CASES else LIMITED_CASES[name]
    folder = tmp_path / "contracts"
    folder.mkdir()
    for path in default_contracts_dir().glob("*.toml"):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "tiny.toml").write_text(
        'table = "tiny"\nkeys = ["incoming/tiny/*.csv"]\nmax_bytes = 100\n\n'
        "[[columns]]\nname = \"name\"\npattern = '^(\\w+\\s?)*$'\n"
    )
    pipeline.deps.contracts = ContractRegistry.from_directory(folder)
    assert pipeline.deps.contracts["tiny"].columns[0].pattern == LIMITED.columns[0].pattern
    pipeline.upload(key_of(name), data)
    receipt = ingest_object(pipeline.bucket, key_of(name), pipeline.deps)
    report = checked(tmp_path, name, data, str(folder))

    assert report["verdict"] == {"loaded": "loadable", "rejected": "rejected"}[receipt.status], (report, receipt)
    assert report["reason"] == receipt.reason, (report["message"], receipt.message)
    if "rows_total" in report:  # a key no contract claims is answered before a byte is read
        function = (receipt.rows_total, receipt.rows_valid, receipt.rows_rejected)
        assert (report["rows_total"], report["rows_valid"], report["rows_rejected"]) == function
        summary = pipeline.get(receipt.summary_key) if receipt.summary_key else b"{}"
        assert report["errors_by_rule"] == json.loads(summary).get("errors_by_rule", {})
