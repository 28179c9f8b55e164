"""Draft a contract from a sample CSV, for a person to edit; the draft loads its sample unchanged.

What the drafter guarantees (the property tests hold it to this):
- every value of the sample reads back from the table as it was written: text exactly (edges included),
  numbers and dates by value, times as written (a time without an offset stays that wall-clock time, a
  ``timestamp``, never a UTC instant it was not). A column is typed as a number only if every value is
  already in the canonical form the loader would print back (no leading zeros, no ``+``, no ``.5``): codes
  such as FIPS ``01001`` or ZIP ``08123`` stay text;
- only an empty cell is NULL; a word such as ``NA`` is proposed as a column's ``null_values`` only where it
  stands in for a missing number or date (never in a text column, where ``NA`` may be Namibia);
- every header maps to a column through the loader's own ``headers.column_name``, and the exact header is
  recorded as an alias wherever the two differ; a header that repeats a name (``Value`` in columns 2 and 5)
  gives each of its columns a name of its own and its ``position`` in the file;
- the drafted keys claim no object key that an existing contract claims;
- rows past the sample (``rows``) are held to the same promises: the draft is checked against every row
  given, as the loader reads them, and mended where one would be rejected or not load as written, each
  change said in a comment (``_fit_to_every_row``).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import PurePosixPath

from .contract import (
    COMPRESSION_SUFFIXES,
    MAX_COLUMNS,
    Column,
    Contract,
    globs_overlap,
    parse_contract,
    schema_name_problem,
    table_name_problem,
)
from .headers import MAX_IDENTIFIER_BYTES, column_name
from .processing import FORMULA_PREFIXES, Outcome, judge_file
from .reading import (
    LINE_END,
    TextFormat,
    after_lines,
    csv_options,
    inspect,
    open_text,
    read_records,
    sniff_delimiter,
)
from .rejection import FileRejected, listing
from .validation import CellError, build_coercer, repeats_header

#: Words that files use for a missing value; proposed as null_values for number and date columns only.
#: \N: a database dump's; ".": Stata's and SAS's missing number (Wooldridge's data sets).
NULL_WORDS = ("NA", "N/A", "n/a", "NaN", "nan", "null", "NULL", "None", "-", "--", "\\N", ".")
NUMBER_TYPES = ("integer", "bigint", "numeric")
KEY_TYPES = ("integer", "bigint", "text")  # the types a drafted key may have
#: Tried in order; the first whose rules accept every present value (and print it back) wins. A date
#: column keeps only the formats its values use; a slash order (month or day first) only when the sample
#: proves it: "01/02/2024" is a date either way, and a guess would load the wrong one.
BOOLEAN = Column(name="x", type="boolean")
MONTH_FIRST = Column(name="x", type="date", formats=("YYYY-MM-DD", "MM/DD/YYYY", "DD.MM.YYYY"))
DAY_FIRST = Column(name="x", type="date", formats=("YYYY-MM-DD", "DD/MM/YYYY", "DD.MM.YYYY"))
INSTANT = Column(name="x", type="timestamptz")
CANDIDATES = (
    Column(name="x", type="integer"),
    Column(name="x", type="bigint"),
    Column(name="x", type="numeric"),
    BOOLEAN,
    Column(name="x", type="date", formats=("YYYY-MM-DD",)),
    MONTH_FIRST,
    DAY_FIRST,
    Column(name="x", type="timestamp"),
    INSTANT,
)
_SLASH_ORDERS = {"MM/DD/YYYY": "DD/MM/YYYY", "DD/MM/YYYY": "MM/DD/YYYY"}
#: Tried last, in a file whose delimiter is not the comma, where some value proves the comma a decimal one:
#: digits after it other than three ("4,50"; "1,500" alone could group thousands, and stays text).
DECIMAL_COMMA = Column(name="x", type="numeric", decimal=",")
_PROVEN_DECIMAL_COMMA = re.compile(r"[+-]?\d+,(\d{1,2}|\d{4,})")


@dataclass
class DraftedColumn:
    name: str
    header: str
    position: int | None = None  # the file's column (1-based), for a header that repeats this one's name
    blank: str = ""  # what whitespace-only cells of a typed column become, said where the column keeps trim
    edges: str = ""  # how many cells of a typed column have whitespace around their value (trimmed)
    type: str = "text"
    formats: tuple[str, ...] = ()
    decimal: str = "."
    null_values: tuple[str, ...] = ()
    required: bool = False
    trim: bool = True
    unique: bool = False
    notes: list[str] = field(default_factory=list)


def _keeps_every_value(candidate: Column, values: list[str]) -> bool:
    coerce = build_coercer(candidate)
    try:
        for value in values:
            printed = coerce(value)
            # a number must print back as written; anything else ("007", "+5", ".5", "1e3") stays text
            written = value.replace(",", ".") if candidate.decimal == "," else value
            if candidate.type in NUMBER_TYPES and printed != written:
                return False
    except CellError:
        return False
    return True


def _infer(values: list[str], decimal_comma: bool = False) -> tuple[Column, tuple[str, ...]]:
    """(type, null words) for raw sample values; null words only for a number or date column.
    ``decimal_comma``: the file's delimiter leaves the comma free to be a decimal one."""
    present = [v.strip() for v in values if v.strip()]
    typed = _first_type(present, decimal_comma)
    if typed is not None:
        return typed, ()
    words = tuple(w for w in NULL_WORDS if w in set(present))
    typed = _first_type([v for v in present if v not in words], decimal_comma) if words else None
    if typed is not None and typed.type != "boolean":
        return typed, words
    return Column(name="x", type="text"), ()


