"""Upload → table through the whole embedded stack: emulator, S3 → SQS, dispatcher, real RIE and
awslambdaric, PostgreSQL, SNS receipts (read back through an SQS subscription)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from urllib.parse import unquote_plus

import pytest
import sqlalchemy as sa

from tests.e2e.conftest import REPO, unique_users
from tests.integration.test_cli import ingest

pytestmark = pytest.mark.stack


def test_upload_lands_in_the_table_with_outputs_ledger_and_receipt(stack):
    data, ids = unique_users(rows=4, bad=1)
    key = f"incoming/users/e2e_{uuid.uuid4().hex[:8]}.csv"
    stack.upload(key, data)
    [receipt] = stack.receipts_for(key)
    md5 = hashlib.md5(data).hexdigest()
    assert receipt["status"] == "loaded" and receipt["rows_loaded"] == 4 and receipt["rows_rejected"] == 1
    assert receipt["md5"] == md5 and receipt["_subject"].startswith(f"ingest loaded: {key}")

    rows = stack.query("SELECT id, email, _ingest_md5 FROM users WHERE id = ANY(%s) ORDER BY id", ids)
    assert [r["id"] for r in rows] == ids and {r["_ingest_md5"] for r in rows} == {md5}
    [entry] = stack.query("SELECT status, rows_loaded, request_id FROM ingest_ledger.ingest_files WHERE md5 = %s", md5)
    assert entry["status"] == "loaded" and entry["rows_loaded"] == 4 and entry["request_id"]

    processed = stack.s3.get_object(Bucket=stack.bucket, Key=f"processed/users/{md5}.csv")["Body"].read()
    assert processed.count(b"\n") == 5
    errors = stack.s3.get_object(Bucket=stack.bucket, Key=f"errors/users/{md5}.csv")["Body"].read()
    assert b"not-an-email" in errors
    assert stack.s3.head_object(Bucket=stack.bucket, Key=key)  # the upload is never deleted


def test_the_same_event_delivered_twice_loads_once(stack):
    data, ids = unique_users()
    key = f"incoming/users/twice_{uuid.uuid4().hex[:8]}.csv"
    stack.upload(key, data)
    assert stack.receipts_for(key)[0]["status"] == "loaded"
    # Redeliver the notification S3 already sent, as an at-least-once queue may.
    event = {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "awsRegion": "us-east-1",
                "eventTime": "2026-01-01T00:00:00.000Z",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": stack.bucket},
                    "object": {"key": key, "size": len(data)},
                },
            }
        ]
    }
    stack.sqs.send_message(QueueUrl=stack.env["INGEST_QUEUE_URL"], MessageBody=json.dumps(event))
    receipts = stack.receipts_for(key, count=2)
    assert [r["status"] for r in receipts] == ["loaded", "skipped"]
    assert len(stack.query("SELECT id FROM users WHERE id = ANY(%s)", ids)) == len(ids)


def test_a_multipart_upload_loads_once_however_many_events_it_sends(stack):
    base = uuid.uuid4().int % 900_000_000 + 1_200_000_000  # fits a PostgreSQL integer
    lines = [b"id,email,full_name"] + [
        f"{base + i},m{base + i}@example.com,Multipart user {i:07d} with some padding to make it big".encode()
        for i in range(90_000)
    ]
    data = b"\n".join(lines) + b"\n"
    key = f"incoming/users/multipart_{uuid.uuid4().hex[:8]}.csv"
    upload = stack.s3.create_multipart_upload(Bucket=stack.bucket, Key=key)["UploadId"]
    half = 5 * 1024 * 1024
    parts = []
    for number, body in enumerate((data[:half], data[half:]), start=1):
        etag = stack.s3.upload_part(Bucket=stack.bucket, Key=key, UploadId=upload, PartNumber=number, Body=body)
        parts.append({"PartNumber": number, "ETag": etag["ETag"]})
    stack.s3.complete_multipart_upload(Bucket=stack.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    # S3 (and LocalStack) send one ObjectCreated:CompleteMultipartUpload; moto also sends an
    # ObjectCreated:Put first. S3 promises at least one event: whatever comes after the load is a skip.
    receipts = stack.receipts_for(key, count=1, timeout=120)
    assert receipts[0]["status"] == "loaded"
    assert {r["status"] for r in receipts[1:]} <= {"skipped"}
    md5 = hashlib.md5(data).hexdigest()
    assert (
        stack.query("SELECT count(*) AS n FROM ingest_ledger.ingest_files WHERE md5 = %s AND status = 'loaded'", md5)[
            0
        ]["n"]
        == 1
    )
    assert stack.query("SELECT count(*) AS n FROM users WHERE _ingest_md5 = %s", md5)[0]["n"] == 90_000


def test_a_key_with_spaces_plus_and_unicode(stack):
    data, _ids = unique_users()
    key = f"incoming/users/Grüße aus Köln + more {uuid.uuid4().hex[:6]}.csv"
    stack.upload(key, data)
    [receipt] = stack.receipts_for(key)
    assert receipt["status"] == "loaded"
    assert stack.query(
        "SELECT object_key FROM ingest_ledger.ingest_files WHERE md5 = %s", hashlib.md5(data).hexdigest()
    ) == [{"object_key": key}]


def test_a_failing_function_is_retried_then_dead_lettered_and_the_object_kept(stack):
    # The function creates (and owns) the table, as it would in production; the trigger is the admin's.
    first = f"incoming/test/fine_{uuid.uuid4().hex[:8]}.csv"
    stack.upload(first, f"sample_id,measured_at,instrument\nFINE,2024-01-01T00:00:00Z,{first}\n".encode())
    assert stack.receipts_for(first)[0]["status"] == "loaded"
    engine = sa.create_engine(
        "postgresql+psycopg://", creator=lambda: __import__("psycopg").connect(stack.database_url)
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text("""
            CREATE OR REPLACE FUNCTION refuse_poison() RETURNS trigger AS $$
            BEGIN
              IF NEW.sample_id = 'POISON' THEN RAISE EXCEPTION 'the database refuses this row'; END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql;
            DROP TRIGGER IF EXISTS refuse_poison ON test;
            CREATE TRIGGER refuse_poison BEFORE INSERT ON test FOR EACH ROW EXECUTE FUNCTION refuse_poison();
        """)
        )
    try:
        key = f"incoming/test/poison_{uuid.uuid4().hex[:8]}.csv"
        stack.upload(key, f"sample_id,measured_at,instrument\nPOISON,2024-01-01T00:00:00Z,{key}\n".encode())
        receipts = stack.receipts_for(key, count=3, timeout=90)
        assert [r["status"] for r in receipts] == ["failed"] * 3
        assert "the database refuses this row" in receipts[0]["message"]
        assert _wait_for_dead_letter(stack, key) == [key]
        assert stack.s3.head_object(Bucket=stack.bucket, Key=key)
        statuses = stack.query("SELECT status FROM ingest_ledger.ingest_files WHERE object_key = %s", key)
        assert [s["status"] for s in statuses] == ["failed"] * 3

        # the dependency is fixed; the documented replay brings the message back and the file loads, once
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER IF EXISTS refuse_poison ON test"))
        replayed = ingest("replay", "--dead-letters", env=stack.env)
        assert replayed.returncode == 0 and "moved 1 message" in replayed.stdout, replayed.stderr
        assert stack.receipts_for(key, count=4, timeout=60)[-1]["status"] == "loaded"
        again = ingest("replay", key, env=stack.env)
        assert again.returncode == 0 and "SKIPPED" in again.stdout, again.stderr
        assert stack.query("SELECT count(*) AS n FROM test WHERE instrument = %s", key)[0]["n"] == 1
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER IF EXISTS refuse_poison ON test"))
        engine.dispose()


def _wait_for_dead_letter(stack, key: str, timeout: float = 30) -> list[str]:
    """The (decoded) object keys of the dead-lettered message that announced ``key``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in stack.sqs.receive_message(
            QueueUrl=stack.env["INGEST_DLQ_URL"], MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=0
        ).get("Messages", []):
            records = json.loads(message["Body"]).get("Records", [])
            keys = [unquote_plus(r["s3"]["object"]["key"]) for r in records]
            if key in keys:
                return keys
    raise AssertionError(f"no message for {key} reached the dead-letter queue within {timeout}s")


