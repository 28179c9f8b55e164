"""Check a header against a contract (fail fast), then normalize and validate every row. Pure functions.

``plan_header`` maps the file's columns onto the contract's or rejects the file with a specific reason.
``RowValidator`` turns one record into normalized values (strings ready for CSV/COPY, ``None`` for NULL)
or into the list of what is wrong with it: line, column, rule, offending value and a message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

import numpy as np

from . import patterns
from .contract import Column, Contract
from .headers import ColumnLabels
from .rejection import FileRejected, listing

#: Offending values are cut to this many characters in error reports.
MAX_REPORTED_VALUE = 200
INT_RANGES = {"integer": (-(2**31), 2**31 - 1), "bigint": (-(2**63), 2**63 - 1)}
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0"})
_INTEGER = re.compile(r"[+-]?\d+")
_NUMERIC = re.compile(r"([+-]?)(\d*)(?:\.(\d*))?")
_WHITESPACE_RUN = re.compile(r"\s+")


@dataclass(frozen=True)
class RowError:
    line: int
    column: str
    rule: str
    value: str
    message: str


class CellError(Exception):
    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule
        self.message = message


@dataclass(frozen=True)
class HeaderPlan:
    """Where each contract column sits in the file's records (-1: absent), and what is ignored."""

    positions: tuple[int, ...]
    width: int
    ignored: tuple[str, ...]
    header: tuple[str, ...] = ()  # the header's cells as the file has them

    def repeats_header(self, fields: list[str]) -> bool:
        return repeats_header(self.header, fields)


def repeats_header(header: tuple[str, ...] | list[str], fields: list[str]) -> bool:
    """Whether a record is the header again (two files concatenated with their headers), in a file of two
    columns or more (in one column, a value may be the column's name)."""
    return len(header) > 1 and tuple(fields) == tuple(header)


def plan_header(contract: Contract, header: list[str]) -> HeaderPlan:
    """Which header cell each column reads. A column with a ``position`` reads that cell of the header, when
    the cell names it (a header that repeats a name: ``Value`` in columns 2 and 5); the others, the cell that
    names them, wherever it is."""
    pinned = {c.position - 1: c for c in contract.columns if c.position is not None}
    pinned_at = {c.name: i for i, c in pinned.items()}
    labels = ColumnLabels((c.name, c.aliases) for c in contract.columns if c.position is None)
    targets = [
        pinned[i].name if i in pinned and _names(pinned[i], h, i) else labels.resolve(h, i)
        for i, h in enumerate(header)
    ]
    if not any(targets):
        expected = ",".join(contract.column_names)
        where = (
            f"the line after the {contract.skip_lines} the contract skips" if contract.skip_lines else "the first line"
        )
        raise FileRejected(
            "no_header",
            f"{where} ({_cut(','.join(header), 120)!r}) names no column of contract {contract.name!r}; expected "
            f"a header line such as {expected!r} (lines before the header that are no part of the table, a "
            "title or a note, are skipped with the contract's skip_lines)",
        )

    positions: dict[str, int] = {}
    duplicates = []
    unknown = []
    for index, target in enumerate(targets):
        if target is None:
            unknown.append(header[index].strip().lstrip("\ufeff") or f"(column {index + 1} has no name)")
        elif target in positions:
            first = header[positions[target]].strip()
            duplicates.append(
                f"{header[index].strip()!r} (column {index + 1}) repeats {first!r} (column {positions[target] + 1})"
            )
        else:
            positions[target] = index
    if duplicates:
        raise FileRejected("duplicate_header", "duplicate header names: " + listing(duplicates, separator="; "))
    misplaced = [name for name in pinned_at if name not in positions]
    if misplaced:
        raise FileRejected(
            "missing_columns",
            "column(s) read by position not where the contract expects them: "
            + listing(
                f"{name} (column {pinned_at[name] + 1}: "
                + (
                    f"{header[pinned_at[name]].strip()!r})"
                    if pinned_at[name] < len(header)
                    else "the header is narrower)"
                )
                for name in misplaced
            ),
        )
    missing = [c.name for c in contract.columns if c.required and c.name not in positions]
    if missing:
        raise FileRejected(
            "missing_columns",
            f"required column(s) missing from the header: {', '.join(missing)} "
            f"(header has: {', '.join(repr(h.strip()) for h in header if h.strip())})",
        )
    if unknown and contract.unknown_columns == "reject":
        shown = listing((repr(_cut(u, 40)) for u in unknown), most=20)
        raise FileRejected(
            "unknown_columns",
            f"column(s) not in contract {contract.name!r}: {shown} "
            f"(the contract rejects unknown columns; known: {', '.join(contract.column_names)})",
        )
    return HeaderPlan(
        positions=tuple(positions.get(c.name, -1) for c in contract.columns),
        width=len(header),
        ignored=tuple(unknown),
        header=tuple(header),
    )


