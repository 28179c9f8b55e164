"""S3 adapter: stream an object in chunks, hash it, and write outputs with bounded memory."""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from ..deadlines import awaited, bounded, call_at, in_thread
from .network import Reaching

T = TypeVar("T")

CHUNK_BYTES = 1024 * 1024
HASH_QUEUE_CHUNKS = 8  # chunks of a download waiting for their MD5 (_Hasher)
SPOOL_MARGIN_BYTES = 64 * 1024 * 1024  # left free in the temporary folder (Lambda: /tmp)
PART_BYTES = 5 * 1024 * 1024  # the smallest part S3 accepts (but the last): least memory
#: Each part of a multipart output carries its CRC32, and the object a composite of them. Without an
#: algorithm named at CreateMultipartUpload, an emulator (moto) builds a full-object checksum at completion:
#: a second copy of the whole object and a pass over it, ~40% of its CompleteMultipartUpload.
PART_CHECKSUM = "CRC32"
#: How long aborting a multipart output may wait for S3 once the deadline has passed (the failure is being
#: recorded: a stalled abort must not use up the time left for that; the upload is invisible meanwhile).
ABORT_WAIT_SECONDS = 0.5
_PLAIN_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str

    @property
    def etag_md5(self) -> str | None:
        """The content MD5 when the ETag is one (single-part uploads without KMS), else None."""
        match = _PLAIN_MD5_ETAG.match(self.etag)
        return match.group(1) if match else None


class ObjectStore:
    def __init__(self, client: Any):
        self.client = Reaching(client, "S3")  # a failed connection raises ServiceUnreachable("S3")

    def head(self, bucket: str, key: str, deadline: float | None = None) -> ObjectInfo:
        response = answered(deadline, f"HeadObject of {key}", self.client.head_object, Bucket=bucket, Key=key)
        return ObjectInfo(size=response["ContentLength"], etag=response["ETag"])

    def download(self, bucket: str, key: str, etag: str | None = None, deadline: float | None = None) -> Download:
        """The object's body, to read in chunks; with ``etag``, fail if the object changed since it was read;
        with ``deadline`` (a ``time.monotonic()`` value), a read still waiting then is cut off."""
        extra = {"IfMatch": etag} if etag else {}
        response = answered(deadline, f"GetObject of {key}", self.client.get_object, Bucket=bucket, Key=key, **extra)
        return Download(response["Body"], deadline)

    def spool(self, bucket: str, key: str, etag: str, size: int, deadline: float | None = None) -> Spool | None:
        """A local copy of the object, filled and hashed in a background thread, so that processing can
        read its first bytes while the rest arrives; None when the temporary folder lacks room for it."""
        if shutil.disk_usage(tempfile.gettempdir()).free < size + SPOOL_MARGIN_BYTES:
            return None
        return Spool(self.download(bucket, key, etag, deadline))

    def md5(self, bucket: str, key: str, etag: str, deadline: float | None = None) -> str:
        """The object's MD5, read through once and kept nowhere."""
        digest = hashlib.md5(usedforsecurity=False)
        for chunk in self.download(bucket, key, etag, deadline):
            digest.update(chunk)
        return digest.hexdigest()

    def put(self, bucket: str, key: str, data: bytes, content_type: str, deadline: float | None = None) -> None:
        answered(
            deadline,
            f"PutObject of {key}",
            self.client.put_object,
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
        )

    def writer(self, bucket: str, key: str, content_type: str, deadline: float | None = None) -> StreamingWriter:
        return StreamingWriter(self.client, bucket, key, content_type, deadline)


class ReadCutOff(TimeoutError):
    """A read of an object was cut off: its deadline came (or its reader stopped) while it waited."""


class RequestCutOff(TimeoutError):
    """A request to S3 the caller waits for (a HEAD, a PutObject, a part in another thread, a completion)
    had no answer at the deadline; the caller stops waiting for it."""


def answered(deadline: float | None, what: str, request: Callable[..., T], **params: Any) -> T:
    """``request(**params)``, waited for until ``deadline`` at the most (``deadlines.bounded``). A stalled
    request would otherwise hold the caller past the function's deadline, with nothing on record when the
    runtime kills it."""
    message = f"{what} had no answer from S3 at the deadline"
    return bounded(lambda: request(**params), deadline, lambda: RequestCutOff(message), "s3-request")


