"""The service against a real moto server and a real PostgreSQL: loads, outputs, ledger, receipts."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

from ingest import service
from ingest.adapters import postgres as postgres_adapter
from ingest.adapters import s3 as s3_adapter
from ingest.adapters.evolution import ContractTableMismatch
from ingest.adapters.postgres import Database
from ingest.adapters.s3 import Download, ObjectStore
from ingest.contract import ContractRegistry, parse_contract
from ingest.service import Dependencies, ingest_object
from tests.conftest import SAMPLES
from tests.integration.objects import big_users_file, upload_multipart


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_clean_file_loads_normalized_rows_with_ledger_outputs_and_receipt(pipeline):
    data = (SAMPLES / "users.csv").read_bytes()
    pipeline.upload("incoming/users.csv", data)
    receipt = ingest_object(pipeline.bucket, "incoming/users.csv", pipeline.deps, request_id="req-1")

    assert receipt.status == "loaded" and receipt.rows_loaded == 5 and receipt.md5 == md5(data)
    rows = pipeline.query("SELECT * FROM users ORDER BY id")
    assert [r["email"] for r in rows][:2] == ["ada.lovelace@example.com", "alan.turing@example.com"]
    assert rows[0]["full_name"] == "Ada Lovelace" and rows[0]["country"] == "GB"
    assert str(rows[0]["signup_date"]) == "2024-01-15" and str(rows[0]["balance"]) == "1234.50"
    assert rows[2]["is_active"] is True and rows[3]["age"] is None
    assert {r["_ingest_md5"] for r in rows} == {md5(data)}

    [entry] = pipeline.query("SELECT * FROM ingest_ledger.ingest_files")
    assert (entry["status"], entry["rows_total"], entry["rows_valid"], entry["rows_loaded"]) == ("loaded", 5, 5, 5)
    assert entry["md5"] == md5(data) and entry["object_key"] == "incoming/users.csv"
    assert entry["request_id"] == "req-1" and entry["encoding"] == "utf-8" and entry["delimiter"] == ","

    assert pipeline.keys() == ["incoming/users.csv", f"processed/users/{md5(data)}.csv"]
    processed = pipeline.get(f"processed/users/{md5(data)}.csv").decode()
    assert processed.splitlines()[1] == "1,ada.lovelace@example.com,Ada Lovelace,2024-01-15,GB,36,1234.50,true"

    [published] = pipeline.receipts()
    assert published["status"] == "loaded" and published["table"] == "users" and published["rows_loaded"] == 5
    assert published["_attributes"] == {"status": "loaded", "table": "users"}
    assert published["_subject"].startswith("ingest loaded: incoming/users.csv")


def test_bad_rows_are_reported_and_good_rows_load(pipeline):
    data = (SAMPLES / "users_with_errors.csv").read_bytes()
    pipeline.upload("incoming/users_bad.csv", data)
    receipt = ingest_object(pipeline.bucket, "incoming/users_bad.csv", pipeline.deps)

    assert (receipt.status, receipt.rows_valid, receipt.rows_rejected) == ("loaded", 6, 4)
    assert [r["id"] for r in pipeline.query("SELECT id FROM users ORDER BY id")] == [10, 14, 15, 16, 17, 18]
    h = md5(data)
    assert receipt.errors_key == f"errors/users/{h}.csv" and receipt.summary_key == f"errors/users/{h}.json"
    errors_csv = pipeline.get(f"errors/users/{h}.csv").decode().splitlines()
    assert errors_csv[0] == "line,column,rule,value,message" and len(errors_csv) == 1 + 7
    summary = pipeline.get(f"errors/users/{h}.json")
    assert b'"rows_rejected": 4' in summary and b'"status": "loaded"' in summary
    assert receipt.errors[0]["rule"] == "pattern" and receipt.errors[0]["line"] == 3


def test_same_content_under_another_key_is_skipped(pipeline):
    data = (SAMPLES / "users.csv").read_bytes()
    pipeline.upload("incoming/users.csv", data)
    pipeline.upload("incoming/users/copy.csv", data)
    assert ingest_object(pipeline.bucket, "incoming/users.csv", pipeline.deps).status == "loaded"
    second = ingest_object(pipeline.bucket, "incoming/users/copy.csv", pipeline.deps)
    third = ingest_object(pipeline.bucket, "incoming/users.csv", pipeline.deps)
    assert second.status == third.status == "skipped"
    assert "already loaded into table users from s3://ingest-test/incoming/users.csv" in second.message
    statuses = [r["status"] for r in pipeline.query("SELECT status FROM ingest_ledger.ingest_files ORDER BY id")]
    assert statuses == ["loaded", "skipped", "skipped"]
    assert pipeline.query("SELECT count(*) AS n FROM users")[0]["n"] == 5


def test_key_without_contract_is_rejected_never_guessed(pipeline):
    data = (SAMPLES / "inventory.csv").read_bytes()
    pipeline.upload("incoming/inventory.csv", data)
    receipt = ingest_object(pipeline.bucket, "incoming/inventory.csv", pipeline.deps)
    assert receipt.status == "rejected" and receipt.reason == "no_contract"
    assert "incoming/inventory.csv" in receipt.message and "users" in receipt.message
    assert pipeline.keys("errors/") == [f"errors/_unmatched/{md5(data)}.json"]
    assert pipeline.keys("incoming/") == ["incoming/inventory.csv"]  # the original stays
    [entry] = pipeline.query("SELECT status, reason, contract FROM ingest_ledger.ingest_files")
    assert entry == {"status": "rejected", "reason": "no_contract", "contract": None}
    assert pipeline.receipts()[0]["_attributes"] == {"status": "rejected"}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty_object"),
        (b"id,email\n1,a@b.co\n", "missing_columns"),
        (b"id,email,full_name\n", "no_data_rows"),
        (b"id,email,full_name\n1,bad,A\n2,bad,B\n3,c@d.ef,C\n", "too_many_rejected_rows"),
        (b"\x00\x01\x02\x03" * 100, "binary_content"),
    ],
)
def test_rejected_files_load_nothing_and_say_why(pipeline, data, reason):
    pipeline.upload("incoming/users.csv", data)
    receipt = ingest_object(pipeline.bucket, "incoming/users.csv", pipeline.deps)
    assert receipt.status == "rejected" and receipt.reason == reason
    assert pipeline.query("SELECT count(*) AS n FROM users")[0]["n"] == 0
    assert pipeline.keys("processed/") == []
    summary = pipeline.get(f"errors/users/{md5(data)}.json")
    assert f'"reason": "{reason}"'.encode() in summary
    assert pipeline.query("SELECT status, reason FROM ingest_ledger.ingest_files") == [
        {"status": "rejected", "reason": reason}
    ]


def test_rejecting_too_many_bad_rows_still_writes_the_row_errors(pipeline):
    data = b"id,email,full_name\n1,bad,A\n2,bad,B\n3,c@d.ef,C\n"
    pipeline.upload("incoming/users.csv", data)
    receipt = ingest_object(pipeline.bucket, "incoming/users.csv", pipeline.deps)
    assert receipt.errors_key == f"errors/users/{md5(data)}.csv"
    assert len(pipeline.get(receipt.errors_key).splitlines()) == 3


@pytest.fixture(params=["merge", "on conflict"])
def upsert_statement(request, pipeline, monkeypatch):
    """Upserts over existing rows use MERGE on PostgreSQL 15 and later, INSERT … ON CONFLICT before: both
    are run (the older one by making the server look like PostgreSQL 14)."""
    if request.param == "on conflict":
        pipeline.deps.database.engine.connect().close()  # the dialect reads the server version on first connect
        monkeypatch.setattr(pipeline.deps.database.engine.dialect, "server_version_info", (14, 0))
    return request.param


def test_upsert_updates_existing_rows(pipeline, upsert_statement):
    pipeline.upload("incoming/users.csv", (SAMPLES / "users.csv").read_bytes())
    ingest_object(pipeline.bucket, "incoming/users.csv", pipeline.deps)
    pipeline.upload("incoming/users_update.csv", b"id,email,full_name,age\n1,new@example.com,Ada L,37\n9,n@e.co,N,\n")
    receipt = ingest_object(pipeline.bucket, "incoming/users_update.csv", pipeline.deps)
    assert receipt.rows_loaded == 2
    rows = {r["id"]: r for r in pipeline.query("SELECT * FROM users")}
    assert len(rows) == 6 and rows[1]["email"] == "new@example.com" and rows[1]["age"] == 37
    assert rows[1]["signup_date"] is None  # upsert writes the whole row the file describes


def test_upsert_rewrites_only_the_rows_that_changed(pipeline, upsert_statement):
    first = b"id,email,full_name,age\n1,a@b.co,Ann,30\n2,c@d.co,Bo,40\n3,e@f.co,Cy,50\n"
    pipeline.upload("incoming/users.csv", first)
    ingest_object(pipeline.bucket, "incoming/users.csv", pipeline.deps)
    before = {r["id"]: r for r in pipeline.query("SELECT id, _ingest_md5, _ingest_loaded_at FROM users")}
    second = b"id,email,full_name,age\n1,a@b.co,Ann,30\n2,c@d.co,Bo,41\n4,g@h.co,Di,\n"
    pipeline.upload("incoming/users_2.csv", second)
    receipt = ingest_object(pipeline.bucket, "incoming/users_2.csv", pipeline.deps)
    assert receipt.status == "loaded" and receipt.rows_loaded == 2  # 2 changed, 4 new; 1 as it was
    after = {r["id"]: r for r in pipeline.query("SELECT id, age, _ingest_md5, _ingest_loaded_at FROM users")}
    assert after[1] == {**before[1], "age": 30}  # untouched: lineage and load time of the first file
    assert after[2]["age"] == 41 and after[2]["_ingest_md5"] == md5(second)
    assert after[2]["_ingest_loaded_at"] > before[2]["_ingest_loaded_at"]
    assert after[3]["_ingest_md5"] == md5(first) and after[4]["_ingest_md5"] == md5(second)


def test_append_contract_with_semicolons_and_timestamps(pipeline):
    pipeline.upload("incoming/test/run 1.csv", (SAMPLES / "test.csv").read_bytes())
    receipt = ingest_object(pipeline.bucket, "incoming/test/run 1.csv", pipeline.deps)
    assert receipt.status == "loaded" and receipt.rows_loaded == 4
    pipeline.upload("incoming/test_2.csv", b"sample_id,measured_at,instrument\nS-9,2024-06-02T00:00:00Z,x\n")
    ingest_object(pipeline.bucket, "incoming/test_2.csv", pipeline.deps)
    rows = pipeline.query("SELECT sample_id, measured_at AT TIME ZONE 'UTC' AS utc FROM test ORDER BY sample_id")
    assert len(rows) == 5 and str(rows[1]["utc"]) == "2024-06-01 07:00:00"


def test_replace_mode_swaps_the_table_contents(pipeline, tmp_path):
    contract = parse_contract(
        "prices",
        {
            "table": "prices",
            "keys": ["incoming/prices.csv"],
            "load": {"mode": "replace"},
            "columns": [{"name": "sku", "required": True}, {"name": "price", "type": "numeric"}],
        },
    )
    pipeline.deps.contracts = ContractRegistry([contract])
    pipeline.upload("incoming/prices.csv", b"sku,price\na,1\nb,2\n")
    ingest_object(pipeline.bucket, "incoming/prices.csv", pipeline.deps)
    pipeline.upload("incoming/prices.csv", b"sku,price\nc,3\n")
    ingest_object(pipeline.bucket, "incoming/prices.csv", pipeline.deps)
    assert pipeline.query("SELECT sku FROM prices") == [{"sku": "c"}]


@pytest.mark.parametrize(
    ("compress", "suffix", "name"),
    [(gzip.compress, ".gz", "gzip"), (bz2.compress, ".bz2", "bzip2"), (lzma.compress, ".xz", "xz")],
)
def test_a_compressed_upload_loads(pipeline, compress, suffix, name):
    # a .csv.bz2 or .csv.xz (as public data sets ship) was refused as "not text"
    data = compress((SAMPLES / "users.csv").read_bytes())
    pipeline.upload("incoming/users.csv" + suffix, data)
    receipt = ingest_object(pipeline.bucket, "incoming/users.csv" + suffix, pipeline.deps)
    assert receipt.status == "loaded" and receipt.rows_loaded == 5
    assert pipeline.query("SELECT compression FROM ingest_ledger.ingest_files") == [{"compression": name}]


@pytest.mark.parametrize("room_to_spool", [True, False])
def test_multipart_upload_is_hashed_by_content_and_deduplicated_with_a_plain_upload(
    pipeline, monkeypatch, room_to_spool
):
    """A multipart ETag is no MD5: the object is hashed and, where the temporary folder has room, processed
    from a local copy of those very bytes (one GET); without room, it is read from S3 again."""
    if not room_to_spool:
        monkeypatch.setattr(s3_adapter, "SPOOL_MARGIN_BYTES", 1 << 60)
    reads = []
    download = ObjectStore.download
    monkeypatch.setattr(ObjectStore, "download", lambda self, *a, **k: reads.append(a[1]) or download(self, *a, **k))
    data = big_users_file(130_000)
    assert len(data) > 5 * 1024 * 1024
    upload_multipart(pipeline, "incoming/users/big.csv", data)

    receipt = ingest_object(pipeline.bucket, "incoming/users/big.csv", pipeline.deps)
    assert receipt.status == "loaded" and receipt.md5 == md5(data) and receipt.rows_loaded == 130_000
    assert reads == ["incoming/users/big.csv"] * (1 if room_to_spool else 2)
    processed = pipeline.get(f"processed/users/{md5(data)}.csv")
    assert processed.count(b"\n") == 130_001
    assert len(processed) > s3_adapter.PART_BYTES  # so processed/ went up in parts, each with its CRC32
    head = pipeline.aws.s3.head_object(
        Bucket=pipeline.bucket, Key=f"processed/users/{md5(data)}.csv", ChecksumMode="ENABLED"
    )
    assert head["ChecksumCRC32"]  # the composite of the parts' (none without an algorithm named at creation)
    pipeline.upload("incoming/users/same.csv", data)
    assert ingest_object(pipeline.bucket, "incoming/users/same.csv", pipeline.deps).status == "skipped"


def test_the_spools_hash_thread_gives_the_md5_of_every_chunk_and_stops_when_abandoned():
    chunks = [bytes([i]) * (i * 4099 + 1) for i in range(40)]  # more than the queue holds, of odd sizes
    hasher = s3_adapter._Hasher()
    for chunk in chunks:
        hasher.update(chunk)
    assert hasher.hexdigest() == md5(b"".join(chunks))
    abandoned = s3_adapter._Hasher()
    abandoned.update(b"x" * 10)
    abandoned.stop()  # a download that failed: the thread ends, nobody asks for the digest
    abandoned._thread.join(5)
    assert not abandoned._thread.is_alive()


def hold_download(monkeypatch, after_bytes: int) -> threading.Event:
    """Make every S3 download stop after ``after_bytes`` until the returned event is set (or fail after 30 s)."""
    release = threading.Event()
    iterate = Download.__iter__

    def held(self):
        read = 0
        for chunk in iterate(self):
            if read >= after_bytes and not release.wait(30):
                raise TimeoutError("the held download was never released")
            read += len(chunk)
            yield chunk

    monkeypatch.setattr(Download, "__iter__", held)
    return release


def test_a_multipart_upload_is_processed_while_it_is_hashed_with_bounded_output_waiting(pipeline, monkeypatch):
    """Processing starts from the spool's first bytes; its output waits (at most OPEN_WAIT_BYTES, then
    processing waits too) until the MD5 is known, then goes to the load and processed/ named by it."""
    data = big_users_file(300_000)  # ~19 MB
    upload_multipart(pipeline, "incoming/users/held.csv", data)
    release = hold_download(monkeypatch, after_bytes=12 * 1024 * 1024)
    monkeypatch.setattr(service, "OPEN_WAIT_BYTES", 2 * 1024 * 1024)
    seen = []  # (MD5 known, bytes waiting) at each valid block
    valid = service._Outputs.valid

    def watched(self, block):
        seen.append((self.attempt.md5 is not None, self._waiting_bytes))
        if self._waiting_bytes + len(block) > service.OPEN_WAIT_BYTES:
            release.set()  # the output waiting reached its bound: the download may go on
        valid(self, block)

    monkeypatch.setattr(service._Outputs, "valid", watched)
    receipt = ingest_object(pipeline.bucket, "incoming/users/held.csv", pipeline.deps)

    assert receipt.status == "loaded" and receipt.md5 == md5(data) and receipt.rows_loaded == 300_000
    assert seen[0] == (False, 0)  # processing emitted rows before the last byte had arrived
    assert 0 < max(waiting for _known, waiting in seen) <= 2 * 1024 * 1024
    assert seen[-1][0] and release.is_set()
    assert pipeline.get(f"processed/users/{md5(data)}.csv").count(b"\n") == 300_001
    assert pipeline.query("SELECT count(*) AS n, min(_ingest_md5) AS m FROM users") == [{"n": 300_000, "m": md5(data)}]


def test_a_multipart_upload_rejected_before_its_hash_is_recorded_under_its_md5_then_answered_by_the_ledger(
    pipeline, monkeypatch
):
    """A rejection midway (a full errors CSV, no bad row allowed) can come before the last byte arrived:
    the errors CSV that waited goes out under the MD5 once it is known, nothing loads, and a second delivery
    is answered from the ledger."""
    bad = b"".join(f"{i},not-an-email,U\n".encode() for i in range(1, 11_000))
    data = b"id,email,full_name\n" + bad + big_users_file(200_000).split(b"\n", 1)[1].replace(b"\n1,", b"\n0,", 1)
    key = "incoming/users/bad_then_good.csv"
    upload_multipart(pipeline, key, data)
    pipeline.change_users_contract(max_rejected_share=0.0)  # hopeless once the errors CSV is full
    release = hold_download(monkeypatch, after_bytes=6 * 1024 * 1024)
    errors_only = service._Outputs.errors_only
    opened_before_rejection = []

    def rejected(self):
        opened_before_rejection.append(self.opened)
        release.set()
        return errors_only(self)

    monkeypatch.setattr(service._Outputs, "errors_only", rejected)
    first = ingest_object(pipeline.bucket, key, pipeline.deps)
    assert (first.status, first.reason, first.md5) == ("rejected", "too_many_rejected_rows", md5(data))
    assert opened_before_rejection == [False]
    assert first.errors_key == f"errors/users/{md5(data)}.csv"
    assert pipeline.get(first.errors_key).decode().splitlines()[1].startswith("2,email,pattern,not-an-email")
    assert not pipeline.keys("processed/") and not pipeline.query(
        "SELECT 1 FROM ingest_ledger.ingest_files WHERE status = 'loaded'"
    )

    second = ingest_object(pipeline.bucket, key, pipeline.deps)
    assert (second.status, second.reason, second.md5) == ("skipped", "already_rejected", md5(data))


def deliver_at_once(pipeline, keys: list[str]) -> list[str]:
    """Ingest every key in a thread of its own (own connections), all released at the same moment."""
    results: list[str] = []
    barrier = threading.Barrier(len(keys))

    def deliver(key: str) -> None:
        deps = Dependencies(
            pipeline.deps.contracts, pipeline.deps.store, Database(pipeline.database_url), pipeline.deps.notifier
        )
        barrier.wait()
        results.append(ingest_object(pipeline.bucket, key, deps).status)
        deps.database.dispose()

    threads = [threading.Thread(target=deliver, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_deliveries_of_the_same_content_load_exactly_once(pipeline):
    data = (SAMPLES / "users.csv").read_bytes()
    keys = [f"incoming/users/copy_{i}.csv" for i in range(8)]
    for key in keys:
        pipeline.upload(key, data)
    results = deliver_at_once(pipeline, keys)
    assert sorted(results) == ["loaded"] + ["skipped"] * 7
    assert pipeline.query("SELECT count(*) AS n FROM users")[0]["n"] == 5
    assert pipeline.query("SELECT count(*) AS n FROM ingest_ledger.ingest_files WHERE status = 'loaded'")[0]["n"] == 1


def test_database_down_fails_loudly_keeps_the_object_and_publishes_failed(pipeline):
    data = (SAMPLES / "users.csv").read_bytes()
    pipeline.upload("incoming/users.csv", data)
    pipeline.deps.database = Database("postgresql://nobody@127.0.0.1:1/none", connect_timeout=1)
    with pytest.raises(Exception, match="connection"):
        ingest_object(pipeline.bucket, "incoming/users.csv", pipeline.deps)
    [published] = pipeline.receipts()
    assert (published["status"], published["reason"]) == ("failed", "database_unreachable")
    assert published["message"].startswith("PostgreSQL did not accept a connection: ")
    assert published["message"].endswith("nothing was loaded and the delivery will be retried")
    assert pipeline.keys() == ["incoming/users.csv"]


def test_concurrent_upserts_of_overlapping_keys_into_one_table_all_load(pipeline):
    """Different files that share keys, merged at the same moment: each load waits for the table in turn,
    none fails on a key another one inserted, and the table ends with every key once."""
    pipeline.upload("incoming/users/seed.csv", b"id,email,full_name\n1,s@e.ed,Seed\n")
    ingest_object(pipeline.bucket, "incoming/users/seed.csv", pipeline.deps)  # the table has rows: staging + merge
    keys = [f"incoming/users/part_{i}.csv" for i in range(6)]
    for i, key in enumerate(keys):
        rows = "".join(f"{n},u{n}.{i}@example.com,User {n} v{i}\n" for n in range(1, 5000))
        pipeline.upload(key, ("id,email,full_name\n" + rows).encode())
    results = deliver_at_once(pipeline, keys)
    assert results == ["loaded"] * len(keys)
    assert pipeline.query("SELECT count(*) AS n, count(DISTINCT id) AS d FROM users")[0] == {"n": 4999, "d": 4999}


def test_a_failure_with_a_long_message_records_its_beginning_and_says_how_long_it_was(pipeline, monkeypatch):
    # a failure's message was cut at 2,000 characters without a word, as if it ended there
    pipeline.upload("incoming/users/long.csv", (SAMPLES / "users.csv").read_bytes())

    def refusing(*_args, **_kwargs):
        raise RuntimeError("the server said: " + "no " * 3_000)

    monkeypatch.setattr(pipeline.deps.store, "head", refusing)
    with pytest.raises(RuntimeError):
        ingest_object(pipeline.bucket, "incoming/users/long.csv", pipeline.deps)
    [entry] = pipeline.query("SELECT status, reason, error FROM ingest_ledger.ingest_files")
    assert (entry["status"], entry["reason"]) == ("failed", "error") and len(entry["error"]) <= 2_000
    assert entry["error"].startswith("RuntimeError: the server said: no no")
    assert entry["error"].endswith("… (cut: 9,031 characters in all)")
    assert pipeline.receipts()[0]["message"] == entry["error"]


def test_a_multipart_download_that_breaks_midway_fails_the_file_and_leaves_nothing(pipeline, monkeypatch):
    data = big_users_file(200_000)
    upload_multipart(pipeline, "incoming/users/broken.csv", data)
    iterate = Download.__iter__

    def breaking(self):
        for read, chunk in enumerate(iterate(self)):
            if read == 6:
                raise ConnectionResetError("the connection broke")
            yield chunk

    monkeypatch.setattr(Download, "__iter__", breaking)
    with pytest.raises(ConnectionResetError):
        ingest_object(pipeline.bucket, "incoming/users/broken.csv", pipeline.deps)
    [receipt] = pipeline.receipts()
    assert receipt["status"] == "failed" and "the connection broke" in receipt["message"]
    assert pipeline.keys() == ["incoming/users/broken.csv"]
    assert pipeline.query("SELECT status, md5 FROM ingest_ledger.ingest_files") == [
        {"status": "failed", "md5": "unknown"}
    ]
    monkeypatch.setattr(Download, "__iter__", iterate)  # the retry loads
    assert ingest_object(pipeline.bucket, "incoming/users/broken.csv", pipeline.deps).rows_loaded == 200_000


def test_a_multipart_upload_whose_table_breaks_its_contract_fails_on_record_under_its_md5(pipeline):
    """The load gets its table ready while the upload is still being hashed; a table the contract cannot
    load fails the file there, and the failure still names the content (the hash is waited for)."""
    with psycopg.connect(pipeline.database_url, autocommit=True) as admin:
        admin.execute("CREATE TABLE users (id text PRIMARY KEY, email text NOT NULL, full_name text NOT NULL)")
        admin.execute("INSERT INTO users VALUES ('x1', 'x@example.com', 'X')")  # (an empty one would be changed)
    data = big_users_file(120_000)
    upload_multipart(pipeline, "incoming/users/mismatch.csv", data)
    with pytest.raises(ContractTableMismatch):
        ingest_object(pipeline.bucket, "incoming/users/mismatch.csv", pipeline.deps)
    [receipt] = pipeline.receipts()
    assert (receipt["status"], receipt["reason"], receipt["md5"]) == ("failed", "contract_table_mismatch", md5(data))
    assert pipeline.keys() == ["incoming/users/mismatch.csv"]


def test_rows_waiting_for_the_copy_are_bounded_and_the_writer_waits_past_the_bound(pipeline, monkeypatch):
    """The caller hands blocks to the COPY without waiting for PostgreSQL, up to QUEUED_BYTES; past that it
    waits (memory stays flat); the rows all arrive once the server reads again."""
    monkeypatch.setattr(postgres_adapter, "QUEUED_BYTES", 3 * 1024 * 1024)
    contract = pipeline.deps.contracts["users"]
    load = pipeline.deps.database.begin_load(contract, "0" * 32)
    server_reads = threading.Event()
    copy_write = load._copy.write
    monkeypatch.setattr(load._copy, "write", lambda block: server_reads.wait(30) and copy_write(block))
    block = b"".join(f"{i},u{i}@example.com,User {i:06d},,,,,\n".encode() for i in range(1, 200_000))
    header, rows = b"id,email,full_name\n", [block[i : i + 1024 * 1024] for i in range(0, len(block), 1024 * 1024)]
    rows = [header + rows[0], *rows[1:]]
    assert len(rows) >= 4 and all(len(r) <= 1024 * 1024 + len(header) for r in rows)
    handed = []

    def caller() -> None:
        for part in rows:
            load.write(part)
            handed.append(len(part))

    thread = threading.Thread(target=caller)
    thread.start()
    deadline = time.monotonic() + 30
    while not load._dequeued._waiters and time.monotonic() < deadline:  # until the caller waits for room
        time.sleep(0.01)
    n, bound = len(handed), 3 * 1024 * 1024
    assert load._dequeued._waiters and 0 < n < len(rows)
    assert load._queued == sum(len(r) for r in rows[:n]) <= bound < load._queued + len(rows[n])
    server_reads.set()
    thread.join(30)
    assert sum(handed) == sum(len(r) for r in rows)
    entry = {"md5": "0" * 32, "bucket": "b", "object_key": "k", "table_name": "users", "started_at": datetime.now(UTC)}
    load.commit(entry)
    assert pipeline.query("SELECT count(*) AS n FROM users") == [{"n": 199_999}]


def test_a_multipart_upload_handed_to_the_exact_engine_midway_loads_once(pipeline, monkeypatch):
    """Midway through a multipart upload the columnar engine meets what only the exact engine reads
    exactly (a quote inside an unquoted field): what it prepared or wrote is undone, and the exact engine
    starts again from the spool's first byte."""
    rows = big_users_file(150_000).split(b"\n")
    rows[140_000] = b'140000,q@example.com,Quote "inside" an unquoted field'
    data = b"\n".join(rows)
    upload_multipart(pipeline, "incoming/users/quirky.csv", data)
    engines = []
    process = service.process
    monkeypatch.setattr(service, "process", lambda *a, **k: engines.append(k["engine"]) or process(*a, **k))
    receipt = ingest_object(pipeline.bucket, "incoming/users/quirky.csv", pipeline.deps)
    assert engines == ["auto", "exact"]
    assert (receipt.status, receipt.md5, receipt.rows_loaded) == ("loaded", md5(data), 150_000)
    [row] = pipeline.query("SELECT full_name FROM users WHERE id = 140000")
    assert row["full_name"] == 'Quote "inside" an unquoted field'
    assert pipeline.get(f"processed/users/{md5(data)}.csv").count(b"\n") == 150_001