def _names(col: Column, header: str, position: int) -> bool:
    """Whether a header cell names ``col`` (its name or an alias, exactly or as mapped)."""
    return ColumnLabels([(col.name, col.aliases)]).resolve(header, position) == col.name


Coercer = Callable[[str], str]


class RowValidator:
    """Validates records against one contract and header; remembers keys to catch duplicates in a file."""

    def __init__(self, contract: Contract, plan: HeaderPlan):
        self.contract = contract
        self.plan = plan
        self._cells = [
            (col, pos, col.required, build_coercer(col), frozenset(contract.nulls(col)), col.trim)
            for col, pos in zip(contract.columns, plan.positions)
        ]
        self.keys = KeyChecks(contract)

    def __call__(self, line: int, fields: list[str]) -> tuple[list[str | None] | None, list[RowError]]:
        values, errors = self.validate_cells(line, fields)
        if values is None:
            return None, errors
        duplicate = self.keys.check_row(values, line)
        return (None, [duplicate]) if duplicate else (values, [])

    def validate_cells(self, line: int, fields: list[str]) -> tuple[list[str | None] | None, list[RowError]]:
        """Every rule except uniqueness within the file (which depends on the rows before)."""
        if len(fields) < self.plan.width and self.contract.null_padding:
            fields = fields + [""] * (self.plan.width - len(fields))  # the missing fields at its end: empty
        if len(fields) != self.plan.width:
            return None, [field_count_error(line, fields, self.plan.width)]
        if self.plan.repeats_header(fields):
            shown = _cut(",".join(fields), MAX_REPORTED_VALUE)
            message = "the row repeats the header line: files concatenated with their headers?"
            return None, [RowError(line, "", "repeated_header", shown, message)]
        values: list[str | None] = []
        errors: list[RowError] = []
        for i, (_col, pos, *_rest) in enumerate(self._cells):
            value, error = self.validate_cell(i, line, fields[pos] if pos >= 0 else "")
            values.append(value)
            if error is not None:
                errors.append(error)
        return (None, errors) if errors else (values, [])

    def validate_cell(self, i: int, line: int, field: str) -> tuple[str | None, RowError | None]:
        """The contract's ``i``-th column's rules applied to one cell of the record at ``line``: (its value,
        None), or (None, what is wrong with it). A row is valid when each of its cells is."""
        col, _pos, required, coerce, nulls, trim = self._cells[i]
        raw = field.strip() if trim else field
        if raw in nulls:
            error = RowError(line, col.name, "required", raw, f"{col.name} is required") if required else None
            return None, error
        try:
            return coerce(raw), None
        except CellError as exc:
            return None, RowError(line, col.name, exc.rule, _cut(raw, MAX_REPORTED_VALUE), exc.message)


def field_count_error(line: int, fields: list[str], width: int) -> RowError:
    return RowError(
        line,
        "",
        "field_count",
        _cut(",".join(fields), MAX_REPORTED_VALUE),
        f"expected {width} fields, found {len(fields)}",
    )


class KeyChecks:
    """Rejects a row whose key (the upsert key, else the primary key) or unique column repeats an earlier
    valid row's. The first valid occurrence claims the value; invalid rows claim nothing."""

    def __init__(self, contract: Contract):
        key = contract.upsert_key or contract.primary_key
        names = contract.column_names
        self.checks: list[tuple[str, list[int], SeenValues]] = []
        if key:
            integer = len(key) == 1 and contract.columns[names.index(key[0])].type in ("integer", "bigint")
            self.checks.append((",".join(key), [names.index(k) for k in key], SeenValues(integer)))
        for i, col in enumerate(contract.columns):
            if col.unique and col.name not in key:
                self.checks.append((col.name, [i], SeenValues(col.type in ("integer", "bigint"))))

    def check_row(self, values: list[str | None], line: int) -> RowError | None:
        for label, indexes, seen in self.checks:
            key = tuple(values[i] for i in indexes)
            if all(k is None for k in key):
                continue
            first = seen.first_line(key, line)
            if first is not None:
                shown = ",".join("" if k is None else str(k) for k in key)
                return RowError(
                    line, label, "duplicate_key", shown, f"{label} {shown} already appeared at line {first}"
                )
        return None