def _first_type(values: list[str], decimal_comma: bool = False) -> Column | None:
    if not values:
        return None
    for candidate in CANDIDATES:
        if _keeps_every_value(candidate, values) and not _both_orders_read(candidate, values):
            if candidate.type == "boolean" and not _both_truths(values):
                continue  # "F", "F": a sex or a grade as likely as false
            if candidate.type == "timestamptz" and not _every_offset(values):
                continue  # some times without an offset: UTC or local time, the sample cannot say
            if candidate.type != "date":
                return candidate
            used = tuple(f for f in candidate.formats if any(_keeps_every_value(_dates(f), [v]) for v in values))
            return _dates(*used)
    proven = decimal_comma and any(_PROVEN_DECIMAL_COMMA.fullmatch(v) for v in values)
    return DECIMAL_COMMA if proven and _keeps_every_value(DECIMAL_COMMA, values) else None


def _both_truths(values: list[str]) -> bool:
    """Whether boolean values of the sample say both true and false (one alone proves no boolean)."""
    coerce = build_coercer(BOOLEAN)
    return {coerce(v) for v in values} == {"true", "false"}


def _every_offset(values: list[str]) -> bool:
    """Whether every time of the sample names its UTC offset (an instant, whatever the reader's zone)."""
    return all(datetime.fromisoformat(v).tzinfo is not None for v in values)


def _dates(*formats: str) -> Column:
    return Column(name="x", type="date", formats=formats)


def _both_orders_read(candidate: Column, values: list[str]) -> bool:
    """Whether ``candidate`` reads slashed dates in one order and the other order reads every value too."""
    if candidate.type != "date" or not any("/" in v for v in values):
        return False
    return _keeps_every_value(_dates(*(_SLASH_ORDERS.get(f, f) for f in candidate.formats)), values)


def unique_names(header: list[str]) -> list[str]:
    """``column_name`` of each header cell, made unique: a cell that is already its own column name keeps
    it; the others take the next free suffix (``_2``, ``_3``, ...)."""
    mapped = [column_name(h, i) for i, h in enumerate(header)]
    keeps = {m: i for i, (h, m) in reversed(list(enumerate(zip(header, mapped)))) if h == m}  # first one
    taken = set(keeps)
    names = []
    for i, m in enumerate(mapped):
        if keeps.get(m) == i:
            names.append(m)
            continue
        name, n = m, 2
        while name in taken:
            suffix = f"_{n}"
            name, n = m[: MAX_IDENTIFIER_BYTES - len(suffix)] + suffix, n + 1
        names.append(name)
        taken.add(name)
    return names


def draft_columns(header: list[str], rows: list[list[str]], decimal_comma: bool = False) -> list[DraftedColumn]:
    """One drafted column per header cell: names unique, the exact header kept where the name differs.
    ``decimal_comma``: the file's delimiter is not the comma, which may then be a decimal one."""
    columns = []
    for i, (h, name) in enumerate(zip(header, unique_names(header))):
        values = [r[i] for r in rows]
        inferred, words = _infer(values, decimal_comma)
        col = DraftedColumn(
            name=name,
            header=h,
            type=inferred.type,
            formats=inferred.formats,
            decimal=inferred.decimal,
            null_values=words,
        )
        if col.type == "text" and any(v != v.strip() for v in values):
            col.trim = False
            col.notes.append("values start or end with spaces: kept as they are")
        present = [v.strip() for v in values if v.strip() and v.strip() not in NULL_WORDS]
        if col.type == "text" and present and _both_orders_read(MONTH_FIRST, present):
            col.notes.append(
                'dates such as "01/02/2024" read both month first and day first: kept as text; to load them '
                'as dates, set type = "date" and formats = ["DD/MM/YYYY"] or ["MM/DD/YYYY"], as the file means'
            )
        if col.type == "text" and present and _keeps_every_value(INSTANT, present):
            col.notes.append(
                "times with a UTC offset and times without one: kept as text; to load them as instants, set "
                'type = "timestamptz" (a time without an offset is then taken as UTC)'
            )
        cells = values if not col.trim else [v.strip() for v in values]
        col.required = bool(cells) and all(c not in ("", *words) for c in cells)
        col.unique = col.required and len(set(cells)) == len(cells)
        columns.append(col)
    return columns


