"""Why a whole file is refused. Raised by the pure core, recorded by the service, never retried."""

from __future__ import annotations

#: A rejection's message goes into the receipt (SNS takes at most 256 KB), the ledger row and the summary; a
#: header may name tens of thousands of columns, so a longer message keeps its beginning and says its length.
MAX_MESSAGE_CHARS = 4000


class FileRejected(Exception):
    """The object cannot be loaded as it is: a specific ``reason`` code and a message for people.

    Reason codes are stable (tests, subscribers and dashboards key on them); messages may change.
    """

    def __init__(self, reason: str, message: str):
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 40] + f"… (cut: {len(message):,} characters in all)"
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"FileRejected({self.reason!r}, {self.message!r})"