def _deltas(values: np.ndarray) -> np.ndarray:
    steps = np.diff(values)
    return steps.astype(np.uint16) if len(steps) == 0 or steps.max() < 2**16 else steps.astype(np.int64)


def _undelta(first: int, deltas: np.ndarray) -> np.ndarray:
    return first + np.concatenate([[0], np.cumsum(deltas, dtype=np.int64)])


class _Run:
    """Ascending, unique integer keys of one batch with the lines they first appeared on, kept as deltas:
    mostly 2 bytes a key for the keys (ids with small gaps) and 2 for the lines. Expanded only to answer a
    lookup that falls inside the run, which is rare (a repeat, or keys out of order)."""

    def __init__(self, keys: np.ndarray, lines: np.ndarray):
        self.low, self.high = int(keys[0]), int(keys[-1])
        self.key_deltas = _deltas(keys)
        self.first_line = int(lines[0])
        self.line_deltas = _deltas(lines)

    def probe(self, probe: np.ndarray) -> np.ndarray:
        """The first lines of the probed keys found in this run, -1 elsewhere."""
        found = np.full(len(probe), -1, dtype=np.int64)
        inside = (probe >= self.low) & (probe <= self.high)
        if not inside.any():
            return found
        keys = _undelta(self.low, self.key_deltas)
        pos = np.searchsorted(keys, probe[inside]).clip(max=len(keys) - 1)
        hit = keys[pos] == probe[inside]
        result = np.full(len(pos), -1, dtype=np.int64)
        result[hit] = _undelta(self.first_line, self.line_deltas)[pos[hit]]
        found[inside] = result
        return found


class SeenValues:
    """Values seen so far with the line of their first occurrence.

    Row by row (the exact engine) they live in a dict. Batch by batch (the columnar engine), integer keys
    live in numpy: a batch whose keys all exceed every key seen (ids in ascending order, the common case)
    becomes a compact run (about 4 bytes a key: key and line deltas), never copied again and
    skipped by later lookups; other batches are merged like an LSM tree (12 bytes a key). One file is
    checked by one engine only.
    """

    def __init__(self, integer: bool):
        self.integer = integer
        self._dict: dict[object, int] = {}
        self._runs: list[_Run] = []  # disjoint, in ascending key order
        self._levels: list[tuple[np.ndarray, np.ndarray]] = []  # overlapping, merged by size
        self._max: int | None = None

    def first_line(self, key: tuple[object, ...], line: int) -> int | None:
        """Row by row (the exact engine): record ``key`` at ``line`` unless seen; else the earlier line."""
        first = self._dict.setdefault(key, line)
        return None if first == line else first

    def first_lines(self, keys: np.ndarray, lines: np.ndarray) -> np.ndarray:
        """Vectorized: for each key (in row order) the line it first appeared on, or -1 for a new key."""
        out = np.full(len(keys), -1, dtype=np.int64)
        if not len(keys):
            return out
        if not self.integer:
            for i, (k, line) in enumerate(zip(keys.tolist(), lines.tolist())):
                first = self._dict.setdefault(k if isinstance(k, tuple) else (k,), line)
                if first != line:
                    out[i] = first
            return out
        unique, first_index, inverse = np.unique(keys, return_index=True, return_inverse=True)
        earlier = self._lookup(unique)
        batch_first = lines[first_index]
        first_of_row = np.where(earlier[inverse] >= 0, earlier[inverse], batch_first[inverse])
        is_repeat = (earlier[inverse] >= 0) | (np.arange(len(keys)) != first_index[inverse])
        out[is_repeat] = first_of_row[is_repeat]
        new = earlier < 0
        self._add(unique[new], batch_first[new])
        return out

    def _lookup(self, unique: np.ndarray) -> np.ndarray:
        earlier = np.full(len(unique), -1, dtype=np.int64)
        if self._max is not None and (unique <= self._max).any():  # keys above every key seen are new
            for run in self._runs:
                found = run.probe(unique)
                earlier = np.where(found >= 0, found, earlier)
            for level_keys, level_lines in self._levels:
                pos = np.searchsorted(level_keys, unique).clip(max=len(level_keys) - 1)
                hit = level_keys[pos] == unique
                earlier[hit] = level_lines[pos[hit]]
        return earlier

    def _add(self, keys: np.ndarray, lines: np.ndarray) -> None:
        if not len(keys):
            return
        if not self._levels and (self._max is None or keys[0] > self._max):
            self._runs.append(_Run(keys, lines))
        else:
            self._levels.append((keys, lines.astype(np.int32)))
            while len(self._levels) > 1 and len(self._levels[-1][0]) * 2 >= len(self._levels[-2][0]):
                (k2, l2), (k1, l1) = self._levels.pop(), self._levels.pop()
                merged_keys = np.concatenate([k1, k2])
                order = np.argsort(merged_keys, kind="stable")
                self._levels.append((merged_keys[order], np.concatenate([l1, l2])[order]))
        top = int(keys[-1])
        self._max = top if self._max is None else max(self._max, top)