def draft_contract(
    sample: bytes,
    name: str,
    rows: int = 10_000,
    existing: Iterable[Contract] = (),
    suffix: str = ".csv",
    read_all: Callable[[], Iterable[bytes]] | None = None,
    schema: str | None = None,
) -> str:
    """A contract for files like ``sample``, named ``name``, claiming keys that end with ``suffix`` (the
    sample file's own, ``key_suffix``) and that no ``existing`` contract claims. Typed from the first ``rows``
    rows of ``sample`` (the file's beginning, its text), then checked against every row of the whole file
    (``read_all()``: its bytes from the first, as stored; the sample itself when not given). With ``schema``,
    the contract loads into that schema."""
    problem = table_name_problem(name)
    if problem:
        raise ValueError(f"--name (the contract's table): {problem}")
    problem = schema_name_problem(schema) if schema is not None else None
    if problem:
        raise ValueError(f"--schema: {problem}")
    source = inspect([sample])
    # the sample's text after a delimiter hint line: how its quotes read, and where its header is
    top = after_lines(source.sample.decode(source.codec, errors="ignore"), int(source.text_format.delimiter_hint))
    quoting, quotes_seen = quoting_of(top)
    before_header = lines_before_header(top, quoting)
    fmt, text = open_text([sample], before_header, quoting)
    records = read_records(text, fmt)
    _line, header = next(records)
    numbers = _all_numbers(header)  # the "header" is a row of values: the file has no header line
    if numbers and _repeated_positions(header):  # no header line at all: columns named by a row of values
        raise FileRejected(
            "duplicate_header",
            f"the first line names {_repeated_headers(header)}: it is a row of numbers, not a header. Should the "
            "file have no header line, add one naming its columns, then draft again.",
        )
    if len(header) > MAX_COLUMNS:
        raise FileRejected(
            "too_many_columns",
            f"the header names {len(header):,} columns; a PostgreSQL table holds at most 1600, two of them the "
            f'lineage columns: a contract may have {MAX_COLUMNS}, and unknown_columns = "ignore" loads a '
            "wider file's columns that it names",
        )
    table = _table_top(after_lines(top, before_header), quoting)  # the header and the records after it
    padding = table is not None and _pads(table)
    width = len(header)
    read = list(itertools.islice(records, rows))
    padded = sum(len(fields) < width for _line, fields in read) if padding else 0
    if padding:  # as the loader reads them under null_padding
        read = [(line, fields + [""] * (width - len(fields))) for line, fields in read]
    full = [(line, fields) for line, fields in read if len(fields) == width]
    # the header again (files concatenated with theirs) is no row: the loader rejects it as one
    repeats = [line for line, fields in full if repeats_header(header, fields)]
    sample_rows = [fields for _line, fields in full if not repeats_header(header, fields)]
    columns = draft_columns(header, sample_rows, decimal_comma=fmt.delimiter != ",")
    for position in _repeated_positions(header):
        columns[position].position = position + 1
    draft = _Draft(
        name=name,
        header=header,
        sample_rows=sample_rows,
        columns=columns,
        fmt=fmt,
        keys=draft_keys(name, list(existing), suffix),
        repeats=repeats,
        numbers=numbers,
        reading_fields=_reading_fields(top, table, quotes_seen, before_header, padded),
        sample_end=read[-1][0] if read else 0,
        schema=schema,
    )
    return draft.text(_fit_to_every_row(read_all or (lambda: [sample]), draft))


@dataclass
class _Draft:
    """What the drafter found, and the contract's text for it (with notes of what rows past the sample
    changed, ``_fit_to_every_row``)."""

    name: str
    header: list[str]
    sample_rows: list[list[str]]
    columns: list[DraftedColumn]
    fmt: TextFormat
    keys: tuple[list[str], list[str]]  # the keys claimed, and notes of those left out (draft_keys)
    repeats: list[int]  # lines that repeat the header
    numbers: bool  # the header is a row of numbers
    reading_fields: list[str]  # quoting, skip_lines, null_padding, or a note on the header's width
    sample_end: int  # the line of the sample's last record
    max_rejected_share: float = 0.0  # rows no column can hold (a footer's lines) are tolerated, and said
    schema: str | None = None  # the contract's schema (None: the default, left unsaid)

    def text(self, beyond: Iterable[str] = ()) -> str:
        lines = [
            f"# Drafted by `ingest contract new` from {len(self.sample_rows)} rows "
            f"({self.fmt.encoding}, delimiter {self.fmt.delimiter!r}).",
            "# Check every column: types, required, patterns, the key and the load mode.",
        ]
        lines += [f"# {d}" for d in self.keys[1]] + [f"# {b}" for b in beyond]
        if self.repeats:
            shown = listing(map(str, self.repeats))
            lines += [
                f"# Line(s) {shown} repeat the first line, a row of numbers: the loader rejects"
                if self.numbers
                else f"# Line(s) {shown} repeat the header (files concatenated with their headers?): the loader "
                "rejects",
                "# each as a row (repeated_header), into its errors report; max_rejected_share lets the rest load.",
            ]
        valued = _header_cells_read_as_values(self.columns) or (
            _printable(listing(self.header)) if self.numbers else ""
        )
        if valued:
            lines += [
                f"# The header's cells {valued} read as values of their columns:",
                "# should the file have no header line, its first row was taken for one (add a header line to the "
                "file).",
            ]
        lines += ['description = ""'] + ([f'schema = "{self.schema}"'] if self.schema else [])
        lines += [f'table = "{self.name}"', "keys = " + json.dumps(self.keys[0])]
        key_candidates = [c.name for c in self.columns if c.unique and c.type in KEY_TYPES]
        if key_candidates:
            lines.append(
                f'load = {{ mode = "upsert", key = ["{key_candidates[0]}"] }}  # key candidates: '
                + ", ".join(key_candidates)
            )
        else:
            lines.append('load = { mode = "append" }  # no column is unique and always present')
        lines += ['unknown_columns = "reject"', f"max_rejected_share = {self.max_rejected_share}"]
        lines += self.reading_fields
        lines.append("")
        for col in self.columns:
            lines.append("[[columns]]")
            lines.append(f"name = {json.dumps(col.name)}")
            lines.append(f"type = {json.dumps(col.type)}")
            if col.type == "date":
                lines.append("formats = " + json.dumps(list(col.formats)))
            if col.decimal != ".":
                lines.append(f"decimal = {json.dumps(col.decimal)}  # the file writes 4,50 for 4.50")
            if col.null_values:
                lines.append("null_values = [" + ", ".join(toml_string(v) for v in col.null_values) + "]")
            if not col.trim:
                lines.append("trim = false")
            elif col.blank:
                lines.append(f"trim = true  # {col.blank}")
            if col.edges:
                lines.append(f"# {col.edges}")
            if col.required:
                lines.append("required = true")
            if key_candidates and col.name == key_candidates[0]:
                lines.append("primary_key = true")
            if col.header != col.name and col.header.strip():
                lines.append(f"aliases = [{toml_string(col.header)}]  # the header as written")
            if col.position is not None:
                lines.append(f"position = {col.position}  # the header repeats {_printable(col.header.strip())!r}")
            lines += [f"# {note}" for note in col.notes]
            lines.append("")
        return "\n".join(lines)


