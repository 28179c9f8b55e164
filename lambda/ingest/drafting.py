"""Draft a contract from a sample CSV: the types whose exact rules accept every value, for a person to edit."""

from __future__ import annotations

import itertools
import json

from .contract import DEFAULT_NULL_VALUES, IDENTIFIER, Column, normalize_header_name
from .reading import open_text, read_records
from .validation import CellError, build_coercer

#: Tried in order; the first type whose rules accept every non-null sample value wins.
CANDIDATES = (
    Column(name="x", type="integer"),
    Column(name="x", type="bigint"),
    Column(name="x", type="numeric"),
    Column(name="x", type="boolean"),
    Column(name="x", type="date", formats=("YYYY-MM-DD",)),
    Column(name="x", type="date", formats=("YYYY-MM-DD", "MM/DD/YYYY", "DD.MM.YYYY")),
    Column(name="x", type="timestamptz"),
)


def infer_column(values: list[str]) -> Column:
    present = [v.strip() for v in values if v.strip() not in DEFAULT_NULL_VALUES]
    for candidate in CANDIDATES:
        coerce = build_coercer(candidate)
        try:
            for value in present:
                coerce(value)
        except CellError:
            continue
        if present:
            return candidate
    return Column(name="x", type="text")


def draft_contract(sample: bytes, name: str, rows: int = 10_000) -> str:
    if not IDENTIFIER.match(name):
        raise ValueError(f"--name must be a lower-case SQL identifier, got {name!r}")
    fmt, text = open_text([sample])
    records = read_records(text, fmt.delimiter)
    _line, header = next(records)
    sample_rows = [fields for _line, fields in itertools.islice(records, rows) if len(fields) == len(header)]
    lines = [
        f"# Drafted by `ingest contract new` from {len(sample_rows)} rows "
        f"({fmt.encoding}, delimiter {fmt.delimiter!r}).",
        "# Check every column: types, required, patterns, the key and the load mode.",
        'description = ""',
        f'table = "{name}"',
        f'keys = ["incoming/{name}.csv", "incoming/{name}_*.csv", "incoming/{name}/*.csv"]',
    ]
    columns = []
    key_candidates = []
    for index, raw_name in enumerate(header):
        column_name = normalize_header_name(raw_name)
        if not IDENTIFIER.match(column_name):
            column_name = "col_" + str(index + 1)
        values = [r[index] for r in sample_rows]
        inferred = infer_column(values)
        required = bool(values) and all(v.strip() not in DEFAULT_NULL_VALUES for v in values)
        unique = required and len({v.strip() for v in values}) == len(values)
        if unique and inferred.type in ("integer", "bigint", "text"):
            key_candidates.append(column_name)
        columns.append((column_name, raw_name, inferred, required))
    if key_candidates:
        lines.append(
            f'load = {{ mode = "upsert", key = ["{key_candidates[0]}"] }}  # key candidates: '
            + ", ".join(key_candidates)
        )
    else:
        lines.append('load = { mode = "append" }  # no column is unique and always present')
    lines += ['unknown_columns = "reject"', "max_rejected_share = 0.0", ""]
    for column_name, raw_name, inferred, required in columns:
        lines.append("[[columns]]")
        lines.append(f'name = "{column_name}"')
        lines.append(f'type = "{inferred.type}"')
        if inferred.type == "date":
            lines.append("formats = " + json.dumps(list(inferred.formats)))
        if required:
            lines.append("required = true")
        if key_candidates and column_name == key_candidates[0]:
            lines.append("primary_key = true")
        if normalize_header_name(raw_name) != column_name:
            lines.append(f"# header in the sample: {raw_name!r}")
        lines.append("")
    return "\n".join(lines)
