"""Where each CSV record starts, found from the raw bytes as they stream past (numpy, no parsing).

A newline ends a record when an even number of quote characters precedes it: doubled quotes inside a
quoted field count twice, so the parity rule holds for every well-formed CSV. The same scan checks that
every quote sits where well-formed CSV allows one (opening at a field start, closing before a delimiter or
line end) and that no lone CR ends a line; when that fails, ``QuotingAnomaly`` tells the caller to hand
the file to the exact engine, whose csv module gives the definitive verdict.
"""

from __future__ import annotations

import numpy as np

NEWLINE, CR, QUOTE = 10, 13, 34


def _has_control(data: np.ndarray, low_bytes: np.ndarray) -> bool:
    """Whether there is a control byte other than tab, LF and CR; ``low_bytes``: the bytes below 32."""
    return bool(((low_bytes != NEWLINE) & (low_bytes != CR) & (low_bytes != 9)).any() or (data == 127).any())


class QuotingAnomaly(Exception):
    """Quotes or line ends the columnar engine does not read exactly like the exact engine."""


class LineIndex:
    """Start line of every non-empty record, in order; consumed as batches of records are handled."""

    def __init__(self, delimiter: str, first_line: int = 1, quotes: bool = True):
        self.delimiter = ord(delimiter)
        self.quotes = quotes  # False: quotes are characters like any other, and every newline ends a record
        self.line = first_line  # the line the next byte is on
        self.in_quotes = False
        self.record_bytes = 0  # bytes of the current record seen so far (excluding a trailing CR)
        self.record_start = first_line
        self.previous_byte = NEWLINE  # data starts at a record boundary
        self.quote_needs_check = False  # a closing quote was the last byte of the previous chunk
        self._pending: list[np.ndarray] = []
        self.has_control = False  # any control byte other than tab, LF, CR seen so far
        self._pending_offset = 0
        self.records = 0

    def feed(self, chunk: bytes) -> int:
        """Scan the next bytes; return the offset just past the last record end in them, or -1."""
        if not chunk:
            return -1
        data = np.frombuffer(chunk, dtype=np.uint8)
        if self.previous_byte == CR and data[0] != NEWLINE:
            raise QuotingAnomaly("a carriage return that is not part of CRLF")
        if self.quote_needs_check:
            self.quote_needs_check = False
            self._check_after_close(data[0])
        # One pass finds the bytes below 32 (line ends, CRs, tabs, other control bytes: a few percent of a
        # text); the newlines and CRs are picked from those rather than found by passes of their own.
        low = np.flatnonzero(data < 32)
        low_bytes = data[low]
        if not self.has_control:
            self.has_control = _has_control(data, low_bytes)
        quotes = np.flatnonzero(data == QUOTE) if self.quotes else np.empty(0, dtype=np.intp)
        newlines = low[low_bytes == NEWLINE]
        self._check_quotes(data, quotes)
        self._check_cr(data, low[low_bytes == CR])

        parity = (np.searchsorted(quotes, newlines) + int(self.in_quotes)) & 1
        ends = newlines[parity == 0]  # newlines that end a record
        lines_of_ends = self.line + np.searchsorted(newlines, ends)  # line number each ending newline is on
        if len(ends):
            previous_end = np.empty(len(ends), dtype=np.int64)
            previous_end[0] = -1
            previous_end[1:] = ends[:-1]
            lengths = ends - previous_end - 1
            lengths[0] += self.record_bytes
            has_cr = np.zeros(len(ends), dtype=bool)
            positive = ends > 0
            has_cr[positive] = data[ends[positive] - 1] == CR
            if ends[0] == 0:
                has_cr[0] = self.previous_byte == CR
            nonempty = lengths - has_cr > 0
            starts = np.empty(len(ends), dtype=np.int64)
            starts[0] = self.record_start
            starts[1:] = lines_of_ends[:-1] + 1
            kept = starts[nonempty]
            if len(kept):
                self._pending.append(kept)
                self.records += len(kept)
            self.record_start = int(lines_of_ends[-1]) + 1
            self.record_bytes = len(data) - int(ends[-1]) - 1
        else:
            self.record_bytes += len(data)
        self.line += len(newlines)
        self.in_quotes = bool((len(quotes) + int(self.in_quotes)) & 1)
        self.previous_byte = int(data[-1])
        return int(ends[-1]) + 1 if len(ends) else -1

    def finish(self) -> None:
        """At the end of the data: an open quote is malformed; a last record without newline counts."""
        if self.in_quotes:
            raise QuotingAnomaly("the data ends inside a quoted field")
        trailing_cr = 1 if self.previous_byte == CR else 0
        if self.record_bytes - trailing_cr > 0:
            self._pending.append(np.array([self.record_start], dtype=np.int64))
            self.records += 1
            self.record_bytes = 0

    def take(self, count: int) -> np.ndarray:
        """The start lines of the next ``count`` records."""
        out = []
        needed = count
        while needed:
            if not self._pending:
                raise QuotingAnomaly(f"the line index has fewer records than the parser produced ({count})")
            head = self._pending[0][self._pending_offset :]
            piece = head[:needed]
            out.append(piece)
            needed -= len(piece)
            if len(piece) == len(head):
                self._pending.pop(0)
                self._pending_offset = 0
            else:
                self._pending_offset += len(piece)
        return np.concatenate(out) if len(out) != 1 else out[0]

    # -- well-formedness ------------------------------------------------------------------------------

    def _check_quotes(self, data: np.ndarray, quotes: np.ndarray) -> None:
        if not len(quotes):
            return
        ordinal = (np.arange(len(quotes)) + int(self.in_quotes)) & 1  # 0: opens a quoted run, 1: closes it
        opening = quotes[ordinal == 0]
        closing = quotes[ordinal == 1]
        if len(opening):
            before = np.empty(len(opening), dtype=np.uint8)
            inside = opening > 0
            before[inside] = data[opening[inside] - 1]
            before[~inside] = self.previous_byte
            ok = (before == self.delimiter) | (before == NEWLINE) | (before == CR) | (before == QUOTE)
            if not ok.all():
                raise QuotingAnomaly("a quote inside an unquoted field")
        if len(closing):
            last = closing == len(data) - 1
            if last.any():
                self.quote_needs_check = True
            after = data[closing[~last] + 1]
            ok = (after == self.delimiter) | (after == NEWLINE) | (after == CR) | (after == QUOTE)
            if not ok.all():
                raise QuotingAnomaly("text after a closing quote")

    def _check_after_close(self, byte: int) -> None:
        if byte not in (self.delimiter, NEWLINE, CR, QUOTE):
            raise QuotingAnomaly("text after a closing quote")

    def _check_cr(self, data: np.ndarray, crs: np.ndarray) -> None:
        if len(crs):
            inside = crs < len(data) - 1
            if (data[crs[inside] + 1] != NEWLINE).any():
                raise QuotingAnomaly("a carriage return that is not part of CRLF")