def build_coercer(col: Column) -> Coercer:
    """Compose the type parser and the column's rules into one function ``str -> str``."""
    parse = _TYPE_PARSERS[col.type](col)
    checks: list[Callable[[str], None]] = []
    if col.max_length is not None:
        limit = col.max_length

        def check_length(value: str) -> None:
            if len(value) > limit:
                raise CellError("max_length", f"{col.name} is {len(value)} characters long; at most {limit}")

        checks.append(check_length)
    if col.pattern is not None:
        matches = patterns.searcher(col.pattern)  # RE2: linear in the cell, whatever the pattern

        def check_pattern(value: str) -> None:
            if not matches(value):
                raise CellError("pattern", f"{col.name} {_cut(value, 60)!r} does not match {col.pattern}")

        checks.append(check_pattern)
    if col.allowed is not None:
        allowed = frozenset(col.allowed)
        shown = ", ".join(col.allowed[:10])

        def check_allowed(value: str) -> None:
            if value not in allowed:
                raise CellError("allowed", f"{col.name} {_cut(value, 60)!r} is not one of: {shown}")

        checks.append(check_allowed)
    if not checks:
        return parse

    def coerce(raw: str) -> str:
        value = parse(raw)
        for check in checks:
            check(value)
        return value

    return coerce


def _text(col: Column) -> Coercer:
    steps: list[Callable[[str], str]] = []
    for name in col.normalize:
        if name == "lower":
            steps.append(str.lower)
        elif name == "upper":
            steps.append(str.upper)
        elif name == "collapse_whitespace":
            steps.append(lambda v: _WHITESPACE_RUN.sub(" ", v))
    if not steps:
        return lambda raw: raw

    def parse(raw: str) -> str:
        for step in steps:
            raw = step(raw)
        return raw

    return parse


def _range_check(col: Column) -> Callable[[object, str], None]:
    low, high = col.min, col.max

    def check(number: object, raw: str) -> None:
        if low is not None and number < low:  # type: ignore[operator]
            raise CellError("min", f"{col.name} {raw} is below the minimum {low}")
        if high is not None and number > high:  # type: ignore[operator]
            raise CellError("max", f"{col.name} {raw} is above the maximum {high}")

    return check


def _integer(col: Column) -> Coercer:
    low, high = INT_RANGES[col.type]
    in_range = _range_check(col)
    has_bounds = col.min is not None or col.max is not None

    def parse(raw: str) -> str:
        if not _INTEGER.fullmatch(raw):
            raise CellError("type", f"{col.name} {_cut(raw, 60)!r} is not an integer")
        number = int(raw)
        if not low <= number <= high:
            raise CellError("type", f"{col.name} {raw} does not fit a PostgreSQL {col.type}")
        if has_bounds:
            in_range(number, raw)
        return str(number)

    return parse


def _numeric(col: Column) -> Coercer:
    in_range = _range_check(col)
    precision, scale = col.precision, col.scale
    max_int_digits = precision - (scale or 0) if precision is not None else None

    def parse(raw: str) -> str:
        match = _NUMERIC.fullmatch(raw)
        if not match or not (match.group(2) or match.group(3)):
            raise CellError("type", f"{col.name} {_cut(raw, 60)!r} is not a number")
        sign, whole, fraction = match.group(1), match.group(2).lstrip("0"), match.group(3) or ""
        if max_int_digits is not None and len(whole) > max_int_digits:
            raise CellError(
                "precision",
                f"{col.name} {raw} has {len(whole)} digits before the point; "
                f"numeric({precision},{scale or 0}) allows {max_int_digits}",
            )
        if scale is not None and len(fraction.rstrip("0")) > scale:
            raise CellError("scale", f"{col.name} {raw} has more than {scale} decimal places")
        in_range(Decimal(raw), raw)
        # a negative zero ("-0.00") is zero: PostgreSQL's numeric has no sign for it, nor does the output
        text = ("-" if sign == "-" and (whole or fraction.strip("0")) else "") + (whole or "0")
        return text + "." + fraction if fraction else text

    return parse


