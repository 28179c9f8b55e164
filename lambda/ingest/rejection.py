"""Why a whole file is refused. Raised by the pure core, recorded by the service, never retried."""

from __future__ import annotations

from collections.abc import Iterable

#: A rejection's message goes into the receipt (SNS takes at most 256 KB), the ledger row and the summary; a
#: header may name tens of thousands of columns, so a longer message keeps its beginning and says its length.
MAX_MESSAGE_CHARS = 4000


class FileRejected(Exception):
    """The object cannot be loaded as it is: a specific ``reason`` code and a message for people.

    Reason codes are stable (tests, subscribers and dashboards key on them); messages may change.
    """

    def __init__(self, reason: str, message: str):
        message = bounded(message)
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"FileRejected({self.reason!r}, {self.message!r})"


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` if it has at most ``limit`` characters, else its beginning and how long it was."""
    if len(message) <= limit:
        return message
    return message[: limit - 40] + f"… (cut: {len(message):,} characters in all)"


def listing(items: Iterable[str], most: int = 5, separator: str = ", ", noun: str = "") -> str:
    """The first ``most`` items, and how many there are in all when there are more: "a, b, … (12 in all)"."""
    shown = list(items)
    if len(shown) <= most:
        return separator.join(shown)
    return separator.join(shown[:most]) + f"{separator}… ({len(shown):,}{' ' + noun if noun else ''} in all)"
