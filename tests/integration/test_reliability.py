"""Hostile input, least privilege and secrets, through the real service, emulator and PostgreSQL."""

from __future__ import annotations

import gzip
import hashlib
import logging
from datetime import UTC, datetime

import psycopg
import pytest

from ingest.adapters.postgres import Database
from ingest.service import ingest_object
from tests.conftest import SAMPLES
from tests.integration.roles import function_role

UTF8 = "id,email,full_name\n" + "".join(f"{i},u{i}@example.com,Zoë {i}\n" for i in range(1, 200))
BAD_INPUTS = {
    "empty": (b"", "empty_object"),
    "header_only": (b"id,email,full_name\n", "no_data_rows"),
    "binary": (bytes(range(256)) * 40, "binary_content"),
    "truncated_gzip": (gzip.compress(UTF8.encode() * 50)[:-40], "truncated_gzip"),
    "invalid_utf8": (UTF8.encode() + b"999,x@example.com,Bad \xff\xfe byte\n", "invalid_encoding"),
    "huge_field": (b"id,email,full_name\n1,a@b.co," + b"x" * (10 * 2**20) + b"\n", "field_too_large"),
    "ten_thousand_columns": (b"id,email,full_name\n" + b",".join([b"1"] * 10_000) + b"\n", "too_many_rejected_rows"),
    "unbalanced_quotes": (b'id,email,full_name\n1,a@b.co,"Ann\n2,b@b.co,Bob\n', "malformed_csv"),
    "sql_in_header": (b'id,email,full_name,"x""); DROP TABLE users; --"\n1,a@b.co,A,1\n', "unknown_columns"),
    "duplicate_header": (b"id,email,email,full_name\n1,a@b.co,a@b.co,A\n", "duplicate_header"),
    "all_rows_invalid": (b"id,email,full_name\nx,bad,\ny,bad,\n", "too_many_rejected_rows"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_rejected_with_its_reason_and_loads_nothing(pipeline, name):
    data, reason = BAD_INPUTS[name]
    key = "incoming/users/" + name + (".csv.gz" if name.endswith("gzip") else ".csv")
    pipeline.upload(key, data)
    receipt = ingest_object(pipeline.bucket, key, pipeline.deps)
    assert (receipt.status, receipt.reason) == ("rejected", reason), receipt.message
    md5 = hashlib.md5(data).hexdigest()
    summary = pipeline.get(f"errors/users/{md5}.json")
    assert f'"reason": "{reason}"'.encode() in summary and b'"status": "rejected"' in summary
    assert pipeline.keys("processed/") == []
    assert pipeline.query("SELECT count(*) AS n FROM users")[0]["n"] == 0
    assert pipeline.get(key) == data  # the original stays as it was
    [published] = pipeline.receipts()
    assert published["status"] == "rejected" and published["reason"] == reason


@pytest.mark.parametrize("key", ["incoming/users/../users.csv", "incoming/users/a\x07b.csv", "incoming/users/./x.csv"])
def test_suspicious_keys_are_refused(pipeline, key):
    pipeline.upload(key, b"id,email,full_name\n1,a@b.co,A\n")
    receipt = ingest_object(pipeline.bucket, key, pipeline.deps)
    assert (receipt.status, receipt.reason) == ("rejected", "invalid_key")
    assert pipeline.query("SELECT count(*) AS n FROM ingest_ledger.ingest_files WHERE status = 'loaded'")[0]["n"] == 0


def test_formula_cells_are_data_in_the_table_and_defused_in_the_errors_csv(pipeline):
    data = b'id,email,full_name\n1,a@b.co,=HYPERLINK("x")\n2,+bad,B\n3,c@d.ef,@SUM(A1)\n'
    pipeline.upload("incoming/users.csv", data)
    receipt = ingest_object(pipeline.bucket, "incoming/users.csv", pipeline.deps)
    names = [r["full_name"] for r in pipeline.query("SELECT full_name FROM users ORDER BY id")]
    assert names == ['=HYPERLINK("x")', "@SUM(A1)"]
    errors_csv = pipeline.get(receipt.errors_key).decode()
    assert ",'+bad," in errors_csv and ",+bad," not in errors_csv


def test_no_secret_reaches_a_receipt_a_log_line_or_an_error_report(pipeline, caplog, capsys):
    secret = "s3cr3t-Passw0rd"
    pipeline.upload("incoming/users.csv", b"id,email,full_name\n1,a@b.co,A\n")
    pipeline.deps.database = Database(f"postgresql://ingest:{secret}@127.0.0.1:1/ingest", connect_timeout=1)
    with caplog.at_level(logging.DEBUG), pytest.raises(Exception):  # noqa: B017 - any failure will do
        ingest_object(pipeline.bucket, "incoming/users.csv", pipeline.deps)
    [published] = pipeline.receipts()
    assert published["status"] == "failed"
    everything = str(published) + caplog.text + capsys.readouterr().out
    assert secret not in everything
    for key in pipeline.keys("errors/"):
        assert secret.encode() not in pipeline.get(key)


def test_the_function_role_writes_its_tables_and_nothing_else(pipeline, database_url):
    with function_role(database_url, "ingest_fn_test") as function_url:
        with psycopg.connect(database_url, autocommit=True) as admin:
            admin.execute("CREATE TABLE payroll (id int primary key, salary int); INSERT INTO payroll VALUES (1, 100)")
        pipeline.deps.database = Database(function_url)
        pipeline.upload("incoming/users.csv", b"id,email,full_name\n1,a@b.co,A\n")
        assert ingest_object(pipeline.bucket, "incoming/users.csv", pipeline.deps).status == "loaded"
        pipeline.deps.database.dispose()
        with psycopg.connect(function_url, autocommit=True) as fn:
            for attempt in (
                "DROP TABLE payroll",
                "ALTER TABLE payroll ADD COLUMN x int",
                "UPDATE payroll SET salary = 0",
                "INSERT INTO payroll VALUES (2, 1)",
                "SELECT * FROM payroll",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    fn.execute(attempt)


# -- an attempt that dies leaves a trace ------------------------------------------------------------------


def test_a_delivery_puts_an_earlier_one_that_never_answered_on_record_then_loads(pipeline):
    from ingest.service import Delivery

    data = (SAMPLES / "users.csv").read_bytes()
    key = "incoming/users/died_once.csv"
    pipeline.upload(key, data)
    # the first delivery began, read part of the file, and its runtime was killed: its row stays open
    first = pipeline.deps.database.begin_attempt("message-1", 1, pipeline.bucket, key, "request-1")
    pipeline.deps.database.attempt_progress(first.this, 120_000, 9_000_000, 40_000_000)
    receipt = ingest_object(pipeline.bucket, key, pipeline.deps, "request-2", delivery=Delivery("message-1", 2, 3))
    assert receipt.status == "loaded"
    ledger = pipeline.query("SELECT status, reason, request_id, error FROM ingest_ledger.ingest_files ORDER BY id")
    assert [(e["status"], e["reason"], e["request_id"]) for e in ledger] == [
        ("failed", "function_died", "request-1"),
        ("loaded", None, "request-2"),
    ]
    assert "delivery 1 of this file (request request-1)" in ledger[0]["error"]
    assert (
        "never answered" in ledger[0]["error"]
        and "120,000 rows and 9,000,000 of 40,000,000 bytes" in ledger[0]["error"]
    )
    assert [(r["status"], r["reason"]) for r in pipeline.receipts()] == [("failed", "function_died"), ("loaded", None)]
    attempts = pipeline.query(
        "SELECT receive_count, outcome, finished_at IS NOT NULL AS closed FROM ingest_ledger.ingest_attempts"
    )
    assert sorted((a["receive_count"], a["outcome"], a["closed"]) for a in attempts) == [
        (1, "died", True),
        (2, "loaded", True),
    ]


def test_the_last_delivery_after_nothing_but_deaths_does_not_run_the_file_again_and_says_why(pipeline, monkeypatch):
    from ingest.service import Delivery, FunctionDied

    key = "incoming/users/died_twice.csv"
    pipeline.upload(key, (SAMPLES / "users.csv").read_bytes())
    database = pipeline.deps.database
    first = database.begin_attempt("message-2", 1, pipeline.bucket, key, "request-1")
    database.begin_attempt("message-2", 2, pipeline.bucket, key, "request-2")  # found the first dead, died too
    dead = first.this  # delivery 2 put the first on record (which closes it)
    database.record_death(
        dead,
        {
            "md5": "unknown",
            "bucket": pipeline.bucket,
            "object_key": key,
            "status": "failed",
            "reason": "function_died",
            "request_id": "request-1",
            "started_at": datetime.now(UTC),
        },
    )
    read = []
    monkeypatch.setattr(pipeline.deps.store, "head", lambda *a, **k: read.append(a) or 1 / 0)
    with pytest.raises(FunctionDied):
        ingest_object(pipeline.bucket, key, pipeline.deps, "request-3", delivery=Delivery("message-2", 3, 3))
    assert read == []  # the same work was not run again
    ledger = pipeline.query("SELECT status, reason, request_id, error FROM ingest_ledger.ingest_files ORDER BY id")
    # the first's (recorded by delivery 2), the second's and the last's
    assert [(e["status"], e["reason"]) for e in ledger] == [("failed", "function_died")] * 3
    assert [e["request_id"] for e in ledger] == ["request-1", "request-2", "request-3"]
    assert "died on this file 2 time(s)" in ledger[2]["error"] and "ingest replay --dead-letters" in ledger[2]["error"]
    assert [r["reason"] for r in pipeline.receipts()] == ["function_died", "function_died"]  # delivery 3's two
    assert pipeline.query("SELECT count(*) AS n FROM ingest_ledger.ingest_files WHERE status = 'loaded'")[0]["n"] == 0


def test_a_last_delivery_after_a_failure_that_answered_runs_the_file(pipeline):
    """Only deaths make the last delivery give up: an earlier failure on record (the database down) did not."""
    from ingest.service import Delivery

    key = "incoming/users/failed_then_fine.csv"
    pipeline.upload(key, (SAMPLES / "users.csv").read_bytes())
    database = pipeline.deps.database
    answered = database.begin_attempt("message-3", 1, pipeline.bucket, key, "request-1")
    database.end_attempt(answered.this, "failed")
    receipt = ingest_object(pipeline.bucket, key, pipeline.deps, "request-2", delivery=Delivery("message-3", 2, 2))
    assert receipt.status == "loaded"


def test_a_death_found_by_a_delivery_that_dies_before_recording_it_is_recorded_by_the_next(pipeline):
    """Delivery 2 found delivery 1 dead, then died itself before it put that on record (killed, frozen):
    delivery 3 records both, not one."""
    from ingest.service import Delivery, FunctionDied

    key = "incoming/users/died_unreported.csv"
    pipeline.upload(key, (SAMPLES / "users.csv").read_bytes())
    database = pipeline.deps.database
    database.begin_attempt("message-4", 1, pipeline.bucket, key, "request-1")
    database.begin_attempt("message-4", 2, pipeline.bucket, key, "request-2")  # died before reporting the first
    with pytest.raises(FunctionDied):
        ingest_object(pipeline.bucket, key, pipeline.deps, "request-3", delivery=Delivery("message-4", 3, 3))
    ledger = pipeline.query("SELECT reason, request_id FROM ingest_ledger.ingest_files ORDER BY id")
    assert [e["request_id"] for e in ledger] == ["request-1", "request-2", "request-3"]
    assert {e["reason"] for e in ledger} == {"function_died"}
