"""Why a whole file is refused. Raised by the pure core, recorded by the service, never retried."""

from __future__ import annotations


class FileRejected(Exception):
    """The object cannot be loaded as it is: a specific ``reason`` code and a message for people.

    Reason codes are stable (tests, subscribers and dashboards key on them); messages may change.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"FileRejected({self.reason!r}, {self.message!r})"
