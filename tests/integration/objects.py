"""Objects for the integration tests: big files, multipart uploads, and a network that stalls midway."""

from __future__ import annotations

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
    """A TCP proxy in front of the emulator that hands on at most ``budget`` bytes of each connection's
    answers, then holds the rest (a download that stalls midway, as a real network can) until ``close``.
    Requests pass freely, so small answers (HEAD, PUT) come through and a large GetObject body stops."""

    def __init__(self, upstream_port: int, budget: int):
        self.upstream_port, self.budget = upstream_port, budget
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
            upstream = socket.create_connection((HOST, self.upstream_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.budget), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, budget: int | None) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                if budget is not None and sent + len(data) > budget:
                    sink.sendall(data[: budget - sent])
                    self.stalled.set()
                    self.released.wait()
                    return
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass

    def close(self) -> None:
        self.released.set()
        self.server.close()
        for sock in self._sockets:
            sock.close()