def test_tables_dropped_under_a_warm_runtime_are_made_again(pipeline):
    """A developer starts afresh (drops the table and the ledger) while the function stays warm: the next
    file makes both again and loads, instead of failing on tables that are gone."""
    pipeline.upload("incoming/users.csv", (SAMPLES / "users.csv").read_bytes())
    assert ingest_object(pipeline.bucket, "incoming/users.csv", pipeline.deps).status == "loaded"
    with psycopg.connect(pipeline.database_url, autocommit=True) as admin:
        admin.execute("DROP TABLE users; DROP TABLE ingest_ledger.ingest_files")
    pipeline.upload("incoming/users/again.csv", b"id,email,full_name\n7,g@h.ij,Gus\n")
    receipt = ingest_object(pipeline.bucket, "incoming/users/again.csv", pipeline.deps)
    assert receipt.status == "loaded" and receipt.rows_loaded == 1
    assert pipeline.query("SELECT id FROM users") == [{"id": 7}]
    assert [r["status"] for r in pipeline.query("SELECT status FROM ingest_ledger.ingest_files")] == ["loaded"]


def test_the_file_is_read_and_validated_while_its_table_is_held_by_another_session(pipeline, monkeypatch):
    """The load readies its table (compares it with the contract, takes the lock it needs) in a thread of its
    own while processing starts: a table another session holds delays the load's commit, not the reading."""
    pipeline.deps.database.ensure_tables(pipeline.deps.contracts["users"])
    pipeline.upload("incoming/users/held.csv", (SAMPLES / "users.csv").read_bytes())
    processing = threading.Event()
    process = service.process

    def observed(*args, **kwargs):
        processing.set()
        return process(*args, **kwargs)

    monkeypatch.setattr(service, "process", observed)
    receipts: list = []
    with psycopg.connect(pipeline.database_url) as holder:
        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        worker = threading.Thread(
            target=lambda: receipts.append(ingest_object(pipeline.bucket, "incoming/users/held.csv", pipeline.deps))
        )
        worker.start()
        assert processing.wait(30), "processing waited for the table another session holds"
        assert worker.is_alive() and not receipts  # the load itself waits for the table
    worker.join(60)  # the holder's transaction ended with its connection
    assert [r.status for r in receipts] == ["loaded"]