#: Rounds of checking a draft against every row it was given and mending the columns that rows past the
#: sample fail (a round may show what the one before hid: a key repeated only among rows it rejected).
FIT_ROUNDS = 4
#: What rows past the sample may show that no column's draft can mend (each is reported, not mended).
UNMENDABLE_RULES = ("field_count", "repeated_header")
#: A cell with whitespace at an edge: what a trimmed column would change (Python's whitespace, as str.strip).
_EDGES = r"(?s)^(?:\S(?:.*\S)?)?$"
#: Numbers and times written as they load (a pre-filter: what it lets through is loaded as written; what it
#: flags is looked at one by one).
_AS_WRITTEN = {
    "integer": r"-?[1-9][0-9]*|0",
    "bigint": r"-?[1-9][0-9]*|0",
    "numeric": r"-?[1-9][0-9]*(?:[.,][0-9]+)?|-?0[.,][0-9]+|0",
    "timestamptz": r"\S.*(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)",
}


@dataclass
class _Cells:
    """Cells of one column that a trimmed or typed column would change: how many, where the first is."""

    count: int = 0
    first_line: int = 0
    values: list[str] = field(default_factory=list)  # the first few distinct ones

    def add(self, line: int, value: str) -> None:
        self.count += 1
        self.first_line = self.first_line or line
        if value not in self.values and len(self.values) < 5:
            self.values.append(value)

    def said(self, truncated: bool) -> str:
        many = f"at least {self.count:,}" if truncated else f"{self.count:,}"
        return f"{many} cell{'s' if self.count != 1 or truncated else ''} (the first at line {self.first_line})"


def _fit_to_every_row(read: Callable[[], Iterable[bytes]], draft: _Draft) -> list[str]:
    """Check the draft against every row of the file (``read()`` gives its bytes from the first, streamed, never
    held whole), as the loader will read them, and mend it where a row past the sample would be rejected or
    loaded otherwise than written: a cell with spaces at its edge in a trimmed text column keeps them (``trim
    = false``), a cell of whitespace alone in a typed column is said to load as NULL, a NULL word, a value of
    another type, an empty cell or a repeated key mend their column, rows no column can mend (another width,
    the header again) are tolerated by ``max_rejected_share`` and named. Notes of what changed and why."""
    notes: list[str] = []
    try:
        whitespace = _fit_as_written(read, draft, notes)
        unmendable: list[str] = []
        for _round in range(FIT_ROUNDS):
            problems, outcome = _report(read, _fitting(draft, notes))
            past = [p for p in problems if p[2] not in UNMENDABLE_RULES or p[0] > draft.sample_end]
            mended, cannot = _mend(past, draft.sample_rows, draft.columns, draft.fmt.delimiter != ",")
            notes += mended
            whitespace.apply(draft, notes)  # a column mended to text keeps its cells' whitespace too
            unmendable += [note for note in cannot if note not in unmendable]
            if not mended:  # nothing more to mend: what is left, if anything, cannot be
                return notes + unmendable + _tolerate(draft, outcome, problems)
    except FileRejected as rejection:
        return [*notes, f"The rows past the sample were not checked ({rejection.reason}): {_cut(rejection.message)}"]
    return [
        *notes,
        *unmendable,
        *_tolerate(draft, outcome, problems),
        "Rows past the sample may still fail this draft: load the file once and read its errors report.",
    ]


def _fitting(draft: _Draft, notes: list[str]) -> Contract:
    """The draft as the loader reads it, every key candidate checked for repeats at once (the printed draft
    keys one of them), tolerating any share of rejected rows (the check goes on to the end)."""
    contract = parse_contract(draft.name, tomllib.loads(draft.text(notes)))
    columns = tuple(replace(c, unique=c.unique or d.unique) for c, d in zip(contract.columns, draft.columns))
    return replace(contract, columns=columns, max_rejected_share=1.0)


def _report(read: Callable[[], Iterable[bytes]], contract: Contract) -> tuple[list[tuple[int, str, str, str]], Outcome]:
    """(line, column, rule, value) of every problem the loader finds in the file under ``contract`` (its
    errors report: the first ERRORS_CSV_MAX_LINES of them), and the outcome."""
    report: list[bytes] = []
    outcome, rejection = judge_file(read, contract, lambda _block: None, report.append, restart=report.clear)
    if rejection is not None:
        raise rejection
    lines = list(csv.reader(io.StringIO(b"".join(report).decode("utf-8"), newline="")))[1:]
    # the report's values are neutralized for spreadsheets ('=1); the value itself is what the row held
    problems = [
        (int(line), column, rule, value[1:] if value.startswith("'") and value[1:2] in FORMULA_PREFIXES else value)
        for line, column, rule, value, _message in lines
    ]
    return problems, outcome


