"""The columnar engine: the contract's rules applied to whole batches of rows with pyarrow.

It gives exactly the verdicts, values and reports of the row-by-row engine (``processing.process_exact``),
an order of magnitude faster, by screening: each column is checked with vectorized kernels that accept
only what they can prove valid in the same way the exact rules would (ASCII-only where the exact rules
are Unicode-aware, away from range bounds where floats could round). Every row the screen does not
accept is handed, with its line number, to the exact row validator, which decides and explains it. So
the fast path can only ever be narrower than the exact one, never different.

What the engine cannot read exactly like Python's csv module (quotes in odd places, lone CRs, a parse
error, a header it cannot locate) raises ``ExactEngineNeeded``: the caller starts again with the exact
engine. The line numbers come from ``lines.LineIndex``, a numpy scan of the same bytes. Cutting and
parsing the next block runs in a thread of its own while this one is validated (``_ahead``): a pure
function still, of the chunks it is given, whose work takes a second core when there is one.
"""

from __future__ import annotations

import csv
import io
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.ma  # pa.array() of a numpy array looks for masked arrays: imported at init, not mid-file
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from . import patterns
from .contract import Column, Contract
from .lines import LineIndex, QuotingAnomaly
from .reading import MAX_FIELD_CHARS, Source, TextFormat
from .validation import (
    FALSE_WORDS,
    INT_RANGES,
    TRUE_WORDS,
    HeaderPlan,
    KeyChecks,
    RowError,
    RowValidator,
    build_coercer,
    field_count_error,
)

BLOCK_BYTES = 2 * 1024 * 1024
#: What Python's str.strip() removes among ASCII characters.
ASCII_WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"
NON_ASCII_AT_EDGE = r"^[^\x00-\x7f]|[^\x00-\x7f]$"
CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"

Checked = tuple[pa.Array, np.ndarray]  # (normalized values, True where the screen proves the cell valid)


class ExactEngineNeeded(Exception):
    """The columnar engine cannot vouch for reading this file exactly; use the exact engine."""


# --- columns ----------------------------------------------------------------------------------------


def _np(mask: pa.Array) -> np.ndarray:
    return np.asarray(mask.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)


def _matches(values: pa.Array, pattern: str) -> np.ndarray:
    return _np(pc.match_substring_regex(values, pattern))


def _with_nulls(values: pa.Array, nulls: np.ndarray) -> pa.Array:
    """``values`` (strings) with NULL where ``nulls`` is True: a validity bitmap laid over the same buffers, not
    a copy of every cell (``pc.if_else`` wrote the column anew: a copy per column per batch). A NULL cell keeps
    its bytes under the bitmap, where no reader of a NULL looks (kernels skip NULL slots; ``Cells`` callers
    mask NULLs themselves)."""
    if not nulls.any():
        return values
    if values.offset or values.null_count:  # rare (a sliced array, NULLs already): the copying way
        return pc.if_else(pa.array(nulls), pa.scalar(None, values.type), values)
    bitmap = pa.py_buffer(np.packbits(~nulls, bitorder="little"))
    return pa.Array.from_buffers(values.type, len(values), [bitmap, *values.buffers()[1:]])


