"""Objects for the integration tests: big files, multipart uploads, and a network that stalls midway."""

from __future__ import annotations

import contextlib
import re
import socket
import threading

from devstack.processes import HOST


def upload_multipart(pipeline, key: str, data: bytes, part: int = 5 * 1024 * 1024) -> None:
    """Upload ``data`` in parts (its ETag is then no MD5)."""
    s3 = pipeline.aws.s3
    upload = s3.create_multipart_upload(Bucket=pipeline.bucket, Key=key)["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(data), part), start=1):
        body = data[start : start + part]
        etag = s3.upload_part(Bucket=pipeline.bucket, Key=key, UploadId=upload, PartNumber=number, Body=body)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    s3.complete_multipart_upload(Bucket=pipeline.bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    assert "-" in s3.head_object(Bucket=pipeline.bucket, Key=key)["ETag"]


def big_users_file(rows: int) -> bytes:
    return b"id,email,full_name\n1,a@b.co,Ann\n" + b"".join(
        f"{i},u{i}@example.com,User {i:07d} with a longer name to fill bytes\n".encode() for i in range(2, rows + 1)
    )


class StallingProxy:
    """A TCP proxy in front of the emulator that holds, until ``close``, what a real network can hold up:
    with ``budget``, each connection's answers past that many bytes (small answers such as HEAD's and PUT's
    come through, a large GetObject body stops midway); with ``request`` (a regular expression), the answer
    to a request whose bytes match it (say the UploadPart of part 2), from its first byte. Requests pass."""

    def __init__(self, upstream_port: int, budget: int | None = None, request: bytes | None = None):
        self.upstream_port, self.budget = upstream_port, budget
        self.request = re.compile(request) if request is not None else None  # a regular expression
        self.server = socket.create_server((HOST, 0))
        self.endpoint = f"http://{HOST}:{self.server.getsockname()[1]}"
        self.released = threading.Event()
        self.stalled = threading.Event()  # set once a connection reached its budget
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self.upstream_port))
            except OSError:  # the emulator went away (the session ends): nothing to hand on
                client.close()
                continue
            self._sockets += [client, upstream]
            held = threading.Event()  # this connection's answers stop here
            threading.Thread(target=self._asks, args=(client, upstream, held), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client, held), daemon=True).start()

    def _asks(self, client: socket.socket, upstream: socket.socket, held: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if self.request is not None and self.request.search(data):
                    held.set()  # before the request goes on, so before its answer can come back
                upstream.sendall(data)
        except OSError:
            pass

    def _answers(self, upstream: socket.socket, client: socket.socket, held: threading.Event) -> None:
        sent = 0
        try:
            while data := upstream.recv(65536):
                over = self.budget is not None and sent + len(data) > self.budget
                if held.is_set() or over:
                    if over and not held.is_set():
                        client.sendall(data[: self.budget - sent])
                    self.stalled.set()
                    self.released.wait()
                    return
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass

    def close(self) -> None:
        """Release what is held and end every connection. A socket is shut down before it is closed: on
        Linux that alone wakes a thread blocked in its accept() or recv(), so that none of this proxy's
        threads (nor a client's request still waiting on it) lives on into later tests."""
        self.released.set()
        for sock in [self.server, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