@dataclass
class _Whitespace:
    """Cells of each column with whitespace at an edge, and of whitespace alone, as the file writes them."""

    edges: dict[str, _Cells]
    blank: dict[str, _Cells]
    truncated: bool  # counted from the first ERRORS_CSV_MAX_LINES problems only

    def apply(self, draft: _Draft, notes: list[str]) -> None:
        """What the draft does with them (again after each mending: a column may have become text): a text
        column keeps them (trim = false); a typed one says what trimming makes of them."""
        for col in draft.columns:
            edges, blank = self.edges.get(col.name), self.blank.get(col.name)
            if col.type == "text":
                col.blank = col.edges = ""
                if col.trim and (edges or blank):
                    col.trim = False
                    said = " and ".join(
                        f"{cells.said(self.truncated)} {what}"
                        for cells, what in ((edges, "with whitespace at an edge"), (blank, "of whitespace alone"))
                        if cells
                    )
                    notes.append(f"{col.name} has {said}: kept as written (trim = false).")
                continue
            if blank:
                shown = ", ".join(repr(v) for v in blank.values)
                col.blank = f"{blank.said(self.truncated)} of whitespace alone ({shown}): trimmed to empty, so NULL"
                col.required = col.unique = False
            if edges:
                col.edges = f"{edges.said(self.truncated)} with whitespace around the value: trimmed"


def _fit_as_written(read: Callable[[], Iterable[bytes]], draft: _Draft, notes: list[str]) -> _Whitespace:
    """Read every cell as written (untrimmed, nothing NULL but an empty cell) and mend what the draft would
    change of it: a text column whose cells have whitespace at an edge anywhere keeps it (``trim = false``);
    a typed column says how many of its cells are whitespace alone (trimmed, they load as NULL) or have it
    around their value; a number or time not written as it loads (``007``, a time without its offset) drafts
    its column again with it."""
    contract = _fitting(draft, notes)
    columns = []
    for column_, drafted in zip(contract.columns, draft.columns):
        allowed = []
        if drafted.type in _AS_WRITTEN:
            words = [re.escape(w) for w in drafted.null_values]
            allowed = [
                f"(?:{_AS_WRITTEN[drafted.type]}|{'|'.join(words)})" if words else f"(?:{_AS_WRITTEN[drafted.type]})"
            ]
        pattern = f"^(?:{allowed[0]})?$" if allowed else (_EDGES if drafted.trim else None)
        columns.append(
            replace(
                column_,
                type="text",
                trim=False,
                required=False,
                unique=False,
                primary_key=False,
                null_values=(),
                formats=(),
                decimal=".",
                pattern=pattern,
                min=None,
                max=None,
                max_length=None,
                allowed=None,
                normalize=(),
            )
        )
    twin = replace(contract, columns=tuple(columns), load_mode="append", upsert_key=(), null_values=())
    problems, outcome = _report(read, twin)
    truncated = outcome.errors_truncated
    index = {c.name: i for i, c in enumerate(draft.columns)}
    edges: dict[str, _Cells] = {}
    blank: dict[str, _Cells] = {}
    not_as_written: list[tuple[int, str, str, str]] = []
    for line, column, rule, value in problems:
        if rule != "pattern" or column not in index:
            continue
        drafted = draft.columns[index[column]]
        if value != value.strip():
            (blank if not value.strip() else edges).setdefault(column, _Cells()).add(line, value)
        stripped = value.strip()  # what a trimmed typed column reads
        if (
            stripped
            and drafted.type != "text"
            and stripped not in drafted.null_values
            and not _as_written(drafted, [stripped])
            and _loads(drafted.type, drafted.decimal, stripped)
        ):
            not_as_written.append((line, column, "as_written", stripped))
    whitespace = _Whitespace(edges, blank, truncated)
    if not_as_written:
        mended, _cannot = _mend(not_as_written, draft.sample_rows, draft.columns, draft.fmt.delimiter != ",")
        notes += mended
    whitespace.apply(draft, notes)
    return whitespace


def _as_written(col: DraftedColumn, values: list[str]) -> bool:
    """Whether a typed column loads each value as written: a number prints back as written (not ``007``,
    ``+5``, ``1.5e3``), a time names its UTC offset (else it is taken as UTC, whatever zone it was written in)."""
    if col.type == "timestamptz":
        try:
            return _every_offset(values)
        except ValueError:
            return False
    return _keeps_every_value(Column(name="x", type=col.type, decimal=col.decimal), values)


def _tolerate(draft: _Draft, outcome: Outcome, problems: list[tuple[int, str, str, str]]) -> list[str]:
    """Rows no column can mend (another width, such as a footer's lines; the header again) are rejected by the
    loader: the draft's max_rejected_share lets the rest of the file load, and says so."""
    kinds = {rule: n for rule, n in outcome.errors_by_rule.items() if rule in UNMENDABLE_RULES}
    rejected = sum(kinds.values())
    if not rejected or not outcome.rows_total:
        return []
    draft.max_rejected_share = min(1.0, math.ceil(rejected / outcome.rows_total * 10_000) / 10_000)  # rounded up
    said = ", ".join(f"{n:,} {rule}" for rule, n in sorted(kinds.items()))
    first = next(((line, value) for line, _column, rule, value in problems if rule in UNMENDABLE_RULES), None)
    where = f"; the first at line {first[0]}: {_printable(_cut(first[1], 60))}" if first else ""
    return [
        f"{rejected:,} of {outcome.rows_total:,} rows have no place in the table ({said}{where}): the loader "
        f"rejects them into the errors report, and max_rejected_share = {draft.max_rejected_share} lets the rest load."
    ]