# Embedded only: in compose the function's code is baked into its image (make up STACK=compose rebuilds it).
@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_editing_the_function_takes_effect_on_the_next_invocation(stack):
    before = stack.function_pids()
    source = REPO / "lambda" / "ingest" / "__init__.py"
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    try:
        data, _ids = unique_users()
        key = f"incoming/users/reload_{uuid.uuid4().hex[:8]}.csv"
        stack.upload(key, data)
        assert stack.receipts_for(key)[0]["status"] == "loaded"
        assert stack.function_pids() != before  # the instance that took the file started again first
    finally:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_the_same_content_under_eight_keys_at_once_loads_exactly_once(stack):
    from concurrent.futures import ThreadPoolExecutor

    data, ids = unique_users(rows=5)
    keys = [f"incoming/users/burst_{uuid.uuid4().hex[:6]}_{i}.csv" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: stack.upload(key, data), keys))
    statuses = sorted(stack.receipts_for(key)[0]["status"] for key in keys)
    assert statuses == ["loaded"] + ["skipped"] * 7
    md5 = hashlib.md5(data).hexdigest()
    assert (
        stack.query("SELECT count(*) AS n FROM ingest_ledger.ingest_files WHERE md5 = %s AND status = 'loaded'", md5)[
            0
        ]["n"]
        == 1
    )
    assert len(stack.query("SELECT id FROM users WHERE id = ANY(%s)", ids)) == 5


