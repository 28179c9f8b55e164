"""The functional core: bytes of one object in, normalized CSV and error reports out, no I/O.

``process`` streams: it reads chunks, validates each record as it comes, and hands finished blocks of
output bytes to two sinks (valid rows as normalized CSV, rejected rows as an errors CSV). The caller
decides where those bytes go (COPY, S3); memory stays bounded by the block size, whatever the file size.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .contract import Contract
from .reading import TextFormat, open_text, read_records
from .rejection import FileRejected
from .validation import RowError, RowValidator, plan_header

BLOCK_CHARS = 1024 * 1024
FIRST_ERRORS_KEPT = 20
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

    @property
    def rejected_share(self) -> float:
        return self.rows_rejected / self.rows_total if self.rows_total else 0.0


class _CsvBlocks:
    """csv.writer into a text buffer, handed on as UTF-8 blocks of about BLOCK_CHARS."""

    def __init__(self, sink: Sink):
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")
        self._sink = sink
        self.writerow = self._writer.writerow

    def flush_if_full(self) -> None:
        if self._buffer.tell() >= BLOCK_CHARS:
            self.flush()

    def flush(self) -> None:
        data = self._buffer.getvalue()
        if data:
            self._sink(data.encode("utf-8"))
            self._buffer.seek(0)
            self._buffer.truncate()


def process(
    chunks: Iterable[bytes], contract: Contract, valid_sink: Sink, error_sink: Sink, outcome: Outcome | None = None
) -> Outcome:
    """Validate one object against ``contract``; raise FileRejected for what rejects the whole file.

    Valid rows go to ``valid_sink`` as CSV with a header (NULL is an empty unquoted field, as COPY's csv
    format reads it); rejected rows go to ``error_sink`` as one CSV line per problem.
    """
    outcome = outcome if outcome is not None else Outcome()
    text_format, text = open_text(chunks)
    outcome.text_format = text_format
    records = read_records(text, text_format.delimiter)
    try:
        _line, header = next(records)
    except StopIteration:
        raise FileRejected("no_header", "the object has no header line") from None
    plan = plan_header(contract, header)
    outcome.ignored_columns = plan.ignored
    validate = RowValidator(contract, plan)

    valid = _CsvBlocks(valid_sink)
    valid.writerow(contract.column_names)
    errors = _CsvBlocks(error_sink)
    errors.writerow(ERRORS_HEADER)
    wrote_errors = False
    for line, fields in records:
        outcome.rows_total += 1
        values, row_errors = validate(line, fields)
        if values is not None:
            outcome.rows_valid += 1
            valid.writerow(values)
            valid.flush_if_full()
            continue
        outcome.rows_rejected += 1
        wrote_errors = True
        for error in row_errors:
            outcome.errors_by_rule[error.rule] += 1
            if len(outcome.first_errors) < FIRST_ERRORS_KEPT:
                outcome.first_errors.append(error)
            errors.writerow(
                [error.line, *(neutralize_formula(c) for c in (error.column, error.rule, error.value, error.message))]
            )
        errors.flush_if_full()

    if outcome.rows_total == 0:
        raise FileRejected("no_data_rows", "the object has a header but no data rows")
    valid.flush()
    if wrote_errors:
        errors.flush()
    judge(outcome, contract)
    return outcome


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
        "table": contract.table if contract else None,
        "status": status,
        "reason": reason,
        "message": message,
        "rows_total": outcome.rows_total,
        "rows_valid": outcome.rows_valid,
        "rows_rejected": outcome.rows_rejected,
        "errors_by_rule": dict(sorted(outcome.errors_by_rule.items())),
        "first_errors": [error_dict(e) for e in outcome.first_errors],
        "errors_csv": errors_key,
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