def _mend(
    problems: list[tuple[int, str, str, str]],
    sample_rows: list[list[str]],
    columns: list[DraftedColumn],
    decimal_comma: bool,
) -> tuple[list[str], list[str]]:
    """Mend the columns the problems name: a repeated key is no key, an empty cell makes a column optional,
    a value of another type drafts the column again from the sample's values and the failing ones (a NULL
    word joins its null_values; a larger integer makes it bigint; anything else, text). Notes of what was
    mended, and of what cannot be."""
    mended: list[str] = []
    unmendable = [
        f"Past the sample, line {line} breaks the rule {rule} ({_cut(value)}): the loader rejects such rows."
        for line, _column, rule, value in _firsts(p for p in problems if p[2] in UNMENDABLE_RULES)
    ]
    index = {col.name: i for i, col in enumerate(columns)}
    by_column: dict[str, list[tuple[int, str, str]]] = {}
    for line, column, rule, value in problems:
        if column in index and rule not in UNMENDABLE_RULES:
            by_column.setdefault(column, []).append((line, rule, value))
    for column, found in by_column.items():
        col = columns[index[column]]
        rules = {rule for _line, rule, _value in found}
        first = min(line for line, _rule, _value in found)
        if "duplicate_key" in rules and col.unique:
            col.unique = False
            repeat = min(line for line, rule, _value in found if rule == "duplicate_key")
            if col.type in KEY_TYPES:  # the others are no key candidates anyway
                mended.append(
                    f"Past the sample, line {repeat} repeats a {column} of an earlier row: {column} is no key."
                )
        if "required" in rules and col.required:
            col.required = col.unique = False
            mended.append(f"Past the sample, line {first} leaves {column} empty: {column} is not required.")
        failing = [(line, value) for line, rule, value in found if rule not in ("duplicate_key", "required")]
        loads_otherwise = {value for _line, rule, value in found if rule == "as_written"}
        if failing:
            was = col.type
            values = [row[index[column]] for row in sample_rows] + [value for _line, value in failing]
            again = draft_columns([col.header], [[value] for value in values], decimal_comma)[0]
            col.type, col.formats, col.decimal = again.type, again.formats, again.decimal
            col.null_values, col.trim = again.null_values, again.trim
            col.required, col.unique = col.required and again.required, col.unique and again.unique
            col.notes += [note for note in again.notes if note not in col.notes]
            line, value = failing[0]
            became = f"drafted as {col.type}" if col.type != was else "read as NULL (null_values)"
            where = f"line {line} holds {_cut(value)!r} in {column}" if line else f"{column} holds {_cut(value)!r}"
            if value in loads_otherwise:  # a number not written as it prints back, a time without an offset
                mended.append(f"Past the sample, {where}, which as {was} would not load as written: {became}.")
            else:
                mended.append(f"Past the sample, {where}, no {was}: {became}.")
    return mended, unmendable


def _loads(type_: str, decimal: str, value: str) -> bool:
    """Whether a column of ``type_`` loads ``value`` at all (as written or not)."""
    try:
        build_coercer(Column(name="x", type=type_, decimal=decimal))(value)
    except CellError:
        return False
    return True


def _firsts(problems: Iterable[tuple[int, str, str, str]]) -> list[tuple[int, str, str, str]]:
    """The first problem of each rule."""
    first: dict[str, tuple[int, str, str, str]] = {}
    for problem in problems:
        first.setdefault(problem[2], problem)
    return list(first.values())


def _cut(text: str, most: int = 80) -> str:
    return text if len(text) <= most else text[:most] + "…"


#: How far down the drafter looks for a header below a title block, and how many records after a line
#: say whether it is the header.
PREAMBLE_LINES_LOOKED_AT = 50
RECORDS_LOOKED_AT = 200


def _reading_fields(
    top: str,
    table: tuple[list[str], list[list[str]]] | None,
    quotes_seen: str | None,
    before_header: int,
    padded: int,
) -> list[str]:
    """The draft's ``quoting``, ``skip_lines`` and ``null_padding`` where the sample needs them, each with what
    showed it; or, for a header not as wide as most rows (``table``: the header and the records after it),
    what to look at."""
    lines = []
    if quotes_seen:
        why = _printable(quotes_seen)
        lines.append(f'quoting = "none"  # quotes are characters in this file, not CSV quoting ({why})')
    if before_header:
        skipped = LINE_END.split(top, before_header)[:before_header]
        # the first with text (a spreadsheet's empty rows are delimiters only)
        which, first = next(((i, line) for i, line in enumerate(skipped) if line.strip(' \t,;|"')), (0, skipped[0]))
        shown = _printable(first) if len(_printable(first)) <= 60 else _printable(first)[:60] + "…"
        label = "the first" if which == 0 else "the first with text"
        lines.append(f"skip_lines = {before_header}  # the lines before the header, {label}: {shown}")
    if padded:
        lines.append(
            f"null_padding = true  # {padded} of the sample's rows have fewer fields than the header: "
            "the missing ones at their end are empty"
        )
    elif not before_header and table is not None and not _fits(table):
        header, rows = table
        widths = [len(row) for row in rows]
        most = max(set(widths), key=widths.count)
        lines.append(
            f"# The header has {len(header)} fields and most rows {most}: rows of another width are rejected "
            "(field_count)."
        )
        if most == len(header) + 1 and all(row[-1] == "" for row in rows if len(row) == most):
            lines.append("# Those rows end with a delimiter the header does not: remove it from the rows.")
        elif most == len(header) + 1:
            lines.append(
                "# The rows' first field has no name (row names, as R's write.table writes them?): add a name "
                "for it at the start of the header line."
            )
        else:
            lines.append(
                "# Should the file begin with lines that are no part of the table (a title, a note), set "
                "skip_lines to their number."
            )
    return lines