def _double(col: Column) -> Coercer:
    in_range = _range_check(col)

    def parse(raw: str) -> str:
        try:
            number = float(raw)
        except ValueError:
            raise CellError("type", f"{col.name} {_cut(raw, 60)!r} is not a number") from None
        if not math.isfinite(number) or "_" in raw:
            raise CellError("type", f"{col.name} {_cut(raw, 60)!r} is not a finite decimal number")
        in_range(Decimal(raw), raw)
        return raw  # as written: PostgreSQL reads it to the same double, and the output stays recognisable

    return parse


def _decimal_comma(col: Column, parse: Coercer) -> Coercer:
    """``parse`` for a column whose file writes a decimal comma (``4,50``): the comma read as the point (a
    value with a point is no number of this column: ``1.234,5`` groups thousands, which it does not read);
    messages show the value as written."""
    if col.decimal != ",":
        return parse

    def read(raw: str) -> str:
        if "." in raw:
            raise CellError("type", f"{col.name} {_cut(raw, 60)!r} is not a number with a decimal comma")
        dotted = raw.replace(",", ".")
        try:
            return parse(dotted)
        except CellError as exc:
            raise CellError(exc.rule, exc.message.replace(dotted, raw)) from None

    return read


def _boolean(col: Column) -> Coercer:
    def parse(raw: str) -> str:
        word = raw.lower()
        if word in TRUE_WORDS:
            return "true"
        if word in FALSE_WORDS:
            return "false"
        raise CellError("type", f"{col.name} {_cut(raw, 60)!r} is not a boolean (true/false, t/f, yes/no, y/n, 1/0)")

    return parse


def _date(col: Column) -> Coercer:
    formats = [(fmt, _date_regex(fmt)) for fmt in col.formats]
    shown = " or ".join(col.formats)

    def parse(raw: str) -> str:
        for _fmt, regex in formats:
            match = regex.fullmatch(raw)
            if match:
                try:
                    return date(int(match["y"]), int(match["m"]), int(match["d"])).isoformat()
                except ValueError:
                    raise CellError("type", f"{col.name} {raw!r} is not a real calendar date") from None
        raise CellError("type", f"{col.name} {_cut(raw, 60)!r} is not a date in the form {shown}")

    return parse


def _date_regex(fmt: str) -> re.Pattern[str]:
    pattern = re.escape(fmt)
    for token, group in (("YYYY", r"(?P<y>\d{4})"), ("MM", r"(?P<m>\d{1,2})"), ("DD", r"(?P<d>\d{1,2})")):
        pattern = pattern.replace(token, group)
    return re.compile(pattern)


#: The fraction of the seconds in an ISO 8601 time ("10:00:00.123456789", "100000,5"): the only digits after
#: a point or comma there (an offset has none).
_SECONDS_FRACTION = re.compile(r"[.,](\d+)")


def _moment(col: Column, raw: str) -> datetime:
    """An ISO 8601 date and time, exactly (no digit past the microseconds dropped), with its offset if any."""
    if len(raw) < 13 or raw[10] not in "T t":
        raise CellError("type", f"{col.name} {_cut(raw, 60)!r} is not an ISO 8601 date and time")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise CellError("type", f"{col.name} {_cut(raw, 60)!r} is not an ISO 8601 date and time") from None
    fraction = _SECONDS_FRACTION.search(raw, 11)
    if fraction and fraction[1][6:].strip("0"):  # Python would cut the digits past the sixth, silently
        raise CellError(
            "precision",
            f"{col.name} {_cut(raw, 60)!r} has more than 6 decimal places in its seconds; "
            f"{col.type} holds microseconds",
        )
    return moment


def _timestamptz(col: Column) -> Coercer:
    def parse(raw: str) -> str:
        moment = _moment(col, raw)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat()

    return parse


def _timestamp(col: Column) -> Coercer:
    """A date and time as written, without a zone: a value with an offset names an instant, which this
    column cannot hold without choosing a zone for it (``timestamptz`` can)."""

    def parse(raw: str) -> str:
        moment = _moment(col, raw)
        if moment.tzinfo is not None:
            raise CellError(
                "type",
                f"{col.name} {_cut(raw, 60)!r} has a UTC offset; a timestamp column holds times without one "
                "(timestamptz holds instants)",
            )
        return moment.isoformat()

    return parse


_TYPE_PARSERS: dict[str, Callable[[Column], Coercer]] = {
    "text": _text,
    "integer": _integer,
    "bigint": _integer,
    "numeric": lambda col: _decimal_comma(col, _numeric(col)),
    "double": lambda col: _decimal_comma(col, _double(col)),
    "boolean": _boolean,
    "date": _date,
    "timestamp": _timestamp,
    "timestamptz": _timestamptz,
}


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit] + f"…(+{len(value) - limit} chars)"