class Cells:
    """A string array as numpy views of its bytes: each cell is ``data[starts[i]:ends[i]]``, one after
    another (a NULL cell spans whatever its offsets say, normally nothing; callers mask NULLs themselves).

    Checks over bytes (which cells hold a class of bytes and how many, the byte at a position) cost a
    numpy pass or two over the column, a fraction of what a regex kernel costs.
    """

    def __init__(self, s: pa.Array):
        n = len(s)
        buffers = s.buffers()
        if n:
            offsets = np.frombuffer(buffers[1], dtype=np.int32)[s.offset : s.offset + n + 1].astype(np.int64)
        else:
            offsets = np.zeros(1, dtype=np.int64)
        self.starts, self.ends = offsets[:-1], offsets[1:]
        self.lengths = self.ends - self.starts
        data = np.frombuffer(buffers[2], dtype=np.uint8) if n and buffers[2] is not None else None
        self.data = data if data is not None and len(data) else np.zeros(1, dtype=np.uint8)
        self.low, self.high = int(offsets[0]), int(offsets[-1])  # the cells' bytes, one after another

    def find(self, byte_class: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(positions in ``data``, cell of each) of the bytes in ``byte_class`` (bytes -> boolean mask)."""
        found = np.flatnonzero(byte_class(self.data[self.low : self.high])) + self.low
        # cell i holds the bytes from ends[i-1] to ends[i] (an Arrow string array's cells are contiguous)
        return found, np.searchsorted(self.ends, found, side="right")

    def count(self, byte_class: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Per cell, how many of its bytes are in ``byte_class``."""
        _found, cell = self.find(byte_class)
        return np.bincount(cell, minlength=len(self.starts))

    def byte_at(self, position: np.ndarray | int) -> np.ndarray:
        """The byte at ``position`` within each cell (from its start), 0 where the cell is shorter."""
        at = self.starts + position
        return np.where(at < self.ends, np.take(self.data, at, mode="clip"), 0)

    def at_an_edge(self, byte_class: Callable[[np.ndarray], np.ndarray]) -> bool:
        """Whether any cell starts or ends with a byte of ``byte_class`` (a look at two bytes a cell, not a
        pass over all of them)."""
        filled = self.lengths > 0
        if not filled.any():
            return False
        firsts = np.take(self.data, self.starts[filled])
        lasts = np.take(self.data, self.ends[filled] - 1)
        return bool(byte_class(firsts).any() or byte_class(lasts).any())

    def pairs(self, first: int, second: int) -> np.ndarray:
        """Which cells hold the byte ``first`` followed by ``second``."""
        data = self.data[self.low : self.high]
        found = np.flatnonzero((data[:-1] == first) & (data[1:] == second)) + self.low
        hits = np.zeros(len(self.starts), dtype=bool)
        if len(found):
            cell = np.searchsorted(self.ends, found, side="right")
            hits[cell[found + 1 < self.ends[cell]]] = True  # both bytes in the same cell
        return hits


def _any_of(values: bytes) -> Callable[[np.ndarray], np.ndarray]:
    """A byte class of a few bytes: comparisons are several times faster than a table lookup."""

    def mask(data: np.ndarray) -> np.ndarray:
        found = data == values[0]
        for value in values[1:]:
            found |= data == value
        return found

    return mask


def _not_digit(data: np.ndarray) -> np.ndarray:
    return (data < 48) | (data > 57)


def _nonzero_digit(data: np.ndarray) -> np.ndarray:
    return (data >= 49) & (data <= 57)


def _not_digit_or_point(data: np.ndarray) -> np.ndarray:
    return ((data < 48) | (data > 57)) & (data != 46)


TRIMMED = _any_of(b" \t\n\x0b\x0c\r")  # what pyarrow's ascii_trim_whitespace removes
ALL_TRIMMED = _any_of(ASCII_WHITESPACE.encode())
POINT = _any_of(b".")
COLLAPSED_OTHER = _any_of(b"\t\n\r")
SPECIAL = _any_of(b',"\r\n')  # what makes a CSV field need quotes


@dataclass(frozen=True)
class DateLayout:
    """Where the digits and the literal bytes of one date format sit, with two-digit months and days."""

    width: int  # bytes
    digits: np.ndarray  # positions of the YYYY, MM and DD digits
    literal_at: np.ndarray
    literals: np.ndarray
    iso_order: np.ndarray  # the positions that make YYYY-MM-DD (the dashes are written afterwards)

    @classmethod
    def of(cls, fmt: str) -> DateLayout:
        positions: dict[str, int] = {}
        literal_at: list[int] = []
        literals = bytearray()
        at = 0
        for token in _tokens(fmt):
            if token in ("YYYY", "MM", "DD"):
                positions[token] = at
                at += len(token)
            else:
                for byte in token.encode("utf-8"):
                    literal_at.append(at)
                    literals.append(byte)
                    at += 1
        y, m, d = positions["YYYY"], positions["MM"], positions["DD"]
        digits = [*range(y, y + 4), m, m + 1, d, d + 1]
        return cls(
            width=at,
            digits=np.array(digits),
            literal_at=np.array(literal_at, dtype=np.int64),
            literals=np.frombuffer(bytes(literals), dtype=np.uint8),
            iso_order=np.array([y, y + 1, y + 2, y + 3, 0, m, m + 1, 0, d, d + 1]),
        )


class ColumnScreen:
    """One contract column's vectorized screen; cells it cannot prove valid are left to the exact rules."""

    def __init__(self, col: Column, nulls: tuple[str, ...]):
        self.col = col
        self.nulls = pa.array(list(nulls), pa.string())
        self.longest_null = max(len(v.encode("utf-8")) for v in nulls)
        self.check: Callable[[pa.Array, Cells, bool], Checked] = getattr(self, f"_{col.type}")
        self.pattern = patterns.translate(col.pattern) if col.pattern is not None else None  # as RE2 runs it
        self.date_layouts = [DateLayout.of(fmt) for fmt in col.formats]

    def __call__(self, raw: pa.Array, has_control: bool, ascii: bool) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """(values with NULLs, is_null, needs_exact) for one batch's raw cells.

        ``has_control``: whether the file has shown control bytes yet; without them, ASCII whitespace is
        exactly what ``str.strip`` removes from ASCII text, and the cheap kernels suffice.
        ``ascii``: whether the batch's bytes are all ASCII, which spares the Unicode checks.
        """
        cells = Cells(raw)
        if not self.col.trim:
            trimmed = raw  # the column keeps its cells' edges as they are
        elif cells.at_an_edge(ALL_TRIMMED if has_control else TRIMMED):
            trimmed = pc.utf8_trim(raw, characters=ASCII_WHITESPACE) if has_control else pc.ascii_trim_whitespace(raw)
            cells = Cells(trimmed)
        else:
            trimmed = raw  # nothing to trim: spare the copy
        needs_exact = np.zeros(len(raw), dtype=bool)
        if self.col.trim and not ascii and not pc.all(pc.string_is_ascii(trimmed)).as_py():
            needs_exact |= _matches(trimmed, NON_ASCII_AT_EDGE)  # Python strips Unicode whitespace too
        if has_control:
            needs_exact |= _matches(trimmed, CONTROL)
        short = cells.lengths <= self.longest_null
        if short.all():
            is_null = _np(pc.is_in(trimmed, value_set=self.nulls))
        elif short.any():
            is_null = np.zeros(len(raw), dtype=bool)
            candidates = np.flatnonzero(short)
            is_null[candidates] = _np(pc.is_in(trimmed.take(pa.array(candidates)), value_set=self.nulls))
        else:
            is_null = np.zeros(len(raw), dtype=bool)
        values, ok = self.check(trimmed, cells, ascii)
        needs_exact |= ~ok & ~is_null
        if self.col.required:
            needs_exact |= is_null
        return _with_nulls(values, is_null | needs_exact), is_null, needs_exact

    # one method per contract type: (trimmed cells, their bytes, all ASCII?) -> (normalized values, proven valid)

    def _text(self, s: pa.Array, cells: Cells, ascii: bool) -> Checked:
        col = self.col
        ok = np.ones(len(s), dtype=bool)
        strict = bool(col.normalize or col.pattern or col.allowed)
        if strict and not ascii:
            ok &= _np(pc.string_is_ascii(s))  # the exact rules are Unicode-aware; the kernels here are not
        for step in col.normalize:
            if step == "lower":
                s = pc.ascii_lower(s)
            elif step == "upper":
                s = pc.ascii_upper(s)
            elif step == "collapse_whitespace":
                s = _collapse_whitespace(s)
        if col.max_length is not None:
            if ascii:  # one byte a character
                lengths = Cells(s).lengths if "collapse_whitespace" in col.normalize else cells.lengths
                ok &= lengths <= col.max_length
            else:
                ok &= _np(pc.less_equal(pc.utf8_length(s), col.max_length))
        if self.pattern is not None:
            ok &= _matches(s, self.pattern)  # the exact engine's RE2 program too
        if col.allowed is not None:
            ok &= _np(pc.is_in(s, value_set=pa.array(list(col.allowed), pa.string())))
        return s, ok

    def _integer(self, s: pa.Array, cells: Cells, ascii: bool) -> Checked:
        # Canonical integers only (no "+", no leading zeros): their normalized text is the text itself.
        # Anything else ("+5", "007") is rare and goes to the exact rules.
        low, high = INT_RANGES[self.col.type]
        negative = cells.byte_at(0) == 45
        digits = cells.lengths - negative
        lead = cells.byte_at(negative.astype(np.int64))
        ok = (digits >= 1) & (digits <= 18) & (cells.count(_not_digit) == negative)
        ok &= np.where(negative, lead != 48, (digits == 1) | (lead != 48))  # "-0" is normalized to "0": exact
        numbers = pc.cast(_with_nulls(s, ~ok), pa.int64()).fill_null(0).to_numpy()
        ok &= (numbers >= low) & (numbers <= high) & _within(self.col, numbers.astype(np.float64), exact=True)
        return s, ok

    _bigint = _integer

    def _decimal_comma(self, s: pa.Array, cells: Cells) -> tuple[pa.Array, Cells, np.ndarray]:
        """For a column that writes a decimal comma: the cells with the comma read as the point, and which
        cells held a point already (no number of this column: the exact rules say so)."""
        if self.col.decimal != ",":
            return s, cells, np.zeros(len(s), dtype=bool)
        pointed = cells.count(POINT) > 0
        s = pc.replace_substring(s, ",", ".")
        return s, Cells(s), pointed

    def _numeric(self, s: pa.Array, cells: Cells, ascii: bool) -> Checked:
        # Canonical decimals only (no "+", no leading zeros, digits on both sides of a point): their
        # normalized text is the text itself. The rest ("+1", ".5", "007.10") goes to the exact rules.
        col = self.col
        s, cells, pointed = self._decimal_comma(s, cells)
        negative = cells.byte_at(0) == 45
        body = cells.starts + negative
        found, cell = cells.find(POINT)
        points = np.bincount(cell, minlength=len(cells.starts))
        point = cells.ends.copy()
        point[cell] = found  # a cell's point, where it has one (cells with more are refused below)
        point = np.where(points == 1, point, cells.ends)
        whole_digits = point - body
        fraction_digits = np.where(points == 1, cells.ends - point - 1, 0)
        whole_zero = cells.byte_at(negative.astype(np.int64)) == 48
        ok = (
            (cells.count(_not_digit_or_point) == negative)
            & (points <= 1)
            & (whole_digits >= 1)
            & ((whole_digits == 1) | ~whole_zero)
            & ((points == 0) | (fraction_digits >= 1))
        )
        minus = np.flatnonzero(negative & ok)
        if len(minus):  # a negative zero ("-0.00") prints without its sign: the exact rules write it
            ok[minus[Cells(s.take(pa.array(minus))).count(_nonzero_digit) == 0]] = False
        if col.precision is not None:
            ok &= np.where(whole_zero, 0, whole_digits) <= col.precision - (col.scale or 0)
        if col.scale is not None:
            ok &= fraction_digits <= col.scale  # trailing zeros beyond the scale: exact rules decide
        if col.min is not None or col.max is not None:
            numbers = pc.cast(_with_nulls(s, ~ok), pa.float64()).fill_null(0.0).to_numpy()
            ok &= _within(col, numbers, exact=False)
        return s, ok & ~pointed

    def _double(self, s: pa.Array, cells: Cells, ascii: bool) -> Checked:
        s, cells, pointed = self._decimal_comma(s, cells)
        ok = _matches(s, r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$") & ~pointed
        numbers = pc.cast(pc.if_else(pa.array(ok), pc.utf8_ltrim(s, characters="+"), "0"), pa.float64()).to_numpy()
        ok &= np.isfinite(numbers) & _within(self.col, numbers, exact=False)
        return s, ok

    def _boolean(self, s: pa.Array, cells: Cells, ascii: bool) -> Checked:
        lowered = pc.ascii_lower(s)
        true = _np(pc.is_in(lowered, value_set=pa.array(sorted(TRUE_WORDS))))
        false = _np(pc.is_in(lowered, value_set=pa.array(sorted(FALSE_WORDS))))
        values = pc.if_else(pa.array(true), "true", "false")
        ok = true | false
        return values, ok if ascii else ok & _np(pc.string_is_ascii(s))

    def _date(self, s: pa.Array, cells: Cells, ascii: bool) -> Checked:
        # Per format, in order: the cells of fixed width (two-digit month and day) are read by position;
        # the first format a cell matches decides it, valid date or not, as in the exact rules. Cells with
        # a one-digit month or day are rare and go to the exact rules.
        n = len(s)
        decided = np.zeros(n, dtype=bool)
        iso = np.zeros((n, 10), dtype=np.uint8)  # YYYY-MM-DD, filled in for the decided cells
        for layout in self.date_layouts:
            rows = np.flatnonzero(~decided & (cells.lengths == layout.width))
            if not len(rows):
                continue
            text = cells.data[cells.starts[rows, None] + np.arange(layout.width)]  # these cells are that wide
            matched = ((text[:, layout.digits] - np.uint8(48)) < 10).all(axis=1) & (  # digits: 48-57, wrapped
                text[:, layout.literal_at] == layout.literals
            ).all(axis=1)
            hits = rows[matched]
            iso[hits] = text[matched][:, layout.iso_order]
            decided[hits] = True
        digits = iso.astype(np.int16) - 48  # the years of decided cells fit (undecided ones wrap, unused)
        years = digits[:, 0] * 1000 + digits[:, 1] * 100 + digits[:, 2] * 10 + digits[:, 3]
        months = digits[:, 5] * 10 + digits[:, 6]
        days = digits[:, 8] * 10 + digits[:, 9]
        ok = decided & _real_dates(years, months, days)
        if not ok.any():
            return pa.nulls(n, pa.string()), ok
        iso[:, 4] = iso[:, 7] = 45
        offsets = np.arange(0, 10 * n + 1, 10, dtype=np.int32)
        text = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(iso))
        return text, ok

    def _timestamptz(self, s: pa.Array, cells: Cells, ascii: bool) -> Checked:
        return _exact_column(self.col, s)

    _timestamp = _timestamptz  # both go cell by cell through the exact rules


def _collapse_whitespace(s: pa.Array) -> pa.Array:
    """Runs of whitespace to one space, in the few cells that have one: runs of plain spaces are halved
    with a plain replace until none is left; cells with tabs or line breaks (rarer) take the regex."""
    cells = Cells(s)
    other = cells.count(COLLAPSED_OTHER) > 0
    if other.any():
        mask = pa.array(other)
        collapsed = pc.replace_substring_regex(s.filter(mask), r"[ \t\n\r\x0b\x0c\x1c-\x1f]+", " ")
        s = pc.replace_with_mask(s, mask, collapsed)
        cells = Cells(s)
    doubled = cells.pairs(32, 32)
    if doubled.any():
        mask = pa.array(doubled)
        subset = s.filter(mask)
        while pc.any(pc.match_substring(subset, "  ")).as_py():
            subset = pc.replace_substring(subset, "  ", " ")
        s = pc.replace_with_mask(s, mask, subset)
    return s


def _within(col: Column, numbers: np.ndarray, exact: bool) -> np.ndarray:
    """min/max in floats; values too close to a bound for floats to decide go to the exact rules."""
    ok = np.ones(len(numbers), dtype=bool)
    for bound, keep in ((col.min, np.greater_equal), (col.max, np.less_equal)):
        if bound is None:
            continue
        b = float(bound)
        ok &= keep(numbers, b)
        if not exact:
            ok &= np.abs(numbers - b) > 1e-9 * max(1.0, abs(b))
        elif Decimal(b) != bound:
            ok &= numbers != b
    return ok


MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int16)