def _header_cells_read_as_values(columns: list[DraftedColumn]) -> str:
    """The header cells, shown, when every column typed other than text has a header cell that is a value of
    that type (``1,Ada,3`` above rows of the same kind: a file without a header line); else ""."""
    typed = [c for c in columns if c.type != "text"]
    read = [
        c.header
        for c in typed
        if _keeps_every_value(Column(name="x", type=c.type, formats=c.formats), [c.header.strip()])
        and (c.type not in NUMBER_TYPES or c.header.strip() == c.header)
    ]
    return _printable(listing(read)) if typed and len(read) == len(typed) else ""


def _printable(text: str) -> str:
    """``text`` for a TOML comment: a tab or another control character as its escape."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quoting_of(text: str) -> tuple[str, str | None]:
    """("csv", None) for a sample that reads as CSV; ("none", where) for one whose quotes cannot be CSV
    quoting (text after a closing quote: a TSV export's ``"Weird Al" Yankovic``), that reads as a table when
    they are characters like any other, and where no field then looks quoted (``"Ada "The" Lovelace"``, a
    hand-edited CSV, is a CSV field with a stray quote: refused, not read with its outer quotes). A sample
    cut short inside a quoted field is still CSV."""
    delimiter = sniff_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, **csv_options(delimiter))
    try:
        for _record in reader:
            pass
    except csv.Error as exc:
        if "expected after" in str(exc) and header_fits(text, "none"):
            literal = csv.reader(io.StringIO(text, newline=""), **csv_options(sniff_delimiter(text, "none"), "none"))
            if not any(len(f) > 1 and f[0] == f[-1] == '"' for record in literal for f in record):
                return "none", f"line {reader.line_num}: {exc}"
    return "csv", None


def lines_before_header(text: str, quoting: str = "csv") -> int:
    """How many lines come before the header: 0 when the first line is as wide as the records after it (nine
    in ten of them); else a later line that is, below a title block that ends with a blank line, is made of
    ``#`` comments (a World Bank download, an analytics export) or of a spreadsheet's title rows (at most
    their first cell filled: ``Number of Students by State,,,,``, ``,,,,``). A first line narrower than rows
    that merely end with a delimiter is no title: the drafter never takes a data row for the header. The
    loader reads the file the same way once the contract says ``skip_lines``."""
    if _heads_a_table(text, quoting):
        return 0
    lines = LINE_END.split(text, PREAMBLE_LINES_LOOKED_AT)
    best, widest = 0, 0  # of the tables below a title block, the widest (a title line with a comma in it
    for skipped in range(1, min(PREAMBLE_LINES_LOOKED_AT, len(lines))):  # reads as a narrower one above it)
        if not lines[skipped].strip():
            continue
        above = [line for line in lines[:skipped] if line.strip()]
        rest = after_lines(text, skipped)
        title_block = (
            not lines[skipped - 1].strip()
            or all(line.startswith("#") for line in above)
            or _title_rows(above, rest, quoting)
            or _title_lines(above, rest, quoting)
        )
        if title_block and _heads_a_table(rest, quoting):
            top = _table_top(rest, quoting)
            width = len(top[0]) if top else 0
            if width > widest:
                best, widest = skipped, width
    return best


def _title_rows(lines: list[str], below: str, quoting: str) -> bool:
    """Whether every line is a spreadsheet's title row (``_is_title``), read with the delimiter of the text
    ``below`` them."""
    try:
        rows = list(csv.reader(lines, **csv_options(sniff_delimiter(below, quoting), quoting)))
    except csv.Error:
        return False
    return bool(rows) and all(_is_title(row) for row in rows)


def _title_lines(lines: list[str], below: str, quoting: str) -> bool:
    """Whether every line is a line of text with no delimiter of the table ``below`` it (a statistics office's
    ``GENESIS-Tabelle: 44211-11i``, ``Stand: 12.08.2026``): one field each, read with the delimiter of the
    text below, whose first record names two columns or more and is no row of numbers (so a data row never
    passes for the header of the rows after it)."""
    top = _table_top(below, quoting)
    if top is None or len(top[0]) < 2 or _all_numbers(top[0]):
        return False
    try:
        rows = list(csv.reader(lines, **csv_options(sniff_delimiter(below, quoting), quoting)))
    except csv.Error:
        return False
    return bool(rows) and all(len(row) == 1 for row in rows)


def _is_title(fields: list[str]) -> bool:
    """A spreadsheet's title row, or an empty one: no cell filled but (perhaps) the first, with words, the row
    padded to the sheet's width by the export (``Number of Students by State,,,,``, ``,,,,``). No header:
    it names at most one of its columns (a header that names only its first, ``id,,``, is one)."""
    first = fields[0].strip() if fields else ""
    return len(fields) > 1 and not any(cell.strip() for cell in fields[1:]) and (not first or " " in first)


def _heads_a_table(text: str, quoting: str) -> bool:
    """Whether the first record of ``text`` is the header of the records after it, whole or ragged (a last
    line with nothing after it heads no table: the lines above it are no title block)."""
    top = _table_top(text, quoting)
    return top is not None and bool(top[1]) and not _is_title(top[0]) and (_fits(top) or _pads(top))


def header_fits(text: str, quoting: str = "csv") -> bool:
    """Whether the first record of ``text`` is as wide as nine in ten of the records after it."""
    top = _table_top(text, quoting)
    return top is not None and _fits(top)


def _fits(top: tuple[list[str], list[list[str]]]) -> bool:
    header, rows = top
    return sum(len(row) == len(header) for row in rows) >= 0.9 * len(rows)


def _pads(top: tuple[list[str], list[list[str]]]) -> bool:
    """Whether the first record is the header of rows that leave out fields at their end (a ragged export):
    not a header that fits, no row wider than it, some narrower, and some as wide as it or the header's cells
    past the widest row empty (``Series id,Year,Period,Value,`` over rows of four). The loader reads such
    rows whole once the contract says ``null_padding``."""
    header, rows = top
    if not rows or _fits(top):
        return False
    widest = max(len(row) for row in rows)
    return (
        widest <= len(header)
        and min(len(row) for row in rows) < len(header)
        and (widest == len(header) or not any(cell.strip() for cell in header[widest:]))
    )


def _table_top(text: str, quoting: str = "csv") -> tuple[list[str], list[list[str]]] | None:
    """(the first record, the records after it) among the non-blank records of a sample, its last (perhaps
    cut short) left out; None if there is no record or it is no CSV."""
    try:
        options = csv_options(sniff_delimiter(text, quoting), quoting)
        reader = csv.reader(io.StringIO(text, newline=""), strict=True, **options)
        read = list(itertools.islice(reader, RECORDS_LOOKED_AT + 1))
    except csv.Error:
        return None
    records = [r for r in read if len(r) > 1 or (r and r[0].strip())]  # blank lines are no records (the loader's rule)
    if not records:
        return None
    # a sample ends anywhere: its last record may be cut short, unless the text ends with its line (a small
    # file's whole text, where the last row counts as much as the others: ``a,b,c`` / ``1`` / ``4,5,6``)
    whole = len(read) <= RECORDS_LOOKED_AT and text.endswith(("\n", "\r"))
    return records[0], records[1:] if whole or len(records) <= 2 else records[1:-1]


def _repeated_headers(header: list[str]) -> str:
    """The header cells written twice, e.g. "'0.00' (columns 1 and 3)": at most five names, each with at most
    five columns, and how many there are beyond."""
    where: dict[str, list[int]] = {}
    for i, cell in enumerate(header):
        if cell.strip():
            where.setdefault(cell.strip(), []).append(i + 1)
    repeated = [(label, places) for label, places in where.items() if len(places) > 1]
    return listing(
        (f"{label!r} (columns {_columns(places)})" for label, places in repeated), separator="; ", noun="names"
    )


def _columns(places: list[int]) -> str:
    if len(places) > 5:
        return listing(map(str, places))
    return f"{', '.join(map(str, places[:-1]))} and {places[-1]}"


def _repeated_positions(header: list[str]) -> list[int]:
    """The positions (0-based) of the header cells whose label another cell repeats (as the loader reads a
    label): the loader could not tell those columns apart by name, so each is read by its position."""
    where: dict[str, list[int]] = {}
    for i, cell in enumerate(header):
        label = cell.lstrip("\ufeff").strip()
        if label:
            where.setdefault(label, []).append(i)
    return sorted(i for places in where.values() if len(places) > 1 for i in places)


def _all_numbers(cells: list[str]) -> bool:
    """Whether every non-empty cell reads as a number (``1``, ``-2.5e3``, ``NaN``): a row of values. Not
    Python's own spelling with underscores: ``2019_2020`` is a header (a fiscal year), not 20192020."""
    filled = [c for c in cells if c.strip()]
    try:
        return bool(filled) and all("_" not in c and float(c) is not None for c in filled)
    except ValueError:
        return False


