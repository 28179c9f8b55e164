"""Every outcome leaves a trace: the function's own deadline, size and inflation limits, hopeless files,
bounded error reports, and duplicate deliveries of a rejected file (real moto, real PostgreSQL)."""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from typing import Any
from urllib.parse import urlsplit

import boto3
import psycopg
import pytest

from ingest import bootstrap
from ingest.adapters import s3 as s3_adapter
from ingest.adapters.s3 import ObjectStore
from ingest.adapters.sns import Notifier
from ingest.processing import ERRORS_CSV_MAX_LINES
from ingest.service import DeadlineReached, Dependencies, ingest_object
from tests.integration.objects import StallingProxy, big_users_file, upload_multipart

pytestmark = pytest.mark.integration


def row_bomb(rows: int) -> bytes:
    """A gzip of one valid users row repeated ``rows`` times (every row after the first a duplicate key)."""
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"1,a@b.co,A\n" * 100_000
    parts = [gz.compress(b"id,email,full_name\n")]
    parts += [gz.compress(block) for _ in range(rows // 100_000)]
    return b"".join([*parts, gz.flush()])


def ledger(pipeline, key: str) -> list[dict]:
    return pipeline.query(
        "SELECT status, reason, error, rows_total FROM ingest_ledger.ingest_files WHERE object_key = %s ORDER BY id",
        key,
    )


def test_a_deadline_already_past_stops_before_reading(pipeline):
    key = "incoming/users/late.csv"
    pipeline.upload(key, b"id,email,full_name\n1,a@b.co,A\n")
    with pytest.raises(DeadlineReached):
        ingest_object(pipeline.bucket, key, pipeline.deps, deadline=time.monotonic() - 1)
    assert [e["reason"] for e in ledger(pipeline, key)] == ["timeout"]


def test_the_row_bomb_is_rejected_early_with_a_receipt_a_ledger_row_and_a_summary(pipeline):
    data = row_bomb(50_000_000)  # ~1 MB of gzip, 550 MB of rows
    key = "incoming/users/users_rowbomb.csv.gz"
    pipeline.upload(key, data)
    receipt = ingest_object(pipeline.bucket, key, pipeline.deps)
    # users.toml tolerates 50% rejected rows: the duplicates make the file hopeless after a few MB
    assert receipt.status == "rejected" and receipt.reason == "too_many_rejected_rows", receipt.message
    summary = json.loads(pipeline.get(receipt.summary_key))
    assert summary["rows_total"] < 5_000_000  # stopped after a few MB of text, not 550
    assert len(pipeline.get(receipt.errors_key).splitlines()) == 1 + ERRORS_CSV_MAX_LINES
    assert [e["status"] for e in ledger(pipeline, key)] == ["rejected"]
    assert pipeline.receipts()[0]["reason"] == "too_many_rejected_rows"

    # a contract that tolerates any share of bad rows still refuses the inflation
    pipeline.change_users_contract(max_rejected_share=1.0)
    receipt = ingest_object(pipeline.bucket, key, pipeline.deps)
    assert receipt.status == "rejected" and receipt.reason == "decompression_bomb", receipt.message
    assert "max_inflation" in str(receipt.message)
    summary = json.loads(pipeline.get(receipt.summary_key))
    assert summary["reason"] == "decompression_bomb" and summary["rows_total"] < 5_000_000


def test_max_bytes_rejects_too_large_objects_before_and_while_reading(pipeline):
    pipeline.change_users_contract(max_bytes=1000)
    big = b"id,email,full_name\n" + b"".join(f"{i},u{i}@b.co,U\n".encode() for i in range(200))
    pipeline.upload("incoming/users/big.csv", big)
    plain = ingest_object(pipeline.bucket, "incoming/users/big.csv", pipeline.deps)
    assert plain.status == "rejected" and plain.reason == "too_large" and "max_bytes" in str(plain.message)
    pipeline.upload("incoming/users/big.csv.gz", zlib.compress(big, wbits=31))
    packed = ingest_object(pipeline.bucket, "incoming/users/big.csv.gz", pipeline.deps)
    assert packed.status == "rejected" and packed.reason == "too_large"


def test_a_hopeless_file_stops_once_its_report_is_full_and_the_report_stays_bounded(pipeline, monkeypatch):
    from ingest import columnar

    monkeypatch.setattr(columnar, "BLOCK_BYTES", 64 * 1024)  # batches far smaller than the file
    pipeline.change_users_contract(max_rejected_share=0.05)
    bad = ERRORS_CSV_MAX_LINES + 500
    lines = [f"{i},not-an-email,U" for i in range(1, bad + 1)]
    lines += [f"{i},u{i}@b.co,U" for i in range(bad + 1, bad + 30_001)]
    key = "incoming/users/hopeless.csv"
    pipeline.upload(key, ("id,email,full_name\n" + "\n".join(lines) + "\n").encode())
    receipt = ingest_object(pipeline.bucket, key, pipeline.deps)
    assert receipt.status == "rejected" and receipt.reason == "too_many_rejected_rows"
    assert "stopped reading" in str(receipt.message)
    assert receipt.rows_total < bad + 30_000  # it did not read on to the end
    errors_csv = pipeline.get(receipt.errors_key).decode().splitlines()
    assert len(errors_csv) == 1 + ERRORS_CSV_MAX_LINES
    summary = json.loads(pipeline.get(receipt.summary_key))
    assert summary["errors_csv_truncated"] is True and summary["errors_by_rule"]["pattern"] > ERRORS_CSV_MAX_LINES


def test_a_tolerated_flood_of_bad_rows_loads_with_a_bounded_report(pipeline):
    pipeline.change_users_contract(max_rejected_share=1.0)
    lines = [f"{i},not-an-email,U" for i in range(1, ERRORS_CSV_MAX_LINES + 2_001)] + ["999999,ok@b.co,Ok"]
    key = "incoming/users/flood.csv"
    pipeline.upload(key, ("id,email,full_name\n" + "\n".join(lines) + "\n").encode())
    receipt = ingest_object(pipeline.bucket, key, pipeline.deps)
    assert receipt.status == "loaded" and receipt.rows_loaded == 1
    assert len(pipeline.get(receipt.errors_key).decode().splitlines()) == 1 + ERRORS_CSV_MAX_LINES
    summary = json.loads(pipeline.get(receipt.summary_key))
    assert summary["errors_by_rule"] == {"pattern": ERRORS_CSV_MAX_LINES + 2_000}


def test_a_second_delivery_of_a_rejected_file_answers_from_the_ledger_until_the_contract_changes(pipeline):
    key = "incoming/users/all_bad.csv"
    pipeline.upload(key, b"id,email,full_name\n1,nope,A\n2,nope,B\n")
    first = ingest_object(pipeline.bucket, key, pipeline.deps)
    second = ingest_object(pipeline.bucket, key, pipeline.deps)
    assert first.status == "rejected" and first.reason == "too_many_rejected_rows"
    assert second.status == "skipped" and second.reason == "already_rejected"
    assert "too_many_rejected_rows" in str(second.message) and "ledger id" in str(second.message)
    pipeline.change_users_contract(max_rejected_share=1.0)  # the contract changed: the same content is judged again
    third = ingest_object(pipeline.bucket, key, pipeline.deps)
    assert third.status == "loaded" and third.rows_loaded == 0
    assert [(e["status"], e["reason"]) for e in ledger(pipeline, key)] == [
        ("rejected", "too_many_rejected_rows"),
        ("skipped", "already_rejected"),
        ("loaded", None),
    ]


def ingest_through_a_stall(
    pipeline, key: str, seconds: float, ends: float | None = None, through: str = "s3", **stall: Any
) -> BaseException | str:
    """What ``ingest_object`` returned (its status) or raised, with a deadline ``seconds`` away (and the
    invocation's end ``ends`` away, if given), when the function's own S3 client (or, ``through="sns"``,
    its SNS client; read timeouts a minute) reaches the emulator through a StallingProxy (``stall``: its
    budget or request). Fails unless the proxy held something and the call ended within 30 s, long before
    the client's read timeout but long after the deadline."""
    proxy = StallingProxy(urlsplit(pipeline.aws.endpoint).port, **stall)
    try:
        deps = pipeline.deps
        if through == "s3":
            client = boto3.session.Session().client("s3", endpoint_url=proxy.endpoint, config=bootstrap.S3_CONFIG)
            stalled = Dependencies(deps.contracts, ObjectStore(client), deps.database, deps.notifier)
        else:
            sns = boto3.session.Session().client("sns", endpoint_url=proxy.endpoint, config=bootstrap.AWS_CONFIG)
            stalled = Dependencies(deps.contracts, deps.store, deps.database, Notifier(sns, deps.notifier.topic_arn))
        outcome: list[BaseException | str] = []

        def attempt() -> None:
            now = time.monotonic()
            until = None if ends is None else now + ends
            try:
                outcome.append(ingest_object(pipeline.bucket, key, stalled, deadline=now + seconds, ends=until).status)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=attempt, daemon=True)
        thread.start()
        thread.join(30)
        assert proxy.stalled.is_set()
        assert not thread.is_alive(), "the stall outlived the deadline"
    finally:
        proxy.close()
    [result] = outcome
    return result


@pytest.mark.parametrize("upload", ["single_part", "multipart_spooled", "multipart_hashed_first"])
def test_a_download_that_stalls_is_cut_off_at_the_deadline_with_a_timeout_on_record(pipeline, monkeypatch, upload):
    """A download that stops midway (the network holds the rest) would wait for the S3 client's read timeout
    (a minute) and the runtime would kill the function before it recorded anything. It is cut off at the
    function's deadline, in whichever thread reads it: the main thread (a single-part upload, whose ETag is
    its MD5), the spool's (a multipart upload being hashed while it is processed), or the main thread again
    hashing first (no room to spool)."""
    key = f"incoming/users/{upload}.csv"
    data = big_users_file(120_000)  # ~7.5 MB: several chunks, so the download stops in the middle
    if upload == "single_part":
        pipeline.upload(key, data)
    else:
        upload_multipart(pipeline, key, data)
    if upload == "multipart_hashed_first":
        monkeypatch.setattr(s3_adapter, "SPOOL_MARGIN_BYTES", 1 << 60)
    error = ingest_through_a_stall(pipeline, key, seconds=2, budget=256 * 1024)
    assert isinstance(error, DeadlineReached) and "cut off" in str(error)
    [entry] = ledger(pipeline, key)
    assert entry["status"] == "failed" and entry["reason"] == "timeout"
    [receipt] = pipeline.receipts()
    assert receipt["status"] == "failed" and receipt["reason"] == "timeout"
    assert pipeline.keys("processed/") == [] and pipeline.keys("errors/") == []
    assert not pipeline.query("SELECT 1 FROM ingest_ledger.ingest_files WHERE status = 'loaded'")
    # the network back (the same function, its usual client): the retry loads every row, once
    assert ingest_object(pipeline.bucket, key, pipeline.deps).status == "loaded"
    assert pipeline.query("SELECT count(*) AS n FROM users")[0]["n"] == 120_000


@pytest.mark.parametrize(
    ("held", "pattern", "message"),
    [
        ("the second part", rb"^PUT [^ ]*[?&]partNumber=2[& ]", "upload of part 2 of processed/users/"),
        ("the completion", rb"^POST [^ ]*[?&]uploadId=", "upload of processed/users/"),
        (
            "the second part, then the abort",
            rb"^(PUT [^ ]*[?&]partNumber=2[& ]|DELETE [^ ]*[?&]uploadId=)",
            "upload of part 2 of processed/users/",
        ),
    ],
)
def test_an_upload_that_stalls_is_given_up_at_the_deadline_with_a_timeout_on_record(pipeline, held, pattern, message):
    """The answer to processed/'s UploadPart of its second part, or to its CompleteMultipartUpload, never
    comes (the network holds it). The function waits for it until its deadline, not for the S3 client's
    read timeout (a minute, then again per retry), and records the timeout; nothing is loaded and the
    retry loads. The abort of the upload, past the deadline, is waited for briefly: when its answer does
    not come either, the timeout is still recorded in time."""
    key = "incoming/users/upload_stalls.csv"
    data = big_users_file(250_000)  # ~16 MB: its processed/ output goes up in 4 parts
    pipeline.upload(key, data)
    error = ingest_through_a_stall(pipeline, key, seconds=3, request=pattern)
    assert isinstance(error, DeadlineReached) and message in str(error), held
    [entry] = ledger(pipeline, key)
    assert entry["status"] == "failed" and entry["reason"] == "timeout"
    assert pipeline.query("SELECT count(*) AS n FROM users")[0]["n"] == 0
    assert ingest_object(pipeline.bucket, key, pipeline.deps).status == "loaded"
    assert pipeline.query("SELECT count(*) AS n FROM users")[0]["n"] == 250_000


MD5 = rb"[0-9a-f]{32}"


@pytest.mark.parametrize(
    ("held", "pattern", "message"),
    [
        ("HeadObject, the first request", rb"^HEAD [^ ]*incoming/users/", "HeadObject of incoming/users/"),
        ("GetObject's headers", rb"^GET [^ ]*incoming/users/", "GetObject of incoming/users/"),
        ("processed/'s CreateMultipartUpload", rb"^POST [^ ]*processed/users/[^ ]*[?&]uploads", "CreateMultipart"),
        ("the errors CSV's PutObject", rb"^PUT [^ ]*errors/users/" + MD5 + rb"\.csv ", "PutObject of errors/users/"),
        ("the summary's PutObject", rb"^PUT [^ ]*errors/users/" + MD5 + rb"\.json ", "PutObject of errors/users/"),
    ],
)
def test_a_request_without_an_answer_is_given_up_at_the_deadline_with_a_timeout_on_record(
    pipeline, held, pattern, message
):
    """The answer to one request the function makes in its own thread never comes (the network holds it):
    the HEAD that starts a file, GetObject's headers, the creation of processed/'s multipart upload, the
    errors CSV, the summary beside it. Each is waited for until the function's deadline, not for the S3
    client's read timeout (a minute, then again per retry), and the timeout is recorded; nothing is loaded
    and the retry loads."""
    key = "incoming/users/request_stalls.csv"
    good = big_users_file(120_000)  # ~7.5 MB: processed/ is a multipart upload
    pipeline.upload(key, good + b"0,not an email,Bad Email\nabc,x@y.co,Bad Id\n")  # two rejected rows
    error = ingest_through_a_stall(pipeline, key, seconds=2, request=pattern)
    assert isinstance(error, DeadlineReached) and message in str(error), (held, error)
    [entry] = ledger(pipeline, key)
    assert entry["status"] == "failed" and entry["reason"] == "timeout", held
    assert not pipeline.query("SELECT 1 FROM ingest_ledger.ingest_files WHERE status = 'loaded'")
    assert ingest_object(pipeline.bucket, key, pipeline.deps).status == "loaded"
    assert pipeline.query("SELECT count(*) AS n FROM users")[0]["n"] == 120_000


def test_a_receipt_publish_without_an_answer_is_given_up_before_the_invocation_ends(pipeline):
    """SNS never answers the publish of a receipt (the network holds the answer). The function waits for
    it until the end of its invocation, not for the SNS client's read timeout (a minute, then again per
    retry), which would let the runtime kill it: the handler would not return, and a file loaded and on
    record would be delivered again. The receipt is in the log instead."""
    key = "incoming/users/publish_stalls.csv"
    pipeline.upload(key, big_users_file(1_000))
    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append  # type: ignore[method-assign]
    logging.getLogger("ingest").addHandler(handler)
    try:
        outcome = ingest_through_a_stall(pipeline, key, seconds=2, ends=3, through="sns", request=rb"Action=Publish")
    finally:
        logging.getLogger("ingest").removeHandler(handler)
    assert outcome == "loaded"
    [entry] = ledger(pipeline, key)
    assert entry["status"] == "loaded" and entry["rows_total"] == 1_000
    [record] = [r for r in logged if r.getMessage() == "could not publish the receipt"]
    assert "before the invocation's end" in str(record.exc_info[1]) and record.receipt["key"] == key  # type: ignore[attr-defined]


def test_an_outcome_whose_ledger_row_waits_on_a_lock_is_given_up_before_the_invocation_ends(pipeline):
    """A rejection's ledger row waited for a lock on the ledger (a migration, an operator's LOCK) as long as it
    was held: the runtime killed the function, and neither the row nor the receipt was written. Now the write
    gives up halfway to the invocation's end; the failure is logged, and its receipt published (or logged)."""
    pipeline.deps.database.ensure_tables()
    key = "incoming/nobody/claims.csv"
    pipeline.upload(key, b"a,b\n1,2\n")
    outcome: list[Any] = []
    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append  # type: ignore[method-assign]
    logging.getLogger("ingest").addHandler(handler)
    try:
        with psycopg.connect(pipeline.database_url) as holder:
            holder.execute("LOCK TABLE ingest_ledger.ingest_files IN EXCLUSIVE MODE")  # reads go on, writes wait
            worker = threading.Thread(
                target=lambda: outcome.append(_ingest_until(pipeline, key, ends=time.monotonic() + 4.0)), daemon=True
            )
            worker.start()
            worker.join(timeout=60)
            assert not worker.is_alive(), "the ledger write waited for the lock"
    finally:
        logging.getLogger("ingest").removeHandler(handler)
    [raised] = outcome
    assert "statement timeout" in str(raised)
    assert ledger(pipeline, key) == []  # nothing could be written while the lock was held
    assert [r.getMessage() for r in logged if "ledger" in r.getMessage()] == [
        "could not record the failure in the ledger"
    ]
    published = [r for r in pipeline.receipts() if r["key"] == key]
    unpublished = [r.receipt for r in logged if r.getMessage() == "could not publish the receipt"]  # type: ignore[attr-defined]
    assert [(r["status"], r["key"]) for r in published + unpublished] == [("failed", key)]
    # with the lock gone, the redelivery records the verdict
    assert ingest_object(pipeline.bucket, key, pipeline.deps).status == "rejected"
    assert [e["reason"] for e in ledger(pipeline, key)] == ["no_contract"]


def _ingest_until(pipeline, key: str, ends: float) -> Any:
    try:
        return ingest_object(pipeline.bucket, key, pipeline.deps, ends=ends)
    except Exception as exc:
        return exc


def test_a_rejection_with_a_long_story_still_reaches_its_subscribers(pipeline):
    """A header naming the id column 30,000 times made a duplicate_header message of 1.3 MB: SNS takes at most
    256 KB, so the receipt was never published. Every rejection's message is bounded."""
    key = "incoming/users/ids.csv"
    header = ",".join(["id"] * 30_000)
    pipeline.upload(key, f"{header},email,full_name\n".encode())
    receipt = ingest_object(pipeline.bucket, key, pipeline.deps)
    assert receipt.status == "rejected" and receipt.reason == "duplicate_header"
    [published] = pipeline.receipts()
    assert (
        published["reason"] == "duplicate_header" and "'id' (column 2) repeats 'id' (column 1)" in published["message"]
    )
    assert len(published["message"]) <= 4_000 and "29,999 in all" in published["message"]
    [entry] = ledger(pipeline, key)
    assert entry["reason"] == "duplicate_header" and len(entry["error"]) <= 4_000
