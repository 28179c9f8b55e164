"""A black-holed address: a port whose connections are never answered, as a security group that drops packets
or a VPC without a route makes them. Nothing answers and nothing refuses: a client waits for its connect
timeout, however fast the machine is.

How: a listening socket with a backlog of 0 whose accept queue is filled once (by a connection of its own) and
never accepted from. Linux then drops every further SYN, so each connect hangs, on the host or from a
container; no root and no firewall rule. ``python -m devstack.blackhole --host 0.0.0.0 --port 4566`` runs one
in the foreground (the compose stack's tests run it in a container of the function's image).
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from types import TracebackType

from .processes import HOST


class BlackHole:
    """A port that never answers a connection, for as long as the object is open (a context manager)."""

    def __init__(self, host: str = HOST, port: int = 0):
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(0)
        self.port = self._listener.getsockname()[1]
        # The one connection the queue holds: made before the port is handed out, never accepted.
        self._filler = socket.create_connection(("127.0.0.1" if host in ("0.0.0.0", "") else host, self.port), 5)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def close(self) -> None:
        self._filler.close()
        self._listener.close()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.blackhole", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})  # for sigwait (and as PID 1)
    with BlackHole(args.host, args.port) as hole:
        print(f"black hole on {args.host}:{hole.port}", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


if __name__ == "__main__":
    sys.exit(main())
