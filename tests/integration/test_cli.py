"""The `ingest` command as a user runs it (its installed entry point), for the verbs that need no stack."""

from __future__ import annotations

import bz2
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ingest.contract import parse_contract
from tests.conftest import REPO, SAMPLES

INGEST = str(Path(sys.executable).parent / "ingest")


def ingest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INGEST, *args], capture_output=True, text=True, cwd=REPO, env=env or os.environ.copy(), timeout=120
    )


def test_check_reports_rows_rules_and_the_verdict():
    result = ingest("check", str(SAMPLES / "users_with_errors.csv"))
    assert result.returncode == 0, result.stderr
    assert "contract users" in result.stdout and "10 read, 6 valid, 4 rejected" in result.stdout
    assert "line      3  email" in result.stdout and "OK: the file would load" in result.stdout


def test_check_json_and_the_rejected_exit_code(tmp_path):
    bad = tmp_path / "users.csv"
    bad.write_text("id,email,full_name\n1,x,A\n2,y,B\n")
    result = ingest("check", str(bad), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["verdict"] == "rejected" and report["reason"] == "too_many_rejected_rows"
    assert report["first_errors"][0]["rule"] == "pattern" and report["encoding"] == "utf-8"


def test_check_a_file_no_contract_claims():
    result = ingest("check", str(SAMPLES / "inventory.csv"))
    assert result.returncode == 1 and "REJECTED (no_contract)" in result.stdout
    forced = ingest("check", str(SAMPLES / "inventory.csv"), "--contract", "users", "--json")
    assert forced.returncode == 1 and json.loads(forced.stdout)["reason"] == "no_header"


def test_usage_errors_exit_2():
    assert ingest("check", str(SAMPLES / "users.csv"), "--contract", "nope").returncode == 2
    assert ingest("frobnicate").returncode == 2


@pytest.mark.parametrize(
    "verb", [["check"], ["contract", "lint"], ["contract", "new"], ["status"], ["errors"], ["replay"], ["upload"]]
)
def test_every_verb_has_help_with_an_example(verb):
    result = ingest(*verb, "--help")
    assert result.returncode == 0 and "Example" in result.stdout


def test_contract_lint_passes_the_shipped_contracts_and_catches_overlaps(tmp_path):
    assert ingest("contract", "lint").returncode == 0
    for name, keys in (("a", '["incoming/a_*.csv"]'), ("b", '["incoming/a_x.csv"]')):
        (tmp_path / f"{name}.toml").write_text(f'table = "{name}"\nkeys = {keys}\n[[columns]]\nname = "v"\n')
    result = ingest("--contracts", str(tmp_path), "contract", "lint")
    assert result.returncode == 1 and "a and b both claim" in result.stdout
    (tmp_path / "c.toml").write_text('table = "c"\nkeys = ["k"]\n[[columns]]\nname = "v"\ntype = "varchar"\n')
    broken = ingest("--contracts", str(tmp_path), "contract", "lint")
    assert broken.returncode == 1 and "type must be one of" in broken.stderr


def test_contract_new_drafts_a_contract_that_parses_and_accepts_its_sample(tmp_path):
    result = ingest("contract", "new", str(SAMPLES / "users.csv"), "--name", "people")
    assert result.returncode == 0, result.stderr
    draft = parse_contract("people", tomllib.loads(result.stdout))
    types = {c.name: c.type for c in draft.columns}
    assert types == {
        "id": "integer",
        "email": "text",
        "full_name": "text",
        "signup_date": "date",
        "country": "text",
        "age": "integer",
        "balance": "numeric",
        "is_active": "boolean",
    }
    assert draft.load_mode == "upsert" and draft.upsert_key == ("id",)
    (tmp_path / "people.toml").write_text(result.stdout)
    check = ingest("--contracts", str(tmp_path), "check", str(SAMPLES / "users.csv"), "--contract", "people")
    assert check.returncode == 0 and "5 valid, 0 rejected" in check.stdout


@pytest.mark.parametrize(
    ("content", "reason", "detail"),
    [
        (b'id,name\n1,"Ada "The Countess" Lovelace"\n', "malformed_csv", "line 2: malformed CSV"),
        (b"1,2,1\n3,4,5\n", "duplicate_header", "'1' (columns 1 and 3): it is a row of numbers"),
        (b"\x00\x01\x02binary\x00" * 100, "binary_content", ""),
        (b"sep=:\r\nid:name\r\n1:Ada\r\n", "no_header", "the delimiter ':' (sep=:), which the loader does not read"),
    ],
)
def test_contract_new_on_a_file_no_contract_could_load_says_why_without_a_traceback(tmp_path, content, reason, detail):
    sample = tmp_path / "export.csv"
    sample.write_bytes(content)
    result = ingest("contract", "new", str(sample), "--name", "export")
    assert result.returncode == 1 and result.stdout == ""
    assert f"cannot draft a contract ({reason})" in result.stderr and detail in result.stderr
    assert "Traceback" not in result.stderr


def test_contract_new_reads_a_compressed_file_as_text_and_cuts_its_head_at_a_line(tmp_path):
    # the drafter checks its draft against every row it is given: it is given text, and whole lines only
    # (it was given the first 64 MiB of the compressed bytes, which no reader can finish)
    from ingest.cli import _text_head

    text = b"id,word\n" + b"".join(b"%d,w%d\n" % (i, i) for i in range(20_000))
    packed = tmp_path / "words.csv.bz2"
    packed.write_bytes(bz2.compress(text))
    assert _text_head(packed, 10**9) == (text, True)
    head, whole = _text_head(packed, 50_000)
    assert text.startswith(head) and head.endswith(b"\n") and 49_000 < len(head) <= 50_000 and not whole
    result = ingest("contract", "new", str(packed), "--name", "words")
    assert result.returncode == 0, result.stderr
    assert 'keys = ["incoming/words.csv", ' in result.stdout and 'name = "id"' in result.stdout


def test_contract_new_refuses_a_table_name_the_pipeline_uses_itself():
    result = ingest("contract", "new", str(SAMPLES / "users.csv"), "--name", "ingest_files")
    assert result.returncode == 2 and "'ingest_files' is the pipeline's own" in result.stderr and not result.stdout


def test_stack_verbs_say_clearly_when_no_stack_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "INGEST_", "DATABASE_URL"))}
    env["INGEST_STACK_DIR"] = str(tmp_path / "none")
    result = ingest("status", env=env)
    assert result.returncode == 3 and "no running stack" in result.stderr


