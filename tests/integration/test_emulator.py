"""The embedded stack's emulator (devstack.moto_server): multipart objects complete as S3 completes them, and
objects download whole, streamed or not."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib

import pytest
from botocore.exceptions import ClientError

from devstack import moto_server

PART = 5 * 1024 * 1024
BUCKET = "emulator-test"


def _parts(data: bytes) -> list[bytes]:
    return [data[i : i + PART] for i in range(0, len(data), PART)]


def _upload(s3, key: str, data: bytes, algorithm: str | None) -> tuple[dict, list[dict]]:
    extra = {"ChecksumAlgorithm": algorithm} if algorithm else {}
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key, **extra)["UploadId"]
    parts = []
    for number, body in enumerate(_parts(data), 1):
        answer = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=body, **extra)
        part = {"PartNumber": number, "ETag": answer["ETag"]}
        if algorithm:
            part[f"Checksum{algorithm}"] = answer[f"Checksum{algorithm}"]
        parts.append(part)
    completed = s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    return completed, parts


def test_the_pinned_moto_gets_the_faster_completion():
    """A moto upgrade must be looked at: the completion this module replaces is that release's."""
    assert moto_server.patch(), f"moto is not {moto_server.WRITTEN_FOR}: check devstack.moto_server against it"


def test_a_parts_file_reads_its_parts_as_one_file_through_descriptors_of_its_own(tmp_path):
    """Any seek and read, across the parts' seams and past the end, gives the bytes of the parts joined; a
    dup reads on after the original (and the parts' own files) closed."""
    parts = [os.urandom(n) for n in (7, 1, 13, 5)]
    fds: list[tuple[int | bytes, int]] = []
    for i, part in enumerate(parts):
        if i == 2:  # a part moto kept in memory: read from its bytes
            fds.append((part, len(part)))
            continue
        path = tmp_path / f"part{i}"
        path.write_bytes(part)
        fds.append((os.open(path, os.O_RDONLY), len(part)))
    files = moto_server.PartsFile(fds)
    joined = b"".join(parts)
    assert len(files) == len(joined) and files.read() == joined and files.read() == b""
    for start in range(len(joined) + 2):
        for n in (-1, 0, 1, 2, 6, 8, 14, 30):
            files.seek(start)
            expected = joined[start:] if n < 0 else joined[start : start + n]
            assert files.read(n) == expected, (start, n)
            assert files.tell() == start + len(expected)
    files.seek(-3, os.SEEK_END)
    assert files.read() == joined[-3:]
    copy = files.dup()
    files.close()
    assert b"".join(copy.chunks(0, len(joined), 4)) == joined
    assert all(len(chunk) <= 4 for chunk in copy.chunks(0, len(joined), 4))
    copy.close()


@pytest.mark.integration
@pytest.mark.parametrize("algorithm", ["CRC32", None])
def test_a_multipart_object_has_its_parts_bytes_etag_and_checksum(aws, algorithm):
    """Two full parts and a short last one (kept in memory by moto, the others in files): the object is their
    bytes in order, its ETag the MD5 of the parts' MD5s with their count, and with CRC32 parts its checksum
    the composite S3 computes (the CRC32 of the parts' CRC32s)."""
    s3 = aws.s3
    s3.create_bucket(Bucket=BUCKET)
    data = os.urandom(2 * PART + 12_345)
    completed, _parts_sent = _upload(s3, "out.csv", data, algorithm)

    got = s3.get_object(Bucket=BUCKET, Key="out.csv")
    assert got["Body"].read() == data
    md5s = b"".join(hashlib.md5(part).digest() for part in _parts(data))
    assert completed["ETag"].strip('"') == f"{hashlib.md5(md5s).hexdigest()}-3"
    assert got["ETag"] == completed["ETag"] and got["ContentLength"] == len(data)
    ranged = s3.get_object(Bucket=BUCKET, Key="out.csv", Range=f"bytes={PART - 10}-{PART + 9}")["Body"].read()
    assert ranged == data[PART - 10 : PART + 10]  # across the first two parts' seam
    if algorithm == "CRC32":
        crcs = b"".join(zlib.crc32(part).to_bytes(4, "big") for part in _parts(data))
        composite = base64.b64encode(zlib.crc32(crcs).to_bytes(4, "big")).decode()
        head = s3.head_object(Bucket=BUCKET, Key="out.csv", ChecksumMode="ENABLED")
        assert head["ChecksumCRC32"].split("-")[0] == composite


