"""The embedded stack's emulator: moto's server, with big objects assembled in the kernel and streamed from disk.

moto completes a multipart upload by reading each part into memory twice (once for the object, once for
its checksum), joining them into one bytearray, copying that into bytes and writing those into a new
temporary file: five copies of the object through Python. For the 490 MB ``processed/`` object of a
5M-row file that took 1.6-2.9 s of a core alone, and ~4.6 s while PostgreSQL had the other: the load's
commit waits for it (its outputs exist before it commits). S3 does that work on its own servers.

Here, when the parts carry a composite checksum (our function names CRC32 for every multipart output), the
object is assembled from the parts' temporary files with ``copy_file_range`` (the kernel copies, ~0.2 s for
490 MB), and the checksum takes one read pass: the same bytes, ETag and checksum as moto's own completion.
Everything else is moto's: the checks of the parts (ETags, sizes), a full-object checksum (CRC64NVME, the
default when the client names no algorithm), the key, its notification.

And GetObject streams an object kept in a file (moto keeps every object over ~5 MB in one) from that file,
a megabyte at a time, where moto reads the whole object into memory before it sends its first byte: 0.37 s
for the 490 MB file of 5M rows, whose MD5 the load waits for, and a copy of it in the emulator's memory
for every download. A ranged or part-numbered GetObject, and objects kept in memory, are moto's as before.

Both are applied to the moto version they were written for only; another version runs as it comes
(``patch()`` says which).

    python -m devstack.moto_server -H 127.0.0.1 -p 4566     (the arguments of python -m moto.server)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import moto
from moto.s3 import models, responses

#: The moto release whose FakeMultipart.complete, FakeKey.value and S3Response.get_object this module replaces.
WRITTEN_FOR = "5.2.5"
COPY_CHUNK = 64 * 1024 * 1024
SEND_CHUNK = 1024 * 1024


class AssembledObject:
    """A completed object's bytes in a temporary file of its own, handed to the new key as its buffer."""

    def __init__(self, file: Any, size: int):
        self.file, self.size = file, size

    def __len__(self) -> int:
        return self.size


def _copy_into(out_fd: int, part_file: Any, size: int) -> None:
    """Append ``size`` bytes of ``part_file`` (from its start) to ``out_fd``: in the kernel where it can."""
    copied = 0
    try:
        source = part_file.fileno()  # a part kept in memory (the last, short one) is written out first
        while copied < size:
            n = os.copy_file_range(source, out_fd, size - copied, copied)
            if n == 0:
                break
            copied += n
    except OSError:  # a filesystem without copy_file_range: through Python, from where it stopped
        part_file.seek(copied)
        with os.fdopen(os.dup(out_fd), "wb", closefd=True) as out:
            shutil.copyfileobj(part_file, out, COPY_CHUNK)
        return
    if copied != size:
        raise OSError(f"a part's file held {copied} of its {size} bytes")


def complete(self: models.FakeMultipart, body: Any) -> tuple[Any, str, tuple[str, str, int] | None]:
    """moto's FakeMultipart.complete, assembling the object from the parts' files (composite checksums only)."""
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
    out = tempfile.TemporaryFile()  # noqa: SIM115 (the new key's buffer: the key closes it)
    try:
        for part in chosen:
            with part.lock:
                _copy_into(out.fileno(), part._value_buffer, part.contentsize)
            checksum.addPart(part.value)  # one part in memory at a time
    except BaseException:
        out.close()
        raise
    full_etag = models.md5_hash()
    full_etag.update(bytes(md5s))
    size = sum(part.contentsize for part in chosen)
    return AssembledObject(out, size), f"{full_etag.hexdigest()}-{len(chosen)}", checksum.build()


class FileBody:
    """An object's bytes, read from its file a chunk at a time as the server sends them. Read through a
    descriptor of its own: the object replaced or deleted meanwhile (its file closed) leaves this read whole."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        try:
            offset = 0
            while offset < self.size:
                chunk = os.pread(self.fd, min(SEND_CHUNK, self.size - offset), offset)
                if not chunk:
                    raise OSError(f"the object's file ended at {offset} of its {self.size} bytes")
                offset += len(chunk)
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        """Let the descriptor go (the server calls this once the answer is sent, or given up before its start)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_streaming = threading.local()  # set while GetObject builds its answer (moto serves each request in a thread)


def _get_value(self: models.FakeKey) -> Any:
    """moto's FakeKey.value, or, for GetObject, the key's file to stream when the bytes are in one."""
    buffer = self._value_buffer
    in_file = not isinstance(buffer, tempfile.SpooledTemporaryFile) or getattr(buffer, "_rolled", False)
    if getattr(_streaming, "get_object", False) and in_file:
        with self.lock:
            return FileBody(os.dup(buffer.fileno()), self.contentsize)
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
    """moto's FakeKey.value setter, taking an assembled object's file as the key's buffer (no copy)."""
    if isinstance(new_value, AssembledObject):
        self._value_buffer.close()
        self._value_buffer = new_value.file
        self.contentsize = new_value.size
        return
    _moto_set_value(self, new_value)


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
    return True


def main() -> None:
    from moto.server import main as moto_main

    if not patch():
        print(f"moto {moto.__version__}, not {WRITTEN_FOR}: its own completion and GetObject run", flush=True)
    moto_main()


if __name__ == "__main__":
    main()