HOSTILE_CONTRACT = """
table = "names"
keys = ["incoming/names/*.csv"]
load = { mode = "append" }
max_rejected_share = 0.5

[[columns]]
name = "name"
required = true
pattern = '^(\\w+\\s?)*$'
"""


def test_a_pattern_that_backtracks_in_python_answers_at_once_in_check_and_in_the_function(tmp_path, pipeline):
    """'^(\\w+\\s?)*$' on 35 letters and a '!': Python's re would not answer in a human lifetime."""
    folder = tmp_path / "contracts"
    folder.mkdir()
    (folder / "names.toml").write_text(HOSTILE_CONTRACT)
    data = "name\nAda Lovelace\n" + "a" * 35 + "!\nGrace Hopper\n"
    (tmp_path / "names.csv").write_text(data)
    checked = ingest(
        "check",
        str(tmp_path / "names.csv"),
        "--key",
        "incoming/names/names.csv",
        "--json",
        env={**os.environ, "INGEST_CONTRACTS_DIR": str(folder)},
    )
    report = json.loads(checked.stdout)
    assert checked.returncode == 0 and report["rows_valid"] == 2 and report["rows_rejected"] == 1, checked.stderr
    assert report["first_errors"][0]["rule"] == "pattern"

    from ingest.contract import ContractRegistry
    from ingest.service import ingest_object

    pipeline.deps.contracts = ContractRegistry.from_directory(folder)
    pipeline.upload("incoming/names/names.csv", data.encode())
    receipt = ingest_object(pipeline.bucket, "incoming/names/names.csv", pipeline.deps)
    assert (receipt.status, receipt.rows_loaded, receipt.rows_rejected) == ("loaded", 2, 1)