def wait_until_deadline(work: Future[T], deadline: float | None, what: str) -> T:
    """The result of the upload of ``what`` going on in another thread, waited for until ``deadline``."""
    message = f"the upload of {what} was still going at the deadline"
    return awaited(work, deadline, lambda: RequestCutOff(message))


class Download:
    """One GetObject's body, read in CHUNK_BYTES chunks by iterating over it (once).

    A stalled read would wait for the client's read timeout (a minute, and again for each retry), long past
    the function's own deadline, which then could not record the timeout before the runtime kills it. So at
    ``deadline`` the read is cut off: ``cut()`` shuts the socket for reading, and a read waiting on it, in any
    thread, ends at once with ReadCutOff. A cut-off body never looks complete: bytes short of its length
    raise, and no chunk is handed on after the cut.
    """

    def __init__(self, body: Any, deadline: float | None = None) -> None:
        self._body = body
        self.cut_off = False
        self._timer = call_at(deadline, self.cut)

    def cut(self) -> None:
        """Make the read end now, from any thread (a read already done is left as it was)."""
        self.cut_off = True
        raw: Any = getattr(self._body, "_raw_stream", None)  # botocore's StreamingBody over urllib3's response
        with suppress(Exception):  # nothing to shut: the body was read and its connection went back to the pool
            raw.shutdown()  # SHUT_RD: a recv waiting in another thread returns (urllib3 2.3 and later)

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._body.iter_chunks(CHUNK_BYTES):
                if self.cut_off:
                    raise ReadCutOff("the object's download was cut off (its deadline came)")
                yield chunk
        except ReadCutOff:
            raise
        except Exception as exc:
            if self.cut_off:
                raise ReadCutOff(f"the object's download was cut off (its deadline came): {exc}") from exc
            raise
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self._body.close()


class Spool:
    """An object's bytes in an anonymous temporary file (gone when closed or when the process ends),
    written and hashed by a thread of its own as they arrive.

    ``chunks()`` reads the copy from the start, waiting for bytes not written yet, so that processing can
    begin with the first megabyte; ``md5()`` waits for the last byte. An error of the download (a cut-off
    read at the deadline too) is raised by both. ``close()`` cuts off a download still going."""

    def __init__(self, download: Download) -> None:
        self.file = tempfile.TemporaryFile(prefix="ingest-spool-")  # noqa: SIM115 (closed by close())
        self._download = download
        self._written = 0
        self._md5: str | None = None
        self._error: BaseException | None = None
        self._done = False
        self._closing = False
        self._changed = threading.Condition()
        self._filler = threading.Thread(target=self._fill, name="s3-spool", daemon=True)
        self._filler.start()

    def _fill(self) -> None:
        hasher = _Hasher()
        source = iter(self._download)
        try:
            for chunk in source:
                if self._closing:
                    break
                hasher.update(chunk)
                os.pwrite(self.file.fileno(), chunk, self._written)
                with self._changed:
                    self._written += len(chunk)
                    self._changed.notify_all()
            else:
                self._md5 = hasher.hexdigest()
        except BaseException as exc:  # handed to the reader, in its own thread
            self._error = exc
        finally:
            hasher.stop()
            if isinstance(source, Generator):
                source.close()  # the response body, now rather than at garbage collection
            with self._changed:
                self._done = True
                self._changed.notify_all()

    @property
    def hashed(self) -> bool:
        """Whether every byte arrived (without waiting)."""
        return self._md5 is not None

    def md5(self) -> str:
        with self._changed:
            self._changed.wait_for(lambda: self._done)
        if self._error is not None:
            raise self._error
        if self._md5 is None:
            raise RuntimeError("the spool was closed before it was filled")
        return self._md5

    def chunks(self) -> Iterator[bytes]:
        offset = 0
        while True:
            with self._changed:
                while self._written <= offset and not self._done:
                    self._changed.wait()
                if self._error is not None:
                    raise self._error
                available = self._written - offset
            if available <= 0:
                return
            chunk = os.pread(self.file.fileno(), min(available, CHUNK_BYTES), offset)
            offset += len(chunk)
            yield chunk

    def close(self) -> None:
        self._closing = True
        if not self._done:
            self._download.cut()  # a download still going (processing stopped early) ends now, even if stalled
        self._filler.join()
        self.file.close()


