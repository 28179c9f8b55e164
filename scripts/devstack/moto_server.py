"""The embedded stack's emulator: moto's server, with big objects assembled in the kernel and streamed from disk.

moto completes a multipart upload by reading each part into memory twice (once for the object, once for
its checksum), joining them into one bytearray, copying that into bytes and writing those into a new
temporary file: five copies of the object through Python. For the 490 MB ``processed/`` object of a
5M-row file that took 1.6-2.9 s of a core alone, and ~4.6 s while PostgreSQL had the other: the load's
commit waits for it (its outputs exist before it commits). S3 does that work on its own servers.

Here, when the parts carry a composite checksum (our function names CRC32 for every multipart output), the
object is its parts' files read one after the other, in place (``PartsFile``: no byte is copied), and the
checksum takes one read pass: the same bytes, ETag and checksum as moto's own completion. A copy, even in
the kernel (``copy_file_range``, ~0.1 s for 490 MB when idle), took 1.0-1.6 s of a core at the end of a 5M
load while PostgreSQL built its index: every page of the copy is a new page of the page cache. moto keeps
the parts for as long as the object anyway (the key holds its multipart upload), so the copy only doubled
them. Everything else is moto's: the checks of the parts (ETags, sizes), a full-object checksum (CRC64NVME,
the default when the client names no algorithm), the key, its notification.

And GetObject streams an object kept in a file (moto keeps every object over ~5 MB in one) from that file,
a megabyte at a time, where moto reads the whole object into memory before it sends its first byte: 0.37 s
for the 490 MB file of 5M rows, whose MD5 the load waits for, and a copy of it in the emulator's memory
for every download. A ranged or part-numbered GetObject, and objects kept in memory, are moto's as before.

And ReceiveMessage checks each message it hands out against the queue's retention period by computing
every attribute of the queue (``get_queue_attributes``), three of which scan all its messages: receiving 10
messages from a queue of 400 scanned 12,000 messages, and a burst of small files spent most of the
emulator's CPU there (py-spy: ~85% of its samples in ReceiveMessage, with four consumers). Here that check
reads the one attribute it needs, with the same result.

And every request first finds its service's backend from the host it names (or the one its signature
names): moto lists its own package directory (``os.listdir`` and an ``isdir`` per entry, ~150) and tries
hundreds of URL patterns, under a lock every request takes, each time. The answer depends on the host
alone, so here it is kept once found: in a burst of small files with four consumers that lookup was a third
of the emulator's busy samples (py-spy), and the lock around it made the requests take turns.

All of these are applied to the moto version they were written for only; another version runs as it comes
(``patch()`` says which).

    python -m devstack.moto_server -H 127.0.0.1 -p 4566     (the arguments of python -m moto.server)
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from typing import Any

import moto
from moto.core.utils import unix_time
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.s3 import models, responses
from moto.sqs import models as sqs_models

#: The moto release whose FakeMultipart.complete, FakeKey.value, S3Response.get_object,
#: SQSBackend.is_message_valid_based_on_retention_period and DomainDispatcherApplication.get_backend_for_host
#: this module replaces.
WRITTEN_FOR = "5.2.5"
SEND_CHUNK = 1024 * 1024


#: moto keeps an object (or a part) in memory up to this size, else in a temporary file. Its default is 1 KiB
#: below S3's smallest part, so every 5 MiB part the function writes was written to memory, then copied into
#: a new temporary file when its last bytes came (SpooledTemporaryFile's rollover): 44% of the emulator's
#: samples during a 1M-row load (py-spy), and ~100 MB of dirty page cache per load for the kernel to write
#: back during the next ones. Parts of S3's smallest size now stay in memory; bigger ones spool as before.
KEY_BUFFER_BYTES = 5 * 1024 * 1024 + 64 * 1024


class PartsFile:
    """A completed object's bytes, read in place from its parts one after the other: a part kept in a file
    through a descriptor of its own (the part's own file may close, as when the multipart upload is disposed,
    without it), a part kept in memory through its bytes. Read-only: moto only seeks and reads a key's
    buffer, and the value setter replaces it (_set_value)."""

    def __init__(self, segments: list[tuple[int | bytes, int]]):
        self.segments = segments  # (descriptor or bytes, size) of each part, in order
        self.size = sum(size for _, size in segments)
        self.position = 0

    @classmethod
    def of(cls, parts: list[models.FakeKey]) -> PartsFile:
        segments: list[tuple[int | bytes, int]] = []
        try:
            for part in parts:
                with part.lock:
                    buffer = part._value_buffer
                    if getattr(buffer, "_rolled", True):
                        segments.append((os.dup(buffer.fileno()), part.contentsize))
                    else:  # kept in memory: its bytes, as they are (no copy to a file)
                        segments.append((buffer._file.getvalue(), part.contentsize))  # type: ignore[attr-defined]
        except BaseException:
            cls(segments).close()
            raise
        return cls(segments)

    def __len__(self) -> int:
        return self.size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.position + n)
        data = b"".join(self.chunks(self.position, end, max(1, end - self.position)))
        self.position += len(data)
        return data

    def chunks(self, start: int, end: int, chunk_size: int) -> Iterator[bytes]:
        """The bytes from ``start`` to ``end``, at most ``chunk_size`` at a time (never across a part's end)."""
        base = 0
        for source, size in self.segments:
            lo, hi = max(start, base), min(end, base + size)
            while lo < hi:
                n, at = min(chunk_size, hi - lo), lo - base
                chunk = source[at : at + n] if isinstance(source, bytes) else os.pread(source, n, at)
                if not chunk:
                    raise OSError(f"a part's file ended at {lo - base} of its {size} bytes")
                lo += len(chunk)
                yield chunk
            base += size

    def dup(self) -> PartsFile:
        """The same bytes through descriptors of their own (for a download that may outlive this buffer)."""
        return PartsFile([(s if isinstance(s, bytes) else os.dup(s), size) for s, size in self.segments])

    def close(self) -> None:
        segments, self.segments = self.segments, []
        for source, _ in segments:
            if not isinstance(source, bytes):
                os.close(source)


def complete(self: models.FakeMultipart, body: Any) -> tuple[Any, str, tuple[str, str, int] | None]:
    """moto's FakeMultipart.complete, the object read in place from the parts' files (composite checksums only)."""
    checksum = models.MultipartChecksumBuilder(
        self.metadata.get("x-amz-checksum-algorithm"), self.metadata.get("x-amz-checksum-type")
    )
    if checksum.checksum_type != "COMPOSITE":
        return _moto_complete(self, body)
    md5s = bytearray()
    chosen: list[models.FakeKey] = []
    last = None
    for number, etag in body:  # the same checks, in the same order, as moto's
        part = self.parts.get(number)
        part_etag = None
        if part is not None:
            part_etag = part.etag.replace('"', "")
            etag = etag.replace('"', "")
        if part is None or part_etag != etag:
            raise models.InvalidPart()
        if last is not None and last.contentsize < models.S3_UPLOAD_PART_MIN_SIZE:
            raise models.EntityTooSmall()
        assert part_etag is not None
        md5s.extend(bytes.fromhex(part_etag))
        chosen.append(part)
        last = part
    if not chosen:
        raise models.MalformedXML
    for part in chosen:
        checksum.addPart(part.value)  # one part in memory at a time
    full_etag = models.md5_hash()
    full_etag.update(bytes(md5s))
    return PartsFile.of(chosen), f"{full_etag.hexdigest()}-{len(chosen)}", checksum.build()


class FileBody:
    """An object's bytes, read from its file (or its parts' files) a chunk at a time as the server sends them.
    Read through descriptors of its own: the object replaced or deleted meanwhile (its files closed) leaves
    this read whole."""

    def __init__(self, files: PartsFile):
        self.files = files

    def __len__(self) -> int:
        return self.files.size

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.files.chunks(0, self.files.size, SEND_CHUNK)
        finally:
            self.close()

    def close(self) -> None:
        """Let the descriptors go (the server calls this once the answer is sent, or given up before its start)."""
        self.files.close()


_streaming = threading.local()  # set while GetObject builds its answer (moto serves each request in a thread)


def _get_value(self: models.FakeKey) -> Any:
    """moto's FakeKey.value, or, for GetObject, the key's file to stream when the bytes are in one."""
    buffer = self._value_buffer
    if getattr(_streaming, "get_object", False):
        with self.lock:
            if isinstance(buffer, PartsFile):
                return FileBody(buffer.dup())
            if getattr(buffer, "_rolled", False):
                return FileBody(PartsFile([(os.dup(buffer.fileno()), self.contentsize)]))
    return _moto_get_value(self)


def get_object(self: responses.S3Response) -> Any:
    """moto's GetObject, streaming the object from its file unless a range or a part is asked for."""
    if self.headers.get("range") or self._get_int_param("partNumber"):
        return _moto_get_object(self)
    _streaming.get_object = True
    try:
        return _moto_get_object(self)
    finally:
        _streaming.get_object = False


def _set_value(self: models.FakeKey, new_value: Any) -> None:
    """moto's FakeKey.value setter, taking a completed object's parts as the key's buffer (no copy). moto sets
    a key's value only where it makes the key (its buffer then a fresh one of moto's own)."""
    if isinstance(new_value, PartsFile):
        self._value_buffer.close()
        self._value_buffer = new_value  # type: ignore[assignment]  # read like moto's buffer (seek, read, close)
        self.contentsize = new_value.size
        return
    _moto_set_value(self, new_value)


def within_retention(self: sqs_models.SQSBackend, queue_name: str, message: sqs_models.Message) -> bool:
    """moto's check that a message is within its queue's retention period, reading only that attribute."""
    retention_period = int(self.get_queue(queue_name).message_retention_period)  # type: ignore[attr-defined]
    return bool(retention_period + message.sent_timestamp / 1000 > unix_time())  # type: ignore[operator]


_backends_by_host: dict[str | None, Any] = {}


def backend_for_host(self: DomainDispatcherApplication, host: str | None) -> Any:
    """moto's backend for ``host``, looked up once per host (moto's lookup reads its package directory)."""
    try:
        return _backends_by_host[host]
    except KeyError:
        backend = _backends_by_host[host] = _moto_backend_for_host(self, host)
        return backend


_moto_backend_for_host = DomainDispatcherApplication.get_backend_for_host
_moto_retention = sqs_models.SQSBackend.is_message_valid_based_on_retention_period
_moto_complete = models.FakeMultipart.complete
_moto_set_value = models.FakeKey.value.fset  # type: ignore[attr-defined]
_moto_get_value = models.FakeKey.value.fget  # type: ignore[attr-defined]
_moto_get_object = responses.S3Response.get_object


def patch() -> bool:
    """Replace moto's completion and GetObject (once); whether moto is the version this was written for, so
    they were."""
    if moto.__version__ != WRITTEN_FOR:
        return False
    if models.FakeMultipart.complete is not complete:
        models.FakeMultipart.complete = complete  # type: ignore[method-assign]
        models.FakeKey.value = property(_get_value, _set_value)  # type: ignore[assignment,method-assign]
        responses.S3Response.get_object = get_object  # type: ignore[method-assign]
        sqs_models.SQSBackend.is_message_valid_based_on_retention_period = within_retention  # type: ignore[method-assign]
        DomainDispatcherApplication.get_backend_for_host = backend_for_host  # type: ignore[method-assign]
    return True


def main() -> None:
    from moto.server import main as moto_main

    os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(KEY_BUFFER_BYTES))  # read at each key's creation
    if not patch():
        print(f"moto {moto.__version__}, not {WRITTEN_FOR}: its own completion and GetObject run", flush=True)
    moto_main()


if __name__ == "__main__":
    main()