def toml_string(value: str) -> str:
    """A TOML basic string: JSON's escapes, plus DEL, which TOML (unlike JSON) does not allow raw."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def key_suffix(filename: str) -> str:
    """The extension the keys of files like ``filename`` end with: ``.tsv`` for ``title.basics.tsv.gz`` (a
    compression suffix is transport: keys match without it), ``.csv`` where the name has no plain one."""
    stem = filename
    for compression in COMPRESSION_SUFFIXES:
        stem = stem.removesuffix(compression)
    suffix = PurePosixPath(stem).suffix  # as written: object keys, and the globs, are case-sensitive
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix) else ".csv"


def draft_keys(name: str, existing: list[Contract], suffix: str = ".csv") -> tuple[list[str], list[str]]:
    """The usual key globs for ``name`` (ending with ``suffix``) minus those that overlap a key an existing
    contract claims."""
    wanted = [f"incoming/{name}{suffix}", f"incoming/{name}_*{suffix}", f"incoming/{name}/*{suffix}"]
    keys, notes = [], []
    for pattern in wanted:
        clash = [(c.name, k) for c in existing for k in c.keys if globs_overlap(pattern, k)]
        if clash:
            owners = ", ".join(f"{n} ({k})" for n, k in clash)
            notes.append(f"not claimed: {pattern}, which overlaps keys of existing contracts: {owners}")
        else:
            keys.append(pattern)
    if not keys:  # every usual glob is taken: a folder of the contract's own
        own = f"incoming/{name}/*{suffix}"
        n = 2
        while any(globs_overlap(own, k) for c in existing for k in c.keys):
            own, n = f"incoming/{name}_{n}/*{suffix}", n + 1
        keys.append(own)
    return keys, notes
