"""``make demo``: upload the samples through the running pipeline and report what happened to each.

Works on a fresh stack (started here, stopped at the end) and on one already up (left running). A sample
whose content an earlier run already loaded is expected to come back ``skipped``: that is the ledger's
exactly-once promise, not a failure. Exits non-zero when any file ends otherwise than expected.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import psycopg

from ingest.adapters.sns import wait_for_receipt

from .function import REPO
from .stack import Settings, down, environment, is_running, read_state, up

RECEIPT_TIMEOUT_S = 90


@dataclass(frozen=True)
class Sample:
    file: str
    key: str
    expect: str  # receipt status
    what: str
    reason: str | None = None


SAMPLES = (
    Sample("users.csv", "incoming/users.csv", "loaded", "a clean users file"),
    Sample("users_with_errors.csv", "incoming/users_with_errors.csv", "loaded", "a users file with bad rows"),
    Sample("test.csv", "incoming/test.csv", "loaded", "measurements, ';'-separated"),
    Sample("inventory.csv", "incoming/inventory.csv", "rejected", "a file no contract claims", "no_contract"),
    Sample("users.csv", "incoming/users/copy_of_users.csv", "skipped", "the clean file again, another key"),
)


def run_demo(settings: Settings, keep: bool = False) -> int:
    started_here = not is_running(settings)
    if started_here:
        print("starting the embedded stack ...")
        up(settings)
    state = read_state(settings)
    assert state is not None
    env = environment(state)
    try:
        problems = _run(env)
    finally:
        if started_here and not keep:
            print("\nstopping the embedded stack (it was started for this demo) ...")
            down(settings)
    if problems:
        print("\nDEMO FAILED:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print("\ndemo OK: every file ended as expected.")
    return 0


def _run(env: dict[str, str]) -> list[str]:
    session = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    s3 = session.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    sqs = session.client("sqs", endpoint_url=env["AWS_ENDPOINT_URL"])
    bucket = env["INGEST_BUCKET"]
    tap = sqs.get_queue_url(QueueName="ingest-receipts-tap")["QueueUrl"]
    database_url = env["DATABASE_URL"]

    problems: list[str] = []
    print(f"\nuploading {len(SAMPLES)} files to s3://{bucket}/ and waiting for each receipt:\n")
    for sample in SAMPLES:
        data = (REPO / "samples" / sample.file).read_bytes()
        expect = sample.expect
        if expect == "loaded" and _already_loaded(database_url, hashlib.md5(data).hexdigest()):
            expect = "skipped"  # an earlier run loaded this content; the ledger keeps it exactly-once
        sent_at = datetime.now(UTC).replace(microsecond=0)
        s3.put_object(Bucket=bucket, Key=sample.key, Body=data)
        receipt = wait_for_receipt(sqs, tap, sample.key, sent_at, timeout=RECEIPT_TIMEOUT_S)
        subject = receipt.pop("_subject", "") if receipt else ""
        _print_receipt(sample, receipt, subject)
        if receipt is None:
            problems.append(f"{sample.key}: no receipt within {RECEIPT_TIMEOUT_S}s (see: make logs)")
        elif receipt["status"] != expect or (sample.reason and receipt.get("reason") != sample.reason):
            problems.append(f"{sample.key}: expected {expect}, got {receipt['status']} ({receipt.get('message')})")
    _print_tables(database_url)
    return problems


def _already_loaded(database_url: str, md5: str) -> bool:
    with psycopg.connect(database_url) as conn:
        exists = conn.execute("SELECT to_regclass('ingest_ledger.ingest_files') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return False
        row = conn.execute(
            "SELECT 1 FROM ingest_ledger.ingest_files WHERE md5 = %s AND status = 'loaded'", (md5,)
        ).fetchone()
        return row is not None


def _print_receipt(sample: Sample, receipt: dict[str, Any] | None, subject: str) -> None:
    print(f"  {sample.key}  ({sample.what})")
    if receipt is None:
        print("      no receipt arrived")
        return
    status = receipt["status"].upper()
    counts = (
        f"{receipt['rows_loaded']} rows loaded into {receipt['table']}, {receipt['rows_rejected']} rejected"
        if receipt["status"] == "loaded"
        else receipt.get("message") or ""
    )
    print(f"      {status:<9} {counts}")
    if receipt.get("errors_key"):
        print(f"      rejected rows: s3://{receipt['bucket']}/{receipt['errors_key']}")
    if receipt.get("summary_key"):
        print(f"      summary:       s3://{receipt['bucket']}/{receipt['summary_key']}")
    if receipt.get("processed_key"):
        print(f"      valid rows:    s3://{receipt['bucket']}/{receipt['processed_key']}")
    for error in receipt.get("errors", [])[:3]:
        print(f"        line {error['line']}: {error['column'] or '(row)'} [{error['rule']}] {error['message']}")
    print(f"      notification:  {subject!r}")


def _print_tables(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        for table, order in (("users", "id"), ("test", "sample_id, measured_at")):
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
            if not exists or not exists[0]:
                continue
            cursor = conn.execute(f'SELECT * FROM "{table}" ORDER BY {order}')
            names = [d.name for d in cursor.description or [] if not d.name.startswith("_ingest")]
            rows = [[_cell(v) for v in row[: len(names)]] for row in cursor.fetchall()]
            print(f"\ntable {table} ({len(rows)} rows):")
            widths = [max(len(n), *(len(r[i]) for r in rows)) if rows else len(n) for i, n in enumerate(names)]
            print("  " + "  ".join(n.ljust(w) for n, w in zip(names, widths)))
            for row in rows:
                print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)))
        ledger = conn.execute(
            "SELECT object_key, status, coalesce(reason, ''), rows_loaded FROM ingest_ledger.ingest_files ORDER BY id"
        ).fetchall()
        print(f"\nledger ingest_ledger.ingest_files ({len(ledger)} entries):")
        for key, status, reason, loaded in ledger:
            print(f"  {status:<9} {key:<40} {reason:<20} {'' if loaded is None else str(loaded) + ' rows'}")


def _cell(value: Any) -> str:
    return "" if value is None else str(value)
