"""The functional core: bytes of one object in, normalized CSV and error reports out, no I/O.

``process`` streams: it reads chunks, validates each record as it comes, and hands finished blocks of
output bytes to two sinks (valid rows as normalized CSV, rejected rows as an errors CSV). The caller
decides where those bytes go (COPY, S3); memory stays bounded by the block size, whatever the file size.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .columnar import ExactEngineNeeded, process_columnar, split_header, supported
from .contract import Contract
from .reading import Source, TextFormat, after_lines, csv_options, inspect, read_records, sniff_delimiter, text_stream
from .rejection import FileRejected
from .validation import HeaderPlan, RowError, RowValidator, plan_header

BLOCK_CHARS = 1024 * 1024
FIRST_ERRORS_KEPT = 20
#: The errors CSV holds at most this many problem lines; past them only the counts by rule go on (in the
#: summary), so a hostile file cannot make the report grow with it.
ERRORS_CSV_MAX_LINES = 10_000
#: A file that can no longer meet its contract's max_rejected_share is rejected early, once its errors
#: report is full or this much text was read (a small file is read to the end, so its report is complete).
HOPELESS_AFTER_BYTES = 64 * 1024 * 1024
#: The inflation limit is judged once this much was decompressed (tiny files gzip at any ratio).
INFLATION_FLOOR = 16 * 1024 * 1024
ERRORS_HEADER = ("line", "column", "rule", "value", "message")
#: Cells starting with these run as formulas in spreadsheets; the errors CSV is meant to be opened in one.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

Sink = Callable[[bytes], None]


@dataclass
class Outcome:
    """What processing found; filled in as it goes, so a rejection midway still reports the counts."""

    rows_total: int = 0
    rows_valid: int = 0
    rows_rejected: int = 0
    errors_by_rule: Counter[str] = field(default_factory=Counter)
    first_errors: list[RowError] = field(default_factory=list)
    text_format: TextFormat | None = None
    ignored_columns: tuple[str, ...] = ()
    engine: str | None = None
    size: int | None = None  # the object's size as stored, when known
    bytes_read: int = 0  # of the object as stored (compressed, if it is)
    text_bytes: int = 0  # after decompression
    error_lines: int = 0  # problem lines written to the errors CSV
    errors_truncated: bool = False  # the errors CSV stopped at ERRORS_CSV_MAX_LINES

    @property
    def rejected_share(self) -> float:
        return self.rows_rejected / self.rows_total if self.rows_total else 0.0


_SPECIAL = re.compile(r'[,"\r\n]')


def csv_field(value: str | None) -> str:
    """One CSV field: NULL is empty and unquoted (COPY's csv NULL); quotes only where needed, CR included."""
    if value is None:
        return ""
    return '"' + value.replace('"', '""') + '"' if _SPECIAL.search(value) else value


def csv_line(values: list[str | None] | tuple[str | None, ...]) -> str:
    return ",".join(csv_field(v) for v in values) + "\n"


class _Blocks:
    """Text lines gathered and handed on as UTF-8 blocks of about BLOCK_CHARS."""

    def __init__(self, sink: Sink):
        self._parts: list[str] = []
        self._size = 0
        self._sink = sink
        self.wrote = False

    def write(self, line: str) -> None:
        self._parts.append(line)
        self._size += len(line)
        if self._size >= BLOCK_CHARS:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            self._sink("".join(self._parts).encode("utf-8"))
            self.wrote = True
            self._parts.clear()
            self._size = 0


#: The engines a file is tried with, in this order: the columnar one; should it meet, midway, what only the
#: exact one reads exactly (ExactEngineNeeded), everything it did is undone and the exact one starts again from
#: the file's first byte. The function (service.py, which also undoes its outputs) and ``judge_file`` both do this.
ENGINES = ("auto", "exact")


def judge_file(
    read: Callable[[], Iterable[bytes]],
    contract: Contract,
    valid_sink: Sink,
    error_sink: Sink,
    size: int | None = None,
    restart: Callable[[], None] = lambda: None,
) -> tuple[Outcome, FileRejected | None]:
    """The function's verdict on a file it can read again (``read()`` gives its chunks from the first byte):
    ``process`` with each of ENGINES in turn, as the function runs it (``restart`` is called before the
    exact engine starts again: undo what the sinks kept). The outcome, and the rejection if any."""
    for engine in ENGINES:
        outcome = Outcome()
        try:
            process(read(), contract, valid_sink, error_sink, outcome, engine=engine, size=size)
            return outcome, None
        except ExactEngineNeeded:
            if engine == ENGINES[-1]:
                raise
            restart()
        except FileRejected as rejection:
            return outcome, rejection
    raise AssertionError("unreachable: the exact engine reads every file")


def process(
    chunks: Iterable[bytes],
    contract: Contract,
    valid_sink: Sink,
    error_sink: Sink,
    outcome: Outcome | None = None,
    engine: str = "auto",
    size: int | None = None,
) -> Outcome:
    """Validate one object against ``contract``; raise FileRejected for what rejects the whole file.

    Valid rows go to ``valid_sink`` as CSV with a header (NULL is an empty unquoted field, as COPY's csv
    format reads it); rejected rows go to ``error_sink`` as one CSV line per problem.

    ``engine``: "columnar" (pyarrow, batch by batch), "exact" (Python's csv module, row by row) or
    "auto" (columnar where it can vouch for the file). Both give identical results; the columnar engine
    raises ``ExactEngineNeeded`` when it finds, midway, something only the exact engine reads exactly,
    and the caller must then start again with ``engine="exact"``.

    ``size``: the object's size as stored, when known; it bounds what is left to read, so that a file
    that can no longer meet its contract is rejected early. The contract's ``max_bytes`` and
    ``max_inflation`` end the reading of oversized and decompression-bomb files.
    """
    outcome = outcome if outcome is not None else Outcome()
    # judged by the stored size when that alone says too much (gzip adds at most ~1% to what it stores)
    if size is not None and size > contract.max_bytes * 1.01:
        raise FileRejected("too_large", _too_large_message(contract, size, "the object is"))
    source = inspect(_counted(chunks, outcome), contract.skip_lines, contract.quoting)
    source.rest = _guarded(source.rest, len(source.sample), contract, outcome, source.compressed_consumed)
    outcome.text_bytes = len(source.sample)
    if outcome.text_bytes > contract.max_bytes:
        raise FileRejected("too_large", _too_large_message(contract, outcome.text_bytes, "the object has more than"))
    outcome.size = size
    outcome.text_format = source.text_format
    if engine != "exact" and supported(source) is None:
        try:
            header, header_bytes, header_lines = split_header(source)
            if len(header) == 1:  # its empty lines between rows are empty cells, which only the exact engine reads
                raise ExactEngineNeeded("a one-column file, whose empty lines between rows are empty cells")
        except ExactEngineNeeded:
            if engine == "columnar":
                raise
        else:
            return _process_columnar(
                source, header, header_bytes, header_lines, contract, valid_sink, error_sink, outcome
            )
    return _process_exact(source, contract, valid_sink, error_sink, outcome)


def _counted(chunks: Iterable[bytes], outcome: Outcome) -> Iterator[bytes]:
    for chunk in chunks:
        outcome.bytes_read += len(chunk)
        yield chunk


def _too_large_message(contract: Contract, size: int, what: str) -> str:
    return (
        f"{what} {size:,} bytes after decompression; contract {contract.name!r} accepts at most "
        f"{contract.max_bytes:,} (max_bytes)"
    )


def _guarded(
    rest: Iterator[bytes], sample: int, contract: Contract, outcome: Outcome, consumed: Callable[[], int] | None
) -> Iterator[bytes]:
    """The decompressed bytes after the sample, ended by a rejection once they exceed the contract's limits."""
    text = sample
    for chunk in rest:
        text += len(chunk)
        outcome.text_bytes = text
        if text > contract.max_bytes:
            raise FileRejected("too_large", _too_large_message(contract, text, "the object has more than"))
        if consumed is not None and text > INFLATION_FLOOR and text > contract.max_inflation * max(consumed(), 1):
            raise FileRejected(
                "decompression_bomb",
                f"{consumed():,} compressed bytes inflated to {text:,} ({text / max(consumed(), 1):.0f}x); "
                f"contract {contract.name!r} accepts at most {contract.max_inflation:g}x (max_inflation)",
            )
        yield chunk


class _Outputs:
    """The two output streams of one run, shared by both engines: headers, counting, the end checks."""

    def __init__(self, contract: Contract, valid_sink: Sink, error_sink: Sink, outcome: Outcome):
        self.contract = contract
        self.outcome = outcome
        self.valid_sink = valid_sink
        self.valid = _Blocks(valid_sink)
        self.valid.write(",".join(contract.column_names) + "\n")
        self.errors = _Blocks(error_sink)
        self.errors.write(csv_line(ERRORS_HEADER))
        self.can_give_up = contract.max_rejected_share < 1  # a contract that tolerates every row never can
        self.shortest_row = shortest_valid_row(contract)

    def valid_block(self, block: bytes) -> None:
        self.valid.flush()  # the header (or lines written before) goes first
        self.valid_sink(block)

    def row_errors(self, row_errors: list[RowError]) -> None:
        outcome = self.outcome
        for error in row_errors:
            _count_error(outcome, error)
            if outcome.error_lines < ERRORS_CSV_MAX_LINES:
                self.errors.write(_error_line(error))
                outcome.error_lines += 1
            else:
                outcome.errors_truncated = True
        if self.can_give_up and (outcome.errors_truncated or outcome.text_bytes >= HOPELESS_AFTER_BYTES):
            try:
                give_up_if_hopeless(outcome, self.contract, self.shortest_row)
            except FileRejected:
                self.errors.flush()  # the report of the rows read so far goes out with the rejection
                raise

    def finish(self) -> Outcome:
        if self.outcome.rows_total == 0:
            raise FileRejected("no_data_rows", "the object has a header but no data rows")
        self.valid.flush()
        if self.outcome.rows_rejected:
            self.errors.flush()
        judge(self.outcome, self.contract)
        return self.outcome


def _process_columnar(
    source: Source,
    header: list[str],
    header_bytes: int,
    header_lines: int,
    contract: Contract,
    valid_sink: Sink,
    error_sink: Sink,
    outcome: Outcome,
) -> Outcome:
    outcome.engine = "columnar"
    plan = _plan(contract, header, source)
    outcome.ignored_columns = plan.ignored
    out = _Outputs(contract, valid_sink, error_sink, outcome)
    process_columnar(
        source, header, header_bytes, header_lines, contract, plan, out.valid_block, out.row_errors, outcome
    )
    return out.finish()


def _process_exact(source: Source, contract: Contract, valid_sink: Sink, error_sink: Sink, outcome: Outcome) -> Outcome:
    outcome.engine = "exact"
    text_format, text = text_stream(source)
    records = read_records(text, text_format)
    try:
        _line, header = next(records)
    except StopIteration:
        after = f" after the {contract.skip_lines} lines the contract skips (skip_lines)" if contract.skip_lines else ""
        raise FileRejected("no_header", f"the object has no header line{after}") from None
    plan = _plan(contract, header, source)
    outcome.ignored_columns = plan.ignored
    validate = RowValidator(contract, plan)
    out = _Outputs(contract, valid_sink, error_sink, outcome)
    for line, fields in records:
        outcome.rows_total += 1
        values, row_errors = validate(line, fields)
        if values is not None:
            outcome.rows_valid += 1
            out.valid.write(csv_line(values))
        else:
            outcome.rows_rejected += 1
            out.row_errors(row_errors)
    return out.finish()


#: How far below the line taken for the header a rejection looks for the contract's header (a title block above it).
HEADER_LOOKED_FOR_LINES = 50


def _plan(contract: Contract, header: list[str], source: Source) -> HeaderPlan:
    """``plan_header``; where the line taken for the header names no column of the contract, or not those it
    requires, the rejection says which later line of the sample does (a title block above the table: a
    statistics office's export) and the ``skip_lines`` that reads it."""
    try:
        return plan_header(contract, header)
    except FileRejected as rejection:
        if rejection.reason not in ("no_header", "missing_columns", "unknown_columns"):
            raise
        below = _header_below(contract, source)
        if below is None:
            raise
        raise FileRejected(
            rejection.reason,
            f"{rejection.message}. Line {below} of the file names the contract's columns: should the lines above "
            f"it be a title or notes, set skip_lines = {below - 1 - int(source.text_format.delimiter_hint)}",
        ) from None


def _header_below(contract: Contract, source: Source) -> int | None:
    """The line of the sample (1-based, in the file) below the one taken for the header that heads the
    contract's table, read with the delimiter sniffed from it down; None if none does."""
    skipped = source.text_format.lines_before_header
    text = after_lines(source.sample.decode(source.codec, errors="replace"), skipped)
    for below in range(1, HEADER_LOOKED_FOR_LINES):
        rest = after_lines(text, below)
        if not rest.strip():
            return None
        try:
            record = next(csv.reader(io.StringIO(rest, newline=""), **csv_options(sniff_delimiter(rest))), None)
            if record and len(record) > 1:
                plan_header(contract, record)
                return skipped + below + 1
        except (csv.Error, FileRejected):
            continue
    return None


def _count_error(outcome: Outcome, error: RowError) -> None:
    outcome.errors_by_rule[error.rule] += 1
    if len(outcome.first_errors) < FIRST_ERRORS_KEPT:
        outcome.first_errors.append(error)


def _error_line(error: RowError) -> str:
    cells = (error.column, error.rule, error.value, error.message)
    return csv_line([str(error.line), *(neutralize_formula(c) for c in cells)])


def shortest_valid_row(contract: Contract) -> int:
    """Bytes a valid row takes at least: a character for each required column, a delimiter between them
    and a line break."""
    return max(2, 2 * sum(c.required for c in contract.columns))


def give_up_if_hopeless(outcome: Outcome, contract: Contract, shortest_row: int) -> None:
    """Reject now if the contract's max_rejected_share can no longer be met, even were every byte left
    (bounded by the object's size, and for compressed objects by max_bytes and max_inflation) a valid row
    of ``shortest_row`` bytes."""
    if outcome.size is None or outcome.text_format is None:
        return
    left = max(outcome.size - outcome.bytes_read, 0)
    if outcome.text_format.compression:
        left = min(contract.max_bytes - outcome.text_bytes, int(left * contract.max_inflation))
    most_rows = outcome.rows_total + max(left, 0) // shortest_row
    if outcome.rows_rejected > contract.max_rejected_share * most_rows:
        raise FileRejected(
            "too_many_rejected_rows",
            f"{outcome.rows_rejected:,} of the first {outcome.rows_total:,} rows were rejected; contract "
            f"{contract.name!r} tolerates at most {contract.max_rejected_share:.0%}, which the rest of the file "
            f"(at most {max(left, 0):,} more bytes) can no longer bring it to: stopped reading",
        )


def judge(outcome: Outcome, contract: Contract) -> None:
    """Reject the whole file when more rows failed than the contract tolerates."""
    if outcome.rows_rejected and outcome.rejected_share > contract.max_rejected_share:
        raise FileRejected(
            "too_many_rejected_rows",
            f"{outcome.rows_rejected} of {outcome.rows_total} rows ({outcome.rejected_share:.1%}) were rejected; "
            f"contract {contract.name!r} tolerates at most {contract.max_rejected_share:.0%}",
        )


def neutralize_formula(cell: str) -> str:
    """Keep a spreadsheet from running a cell as a formula (OWASP CSV injection): prefix a quote."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def summary_document(
    *,
    bucket: str,
    key: str,
    md5: str,
    contract: Contract | None,
    status: str,
    outcome: Outcome,
    reason: str | None = None,
    message: str | None = None,
    errors_key: str | None = None,
) -> bytes:
    """The errors/…json summary: deterministic (no clocks, sorted keys) so re-runs write identical bytes."""
    fmt = outcome.text_format
    doc = {
        "bucket": bucket,
        "key": key,
        "md5": md5,
        "contract": contract.name if contract else None,
        "table": contract.target if contract else None,
        "status": status,
        "reason": reason,
        "message": message,
        "rows_total": outcome.rows_total,
        "rows_valid": outcome.rows_valid,
        "rows_rejected": outcome.rows_rejected,
        "errors_by_rule": dict(sorted(outcome.errors_by_rule.items())),
        "first_errors": [error_dict(e) for e in outcome.first_errors],
        "errors_csv": errors_key,
        "errors_csv_lines": outcome.error_lines,
        "errors_csv_truncated": outcome.errors_truncated,
        "bytes_read": outcome.bytes_read,
        "encoding": fmt.encoding if fmt else None,
        "delimiter": fmt.delimiter if fmt else None,
        "compression": fmt.compression if fmt else None,
        "ignored_columns": list(outcome.ignored_columns),
    }
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def error_dict(error: RowError) -> dict[str, object]:
    return {
        "line": error.line,
        "column": error.column,
        "rule": error.rule,
        "value": error.value,
        "message": error.message,
    }