@pytest.mark.integration
def test_a_completion_naming_a_wrong_part_is_refused_and_the_object_never_appears(aws):
    s3 = aws.s3
    s3.create_bucket(Bucket=BUCKET)
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="bad.csv", ChecksumAlgorithm="CRC32")["UploadId"]
    answers = [
        s3.upload_part(
            Bucket=BUCKET,
            Key="bad.csv",
            UploadId=upload,
            PartNumber=n,
            Body=os.urandom(PART),
            ChecksumAlgorithm="CRC32",
        )
        for n in (1, 2)
    ]
    parts = [{"PartNumber": n, "ETag": a["ETag"]} for n, a in zip((1, 2), answers)]
    parts[1]["ETag"] = parts[0]["ETag"]
    with pytest.raises(ClientError, match="InvalidPart"):
        s3.complete_multipart_upload(Bucket=BUCKET, Key="bad.csv", UploadId=upload, MultipartUpload={"Parts": parts})
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


@pytest.mark.integration
@pytest.mark.parametrize("size", [100, PART + 1])
def test_an_object_downloads_whole_whether_kept_in_memory_or_streamed_from_its_file(aws, size):
    s3 = aws.s3
    s3.create_bucket(Bucket=BUCKET)
    data = os.urandom(size)
    put = s3.put_object(Bucket=BUCKET, Key="in.csv", Body=data)
    got = s3.get_object(Bucket=BUCKET, Key="in.csv", IfMatch=put["ETag"])
    assert got["ContentLength"] == size and got["ETag"] == put["ETag"]
    assert got["Body"].read() == data
    tail = s3.get_object(Bucket=BUCKET, Key="in.csv", Range="bytes=-7")["Body"].read()
    assert tail == data[-7:]
    with pytest.raises(ClientError, match="PreconditionFailed"):
        s3.get_object(Bucket=BUCKET, Key="in.csv", IfMatch='"0123456789abcdef0123456789abcdef"')


@pytest.mark.integration
def test_an_object_replaced_while_it_streams_is_read_whole_as_it_was(aws):
    """The download reads the object's file through a descriptor of its own: a PutObject of the same key
    meanwhile (which closes the old file) changes neither what that download returns nor the next one."""
    s3 = aws.s3
    s3.create_bucket(Bucket=BUCKET)
    first, second = os.urandom(3 * PART), os.urandom(PART + 5)
    s3.put_object(Bucket=BUCKET, Key="in.csv", Body=first)
    body = s3.get_object(Bucket=BUCKET, Key="in.csv")["Body"]
    start = body.read(1024)
    s3.put_object(Bucket=BUCKET, Key="in.csv", Body=second)
    assert start + body.read() == first
    assert s3.get_object(Bucket=BUCKET, Key="in.csv")["Body"].read() == second


@pytest.mark.integration
def test_a_multipart_object_replaced_while_it_streams_is_read_whole_as_it_was(aws):
    """A completed object is read in place from its parts' files: a download under way when the key is
    replaced (moto then disposes the old key, its multipart upload and its parts) still reads every byte."""
    s3 = aws.s3
    s3.create_bucket(Bucket=BUCKET)
    data = os.urandom(3 * PART + 77)
    _upload(s3, "out.csv", data, "CRC32")
    body = s3.get_object(Bucket=BUCKET, Key="out.csv")["Body"]
    start = body.read(1024)
    s3.put_object(Bucket=BUCKET, Key="out.csv", Body=b"new")
    assert start + body.read() == data
    assert s3.get_object(Bucket=BUCKET, Key="out.csv")["Body"].read() == b"new"


def test_receive_checks_the_retention_period_as_moto_does_reading_only_that_attribute():
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.sqs import models as sqs_models

    moto_server.patch()
    backend = sqs_models.sqs_backends[DEFAULT_ACCOUNT_ID]["eu-west-3"]
    backend.create_queue("retention-test", MessageRetentionPeriod="60")
    message = backend.send_message("retention-test", "hello")
    for age_ms, kept in ((0, True), (59_000, True), (61_000, False)):
        message.sent_timestamp = int(sqs_models.unix_time_millis()) - age_ms
        assert moto_server.within_retention(backend, "retention-test", message) is kept
        assert moto_server._moto_retention(backend, "retention-test", message) is kept  # moto's own says the same
    backend.delete_queue("retention-test")


def test_each_host_gets_the_backend_moto_would_find_and_looks_it_up_once(monkeypatch):
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    moto_server.patch()
    app = DomainDispatcherApplication(lambda *_args: None)
    hosts = ["s3.us-east-1.amazonaws.com", "sqs.eu-west-1.amazonaws.com", "sns.us-east-1.amazonaws.com", "moto_api"]
    expected = {host: moto_server._moto_backend_for_host(app, host) for host in hosts}
    assert expected["s3.us-east-1.amazonaws.com"] == "s3" and expected["sqs.eu-west-1.amazonaws.com"] == "sqs"
    assert {host: app.get_backend_for_host(host) for host in hosts} == expected
    looked_up: list[str | None] = []
    monkeypatch.setattr(moto_server, "_moto_backend_for_host", lambda _self, host: looked_up.append(host))
    assert {host: app.get_backend_for_host(host) for host in hosts} == expected  # from what was found before
    assert looked_up == []