def _real_dates(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    limit = MONTH_DAYS[np.clip(m, 0, 12)] + ((m == 2) & leap)
    return (y >= 1) & (m >= 1) & (m <= 12) & (d >= 1) & (d <= limit)


def _tokens(fmt: str) -> Iterator[str]:
    i = 0
    while i < len(fmt):
        for token in ("YYYY", "MM", "DD"):
            if fmt.startswith(token, i):
                yield token
                i += len(token)
                break
        else:
            yield fmt[i]
            i += 1


def _exact_column(col: Column, s: pa.Array) -> Checked:
    coerce = build_coercer(col)
    values: list[str | None] = []
    ok = np.zeros(len(s), dtype=bool)
    for i, value in enumerate(s.to_pylist()):
        try:
            values.append(coerce(value))
            ok[i] = True
        except Exception:
            values.append(None)
    return pa.array(values, pa.string()), ok


# --- output -----------------------------------------------------------------------------------------


NO_LINE = pa.scalar(None, pa.string())


def csv_lines(columns: list[pa.Array], maybe_special: list[bool], keep: np.ndarray | None = None) -> bytes:
    """Rows as CSV (NULL as an empty field, quoting exactly as ``processing.csv_field``), one buffer; only the
    rows ``keep`` marks, if given (the others are never joined: a null separator makes their line null)."""
    rows = len(columns[0]) if columns else 0
    parts = []
    for column, special in zip(columns, maybe_special):
        if special:
            needs = Cells(column).count(SPECIAL) > 0
            if needs.any():
                mask = pa.array(needs)
                subset = column.filter(mask)
                quoted = pc.binary_join_element_wise('"', pc.replace_substring(subset, '"', '""'), '"', "")
                column = pc.replace_with_mask(column, mask, quoted)
        parts.append(column)
    parts.append(pa.nulls(rows, pa.string()))
    separator = "," if keep is None else pc.if_else(pa.array(keep), ",", NO_LINE)
    joined = pc.binary_join_element_wise(
        *parts, separator, null_handling="replace", null_replacement=""
    )  # a trailing "" column gives every line a final ","; it is swapped for the newline below
    if not len(joined) or joined.null_count == len(joined):
        return b""
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[joined.offset : joined.offset + len(joined) + 1]
    ends = offsets[1:] if keep is None else offsets[1:][keep]
    block = bytearray(memoryview(joined.buffers()[2])[offsets[0] : offsets[-1]])  # the one copy
    np.frombuffer(block, dtype=np.uint8)[ends - offsets[0] - 1] = 10  # each line's last "," becomes "\n"
    return block  # type: ignore[return-value]  # a bytearray: every sink takes any buffer


# --- the engine -------------------------------------------------------------------------------------


def split_header(source: Source) -> tuple[list[str], int, int]:
    """(header fields, byte length of the sample up to the header's end, number of lines up to there)."""
    sample = source.sample
    start = 0
    lines_before = source.text_format.lines_before_header
    for _ in range(lines_before):  # "sep=;", then the lines the contract skips: lines, whatever they hold
        end_of_line = sample.find(b"\n", start)
        if end_of_line < 0:
            raise ExactEngineNeeded("the lines before the header run past the sample")
        if b"\r" in sample[start : end_of_line - 1]:
            raise ExactEngineNeeded("a line before the header that does not end with LF or CRLF")
        start = end_of_line + 1
    quotes = 0
    quoted = source.text_format.quoted
    end = -1
    for i, byte in enumerate(sample[start : start + (1 << 20)], start):
        if byte == 34 and quoted:
            quotes += 1
        elif byte == 10 and quotes % 2 == 0:
            end = i + 1
            break
    if end < 0:
        raise ExactEngineNeeded("no complete header line in the sample")
    text = sample[start:end].decode(source.codec)
    if not text.strip():
        raise ExactEngineNeeded("blank lines before the header")
    fields = next(csv.reader(io.StringIO(text, newline=""), strict=True, **source.text_format.csv_options))
    return fields, end, lines_before + text.count("\n")


def supported(source: Source) -> str | None:
    """Why the columnar engine cannot take this file, or None."""
    if source.codec not in ("utf-8", "utf-8-sig", "cp1252", "latin-1"):
        return f"{source.codec} is not an ASCII-compatible encoding"
    return None


@dataclass
class _Parsed:
    """One block of the body, parsed: its rows as text cells, and what the line index knows of them."""

    batch: pa.RecordBatch
    lines: np.ndarray  # the start line of every record (rows and invalid rows), in order
    invalid: list[tuple[int, str]]  # (record number in the block, text) of the rows pyarrow could not split
    ascii: bool  # the block's bytes are all ASCII
    has_control: bool  # the file had shown control bytes by the time the block was cut

    @property
    def records(self) -> int:
        return len(self.lines)


def _parsed_blocks(source: Source, header_bytes: int, index: LineIndex, width: int) -> Iterator[_Parsed]:
    """The body cut into blocks at record ends, each parsed by pyarrow into a batch of text cells."""
    delimiter = source.text_format.delimiter
    quoted = source.text_format.quoted
    names = [f"f{i}" for i in range(width)]
    read_options = pacsv.ReadOptions(
        column_names=names,
        use_threads=False,
        block_size=2 * BLOCK_BYTES,
        encoding="utf8" if source.codec.startswith("utf-8") else source.codec,
    )
    convert_options = {  # by whether the block is all ASCII, which is valid UTF-8 without checking
        ascii: pacsv.ConvertOptions(
            column_types={n: pa.string() for n in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            check_utf8=not ascii,
        )
        for ascii in (False, True)
    }
    for block, records in _record_blocks(source, header_bytes, index):
        if not records:
            continue
        if block.startswith(b"\xef\xbb\xbf") and source.codec.startswith("utf-8"):
            raise ExactEngineNeeded("a record that starts with a byte-order mark (pyarrow would drop it)")
        lines = index.take(records)
        invalid: list[tuple[int, str]] = []

        def on_invalid_row(row: Any, invalid: list[tuple[int, str]] = invalid) -> str:
            invalid.append((row.number, row.text))
            return "skip"

        parse_options = pacsv.ParseOptions(
            delimiter=delimiter,
            quote_char='"' if quoted else False,
            double_quote=quoted,
            escape_char=False,
            newlines_in_values=quoted,
            ignore_empty_lines=True,
            invalid_row_handler=on_invalid_row,
        )
        ascii = int(np.frombuffer(block, dtype=np.uint8).max(initial=0)) < 128
        table = pacsv.read_csv(pa.py_buffer(block), read_options, parse_options, convert_options[ascii])
        batch = pa.RecordBatch.from_arrays(
            [pa.concat_arrays(c.chunks) if c.num_chunks != 1 else c.chunk(0) for c in table.columns], names
        )
        if batch.num_rows + len(invalid) != records:
            raise ExactEngineNeeded("the parser and the line index disagree on the records of a block")
        if len(block) > MAX_FIELD_CHARS and any(_too_long(c) for c in batch.columns):
            raise ExactEngineNeeded("a field larger than the exact engine accepts")
        yield _Parsed(batch, lines, invalid, ascii, index.has_control)


#: How many parsed blocks the reading thread may have ready ahead of the validation (each ~6 MB in memory).
PARSED_AHEAD = 2


def _ahead(items: Iterator[_Parsed], name: str) -> Iterator[_Parsed]:
    """``items``, produced by a thread of its own at most PARSED_AHEAD ahead of the caller: reading, cutting
    and parsing the next block (pyarrow's parser and the line index's numpy, which let go of the GIL) runs
    while the caller validates this one, on another core when there is one. What the thread raises is raised
    here, in order. A caller that stops early leaves the thread to end by itself (at its next block)."""
    done = object()
    ready: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=PARSED_AHEAD)
    stop = threading.Event()

    def put(item: Any, error: BaseException | None = None) -> bool:
        while not stop.is_set():
            try:
                ready.put((item, error), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:
            put(done, exc)
        else:
            put(done)

    threading.Thread(target=produce, name=name, daemon=True).start()
    try:
        while True:
            item, error = ready.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()


def process_columnar(
    source: Source,
    header: list[str],
    header_bytes: int,
    header_lines: int,
    contract: Contract,
    plan: HeaderPlan,
    emit_valid: Callable[[bytes], None],
    emit_errors: Callable[[list[RowError]], None],
    counts: Any,
) -> None:
    """Validate the body; hand on CSV blocks of valid rows and lists of row errors, in line order."""
    index = LineIndex(source.text_format.delimiter, first_line=header_lines + 1, quotes=source.text_format.quoted)
    screens = [ColumnScreen(col, contract.nulls(col)) for col in contract.columns]
    exact = RowValidator(contract, plan)
    keys = KeyChecks(contract)
    special = [col.type in ("text", "double", "timestamp", "timestamptz") for col in contract.columns]
    try:
        for parsed in _ahead(_parsed_blocks(source, header_bytes, index, len(header)), "csv-parse"):
            records, lines = parsed.records, parsed.lines
            is_row = np.ones(records, dtype=bool)
            blank = 0
            errors = []
            for number, text in parsed.invalid:
                is_row[number - 1] = False
                fields = _fields(text, source.text_format)
                if len(fields) == 1 and not fields[0].strip():
                    blank += 1  # a line of whitespace only: blank to the exact engine too, not a row
                    continue
                if len(fields) < plan.width and contract.null_padding:
                    raise ExactEngineNeeded("a row with fewer fields than the header, padded by the exact rules")
                errors.append(field_count_error(int(lines[number - 1]), fields, plan.width))
            row_lines = lines[is_row]
            counts.rows_total += records - blank
            valid_block, row_errors, n_valid = _validate_batch(
                parsed.batch, row_lines, plan, screens, exact, keys, special, parsed.has_control, parsed.ascii
            )
            errors += row_errors
            counts.rows_valid += n_valid
            counts.rows_rejected += records - blank - n_valid
            if valid_block:
                emit_valid(valid_block)
            if errors:
                errors.sort(key=lambda e: e.line)
                emit_errors(errors)
    except QuotingAnomaly as exc:
        raise ExactEngineNeeded(str(exc)) from None
    except (pa.ArrowInvalid, pa.ArrowException, UnicodeDecodeError) as exc:
        raise ExactEngineNeeded(f"the columnar reader stopped: {exc}") from None


def _too_long(column: pa.Array) -> bool:
    """Whether a cell has more characters than the exact engine accepts (bytes first: they bound them)."""
    if Cells(column).lengths.max(initial=0) <= MAX_FIELD_CHARS:
        return False
    return (pc.max(pc.utf8_length(column)).as_py() or 0) > MAX_FIELD_CHARS


#: The most bytes of one record the columnar engine holds: past them without the record's end, the file goes to
#: the exact engine, which reads a record within the field limit (MAX_FIELD_CHARS), so memory stays flat. A
#: 300 MB cell was held whole, copied and parsed: 1,047 MB at the peak, past a 1 GB function's memory.
RECORD_BYTES = 8 * BLOCK_BYTES


def _record_blocks(source: Source, header_bytes: int, index: LineIndex) -> Iterator[tuple[bytes, int]]:
    """The body in blocks of about BLOCK_BYTES that end where a record ends, with their record counts.

    Cutting the blocks here (rather than letting pyarrow stream) keeps memory to a block or two: pyarrow's
    own streaming reader reads ten blocks ahead. A record longer than RECORD_BYTES is the exact engine's.
    """
    pending = bytearray()
    cut = -1  # offset in pending just past its last complete record
    emitted = 0
    chunks = source.chunks()
    first = next(chunks)[header_bytes:]
    for chunk in _chain(first, chunks):
        end = index.feed(chunk)
        if end >= 0:
            cut = len(pending) + end
        pending += chunk
        if cut >= BLOCK_BYTES:
            block = bytes(pending[:cut])
            del pending[:cut]
            cut = -1
            yield block, index.records - emitted
            emitted = index.records
        elif len(pending) - max(cut, 0) > RECORD_BYTES:
            raise ExactEngineNeeded(f"a record longer than {RECORD_BYTES:,} bytes")
    index.finish()
    if pending:
        yield bytes(pending), index.records - emitted


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _fields(text: str, fmt: TextFormat) -> list[str]:
    return next(csv.reader(io.StringIO(text, newline=""), **fmt.csv_options), [])


def _repeated_header(batch: pa.RecordBatch, plan: HeaderPlan) -> np.ndarray:
    """The rows that are the header again (``HeaderPlan.repeats_header``): the first column looked at first,
    which in nearly every block rules out every row."""
    same = np.zeros(batch.num_rows, dtype=bool)
    if plan.width < 2:
        return same
    same = _np(pc.equal(batch.column(0), plan.header[0]))
    for i in range(1, plan.width):
        if not same.any():
            break
        same &= _np(pc.equal(batch.column(i), plan.header[i]))
    return same


def _decide_unsure(
    batch: pa.RecordBatch,
    lines: np.ndarray,
    plan: HeaderPlan,
    exact: RowValidator,
    columns: list[pa.Array],
    unsure_cells: list[np.ndarray],
    repeated: np.ndarray,
) -> tuple[np.ndarray, list[RowError]]:
    """Which rows of the batch are valid, and the errors of the others (in row order, then column order).

    The cells the screens could not prove valid are decided one by one by the exact rules
    (``RowValidator.validate_cell``); the values of those found valid are written into ``columns``. The cells
    the screens proved are valid with those values by construction, so a row's verdict and errors are what
    ``RowValidator.validate_cells`` gives for the whole row, at the cost of its unsure cells only: a row
    with one bad cell of eight costs one cell's rules, not eight. Rows that repeat the header go whole."""
    valid = ~repeated
    errors_by_row: dict[int, list[RowError]] = {}
    whole = np.flatnonzero(repeated)
    if len(whole):
        for row, raw in zip(whole.tolist(), batch.take(pa.array(whole)).to_pylist()):
            _values, errors_by_row[row] = exact.validate_cells(int(lines[row]), list(raw.values()))
    for j, (unsure, position) in enumerate(zip(unsure_cells, plan.positions)):
        cells = np.flatnonzero(unsure & ~repeated)
        if not len(cells):
            continue
        raw_cells = batch.column(position).take(pa.array(cells)).to_pylist() if position >= 0 else [""] * len(cells)
        decided = np.zeros(len(valid), dtype=bool)
        values: list[str | None] = []
        for row, field in zip(cells.tolist(), raw_cells):
            value, error = exact.validate_cell(j, int(lines[row]), field)
            if error is None:
                decided[row] = True
                values.append(value)
            else:
                valid[row] = False
                errors_by_row.setdefault(row, []).append(error)
        if values:
            columns[j] = pc.replace_with_mask(columns[j], pa.array(decided), pa.array(values, pa.string()))
    return valid, [error for row in sorted(errors_by_row) for error in errors_by_row[row]]


def _validate_batch(
    batch: pa.RecordBatch,
    lines: np.ndarray,
    plan: HeaderPlan,
    screens: list[ColumnScreen],
    exact: RowValidator,
    keys: KeyChecks,
    special: list[bool],
    has_control: bool,
    ascii: bool,
) -> tuple[bytes, list[RowError], int]:
    n = batch.num_rows
    empty = pa.array([""] * n, pa.string()) if -1 in plan.positions else None
    columns: list[pa.Array] = []
    unsure_cells: list[np.ndarray] = []
    for screen, position in zip(screens, plan.positions):
        raw = batch.column(position) if position >= 0 else empty
        values, _is_null, unsure = screen(raw, has_control, ascii)
        columns.append(values)
        unsure_cells.append(unsure)
    repeated = _repeated_header(batch, plan)  # the exact rules name it
    valid, errors = _decide_unsure(batch, lines, plan, exact, columns, unsure_cells, repeated)

    valid_rows = np.flatnonzero(valid)
    for label, indexes, seen in keys.checks:
        if not len(valid_rows):
            break
        key_columns = [columns[i].take(pa.array(valid_rows)) for i in indexes]
        present = np.ones(len(valid_rows), dtype=bool)
        for kc in key_columns:
            present &= _np(pc.is_valid(kc))
        candidates = valid_rows[present]
        if seen.integer:
            key_values = pc.cast(key_columns[0].filter(pa.array(present)), pa.int64()).to_numpy()
        else:
            key_values = np.array(
                list(zip(*(kc.filter(pa.array(present)).to_pylist() for kc in key_columns))), dtype=object
            )
            if len(indexes) == 1:
                key_values = np.array([k[0] for k in key_values], dtype=object)
        first = seen.first_lines(key_values, lines[candidates].astype(np.int64))
        repeated = first >= 0
        for row_index, first_line, key in zip(candidates[repeated], first[repeated], key_values[repeated]):
            shown = ",".join(map(str, key)) if isinstance(key, tuple) else str(key)
            errors.append(
                RowError(
                    int(lines[row_index]),
                    label,
                    "duplicate_key",
                    shown,
                    f"{label} {shown} already appeared at line {first_line}",
                )
            )
        valid[candidates[repeated]] = False
        valid_rows = np.flatnonzero(valid)

    block = csv_lines(columns, special, keep=valid)
    return block, errors, int(valid.sum())