class _Hasher:
    """An MD5 computed in a thread of its own from the chunks handed to it (at most HASH_QUEUE_CHUNKS waiting,
    so memory stays flat): hashing a download no longer takes turns with receiving and spooling it, and the
    file's MD5, which the outputs wait for, is known sooner (hashlib releases the GIL for big chunks)."""

    def __init__(self) -> None:
        self._digest = hashlib.md5(usedforsecurity=False)
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=HASH_QUEUE_CHUNKS)
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="s3-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._digest.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._chunks.put(chunk)

    def hexdigest(self) -> str:
        """The MD5 of every chunk handed over, once the thread has hashed them."""
        self.stop()
        self._thread.join()
        return self._digest.hexdigest()

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._chunks.put(None)


class StreamingWriter:
    """Writes an object of any size in PART_BYTES parts; nothing appears unless ``close`` is called.

    A small object is written with one PutObject at ``close``; a large one becomes a multipart upload
    whose parts go up in a background thread while the caller prepares the next one (at most one part in
    flight, so memory stays at two parts), and that ``abort`` cancels, so a rejected file leaves no
    half-written output behind.
    """

    def __init__(self, client: Any, bucket: str, key: str, content_type: str, deadline: float | None = None):
        self.client, self.bucket, self.key, self.content_type = client, bucket, key, content_type
        self.deadline = deadline  # a request still unanswered then is waited for no longer (RequestCutOff)
        self._buffer: list[bytes] = []  # the blocks of the next part (joined once, when it is sent)
        self._buffered = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._in_flight: Future[dict[str, Any]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        """Take a block; the caller must not change it afterwards (it is kept, not copied)."""
        self._buffer.append(data)
        self._buffered += len(data)
        self.bytes_written += len(data)
        if self._buffered >= PART_BYTES:
            self._send_part()

    def _send_part(self) -> None:
        if self._upload_id is None:
            self._upload_id = self._request(
                "CreateMultipartUpload",
                self.client.create_multipart_upload,
                ContentType=self.content_type,
                ChecksumAlgorithm=PART_CHECKSUM,
            )["UploadId"]
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s3-part")
        self._wait_in_flight()
        number = len(self._parts) + 1
        body = self._take_buffer()
        assert self._executor is not None
        self._in_flight = self._executor.submit(self._upload_part, number, body)

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        response = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm=PART_CHECKSUM,
        )
        part = {"PartNumber": number, "ETag": response["ETag"]}
        if f"Checksum{PART_CHECKSUM}" in response:  # S3 wants it back at completion; an emulator may not send it
            part[f"Checksum{PART_CHECKSUM}"] = response[f"Checksum{PART_CHECKSUM}"]
        return part

    def _wait_in_flight(self) -> None:
        if self._in_flight is not None:
            part = wait_until_deadline(self._in_flight, self.deadline, f"part {len(self._parts) + 1} of {self.key}")
            self._in_flight = None
            self._parts.append(part)

    def close(self) -> None:
        if self._upload_id is None:
            body = self._take_buffer()
            self._request("PutObject", self.client.put_object, Body=body, ContentType=self.content_type)
        else:
            if self._buffer:
                self._send_part()
            self._wait_in_flight()
            self._request(
                "CompleteMultipartUpload",
                self.client.complete_multipart_upload,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
            self._shutdown()

    def close_in_background(self) -> Future[None]:
        """``close`` in a thread of its own: the caller goes on (e.g. finishing its load) and waits for the
        returned future (``wait_until_deadline``) before it commits to anything that names this object."""
        return in_thread(self.close, "s3-close")

    def abort(self) -> None:
        if self._upload_id is not None:
            try:
                self._wait_in_flight()
            except Exception:
                pass
            # waited for until the deadline, or briefly once it has passed (the failure is being recorded)
            with suppress(RequestCutOff):
                answered(
                    None if self.deadline is None else max(self.deadline, time.monotonic() + ABORT_WAIT_SECONDS),
                    f"AbortMultipartUpload of {self.key}",
                    self.client.abort_multipart_upload,
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                )
            self._upload_id = None
            self._shutdown(wait=False)  # a part still uploading at the deadline ends on its own, later
        self._take_buffer()

    def _request(self, operation: str, request: Callable[..., Any], **params: Any) -> Any:
        """``operation`` (its name in S3's API, for the message) on this object, waited for until the deadline."""
        return answered(
            self.deadline, f"{operation} of {self.key}", request, Bucket=self.bucket, Key=self.key, **params
        )

    def _take_buffer(self) -> bytes:
        """The buffered blocks as one body, and an empty buffer."""
        body = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        return body

    def _shutdown(self, wait: bool = True) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=wait)
            self._executor = None