def test_killing_the_function_during_copy_leaves_nothing_and_the_retry_loads_once(stack):
    base = uuid.uuid4().int % 500_000_000 + 1_500_000_000 - 1_100_000  # its own id range, within integer
    rows = 1_000_000
    data = b"id,email,full_name,country\n" + b"".join(
        f"{base + i},k{base + i}@example.com,Killed mid load {i:07d},DE\n".encode() for i in range(rows)
    )
    md5 = hashlib.md5(data).hexdigest()
    key = f"incoming/users/kill_{uuid.uuid4().hex[:8]}.csv"
    # The test holds a lock that the load needs before it can commit (its merge, or its first COPY into an
    # empty table), so the kill lands before the commit however fast the machine is: during the COPY if
    # it is seen, else while the load waits on the lock.
    with stack.table_locked("users"):
        stack.upload(key, data)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the function streams rows into PostgreSQL or waits
            busy = stack.query(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'ingest' "
                "AND (query LIKE 'COPY%%' OR wait_event_type = 'Lock')"
            )[0]["n"]
            if busy:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the load never reached COPY")
        killed = stack.crash_function()
        assert stack.query("SELECT count(*) AS n FROM users WHERE _ingest_md5 = %s", md5)[0]["n"] == 0
    receipts = stack.receipts_for(key, count=2, timeout=120)  # the killed delivery on record, then the retry's
    assert [(r["status"], r["reason"]) for r in receipts] == [("failed", "function_died"), ("loaded", None)]
    assert receipts[-1]["rows_loaded"] == rows
    assert stack.function_identity() != killed  # the runtime was started again
    assert stack.query("SELECT count(*) AS n FROM users WHERE _ingest_md5 = %s", md5)[0]["n"] == rows
    loaded = stack.query(
        "SELECT count(*) AS n FROM ingest_ledger.ingest_files WHERE md5 = %s AND status = 'loaded'", md5
    )
    assert loaded[0]["n"] == 1


def test_every_function_instance_loads_at_once_and_overlapping_upserts_all_land(stack):
    """One file per function instance, each held by the test at the table until every instance has one (so
    the loads overlap on any machine); then they go on together: every file loaded, every key once, with the
    values of the file that committed last."""
    n = stack.instances
    assert n > 1, "the stacks run several function instances by default, as AWS starts several batches"
    base = uuid.uuid4().int % 900_000_000 + 1_000_000
    ids = list(range(base, base + 50))
    keys = [f"incoming/users/instance_{i}_{uuid.uuid4().hex[:6]}.csv" for i in range(n)]
    with stack.table_locked("users"):
        for i, key in enumerate(keys, start=1):
            data = "id,email,full_name\n" + "".join(f"{k},v{i}.{k}@example.com,Version {i}\n" for k in ids)
            stack.upload(key, data.encode())
            stack.wait_for_lock_wait("users", count=i)  # this file's load waits too: i instances busy at once
    assert [stack.receipts_for(key)[0]["status"] for key in keys] == ["loaded"] * n
    rows = stack.query("SELECT id, full_name FROM users WHERE id = ANY(%s)", ids)
    assert sorted(r["id"] for r in rows) == ids
    [last] = stack.query(
        "SELECT object_key FROM ingest_ledger.ingest_files"
        " WHERE object_key = ANY(%s) AND status = 'loaded' ORDER BY id DESC LIMIT 1",
        keys,
    )
    assert {r["full_name"] for r in rows} == {f"Version {keys.index(last['object_key']) + 1}"}


def test_a_file_that_kills_the_function_on_every_delivery_is_on_record_before_the_dead_letter_queue(stack):
    """Each delivery is killed (SIGKILL, as the OOM killer would) while it works on the file, which it cannot
    finish: the test holds the table. The next delivery puts the dead one on record; the last the queue
    allows does not run the file again, ends failed itself, and the message goes to the dead-letter queue."""
    data, ids = unique_users(rows=3)
    key = f"incoming/users/deadly_{uuid.uuid4().hex[:8]}.csv"
    with stack.table_locked("users"):
        stack.upload(key, data)
        stack.end_deliveries(key, 2, stack.crash_function)
        receipts = stack.receipts_for(key, count=3, timeout=120)
        assert [(r["status"], r["reason"]) for r in receipts] == [("failed", "function_died")] * 3
        assert "delivery 1 of this file" in receipts[0]["message"] and "never answered" in receipts[0]["message"]
        assert "delivery 2 of this file" in receipts[1]["message"]
        assert "died on this file 2 time(s)" in receipts[2]["message"]
        assert _wait_for_dead_letter(stack, key) == [key]
    entries = stack.query(
        "SELECT status, reason FROM ingest_ledger.ingest_files WHERE object_key = %s ORDER BY id", key
    )
    assert [(e["status"], e["reason"]) for e in entries] == [("failed", "function_died")] * 3
    replayed = ingest("replay", "--dead-letters", env=stack.env)
    assert replayed.returncode == 0 and "moved 1 message" in replayed.stdout, replayed.stderr
    assert stack.receipts_for(key, count=4, timeout=120)[-1]["status"] == "loaded"
    assert len(stack.query("SELECT id FROM users WHERE id = ANY(%s)", ids)) == 3