def test_each_file_writes_its_metrics_as_one_emf_line_with_the_lag_from_upload_to_commit(pipeline, capsys):
    import json as json_
    from datetime import timedelta

    data = (SAMPLES / "users.csv").read_bytes()
    pipeline.upload("incoming/users/metrics.csv", data)
    uploaded = datetime.now(UTC) - timedelta(seconds=3)
    receipt = ingest_object(pipeline.bucket, "incoming/users/metrics.csv", pipeline.deps, event_time=uploaded)
    pipeline.upload("incoming/inventory.csv", b"sku,qty\n1,2\n")
    ingest_object(pipeline.bucket, "incoming/inventory.csv", pipeline.deps)  # no contract: rejected
    lines = [json_.loads(line) for line in capsys.readouterr().out.splitlines() if '"CloudWatchMetrics"' in line]
    loaded, rejected = lines
    assert loaded["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Ingest"
    assert loaded["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["outcome", "service"]]
    assert (loaded["outcome"], loaded["Files"], loaded["RowsLoaded"]) == ("loaded", [1.0], [5.0])
    assert loaded["Lag"][0] >= 3 and loaded["key"] == "incoming/users/metrics.csv" and loaded["md5"] == receipt.md5
    assert (rejected["outcome"], rejected["reason"], "Lag" in rejected) == ("rejected", "no_contract", False)
    assert ["outcome", "reason"] in rejected["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
    [entry] = pipeline.query("SELECT lag_ms FROM ingest_ledger.ingest_files WHERE status = 'loaded'")
    assert entry["lag_ms"] >= 3000
