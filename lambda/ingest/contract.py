"""Table contracts: which object keys feed which table, and what a valid row looks like.

A contract is data (a TOML file under ``lambda/contracts/``); this module parses and checks it and
matches object keys against the patterns contracts claim. A key that no contract claims, or that two
contracts claim, is refused: the pipeline never guesses.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from . import patterns
from .headers import RESERVED_PREFIX, SYSTEM_COLUMNS
from .reading import QUOTING_MODES

#: Column types a contract may name, with the PostgreSQL type each one is stored as.
COLUMN_TYPES = ("text", "integer", "bigint", "numeric", "double", "boolean", "date", "timestamp", "timestamptz")
LOAD_MODES = ("append", "replace", "upsert")
UNKNOWN_COLUMN_POLICIES = ("reject", "ignore")
NORMALIZERS = ("lower", "upper", "collapse_whitespace")
#: Only an empty cell is NULL unless a contract says otherwise (as in PostgreSQL's CSV COPY): words such as
#: ``NA`` are data in many files (Namibia's ISO code, North America's continent code).
DEFAULT_NULL_VALUES = ("",)
DEFAULT_DATE_FORMATS = ("YYYY-MM-DD",)
#: Largest decompressed size a contract accepts unless it says otherwise: about what the function gets
#: through well within its 15-minute ceiling (and its default 120 s timeout at ~10 MB/s) on one vCPU.
DEFAULT_MAX_BYTES = 1024**3
#: Largest ratio of decompressed to compressed bytes: CSV gzips 5-20x; a bomb of repeated rows, 500x+.
DEFAULT_MAX_INFLATION = 200
#: Most columns a contract may have: a PostgreSQL table holds 1600, two of them the lineage columns.
MAX_COLUMNS = 1600 - 2
#: Most lines a contract may skip before the header: a title block, not a document.
MAX_SKIP_LINES = 1000
#: Compression suffixes that are transport, not part of the name a contract claims.
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz")

# PostgreSQL folds unquoted identifiers to lower case and truncates at 63 bytes; we accept only names
# that need no quoting at all, so that what the contract says is exactly what lands in the database.
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
RESERVED_COLUMN_PREFIX = RESERVED_PREFIX  # lineage columns and staging tables
#: The ledger's table (``adapters.postgres``), which no contract may load.
LEDGER_TABLE = "ingest_files"
ATTEMPTS_TABLE = "ingest_attempts"  # the deliveries in flight, and those that never answered
#: The schema a contract's table lands in unless it names one (``schema = "raw"``).
DEFAULT_SCHEMA = "public"
#: The pipeline's own schema (ledger, attempts, staging tables), unless the deployment names another
#: (INGEST_SCHEMA, read by the PostgreSQL adapter); no contract may load into it.
PIPELINE_SCHEMA = "ingest_ledger"


def pipeline_schema(environ: Mapping[str, str]) -> str:
    """The pipeline's own schema (ledger, attempts, big upserts' staging tables) in an environment:
    INGEST_SCHEMA, else PIPELINE_SCHEMA. The function, the CLI and the dev stacks all ask here."""
    schema = environ.get("INGEST_SCHEMA") or PIPELINE_SCHEMA
    if not IDENTIFIER.match(schema) or schema == DEFAULT_SCHEMA or schema.startswith("pg_"):
        raise ValueError(f"INGEST_SCHEMA must be a lower-case SQL identifier of a schema of its own, got {schema!r}")
    return schema


class ContractError(ValueError):
    """A contract file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str = "text"
    required: bool = False
    primary_key: bool = False
    unique: bool = False
    min: Decimal | None = None
    max: Decimal | None = None
    pattern: str | None = None
    allowed: tuple[str, ...] | None = None
    normalize: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()  # dates only
    precision: int | None = None  # numeric only
    scale: int | None = None  # numeric only
    max_length: int | None = None  # text only
    description: str = ""
    null_values: tuple[str, ...] | None = None  # cells read as NULL in this column (None: the contract's)
    trim: bool = True  # strip whitespace at the cell's edges (text columns may keep it)
    decimal: str = "."  # numeric and double: the decimal separator the file writes ("," in European exports)
    position: int | None = None  # the file's column (1-based) this column reads, for a header that repeats a name


@dataclass(frozen=True)
class Contract:
    name: str
    table: str
    keys: tuple[str, ...]
    columns: tuple[Column, ...]
    load_mode: str = "append"
    schema: str = DEFAULT_SCHEMA
    upsert_key: tuple[str, ...] = ()
    unknown_columns: str = "reject"
    max_rejected_share: float = 0.0
    null_values: tuple[str, ...] = DEFAULT_NULL_VALUES
    description: str = ""
    source: str = ""
    max_bytes: int = DEFAULT_MAX_BYTES
    max_inflation: float = DEFAULT_MAX_INFLATION
    skip_lines: int = 0  # lines before the header that are no part of the table (a title, a source note)
    quoting: str = "csv"  # "none": quotes are characters like any other (reading.QUOTING_MODES)
    null_padding: bool = False  # a row with fewer fields than the header: the missing ones at its end are empty
    fingerprint: str = ""  # sha256 of the contract's content: a changed contract judges old files again
    _key_patterns: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def target(self) -> str:
        """The table as the ledger, receipts and outputs name it: ``users`` in the default schema, else
        ``raw.users`` (two contracts may load tables of one name in two schemas)."""
        return self.table if self.schema == DEFAULT_SCHEMA else f"{self.schema}.{self.table}"

    @property
    def primary_key(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.primary_key)

    def nulls(self, col: Column) -> tuple[str, ...]:
        """The cells that are NULL in ``col``: always the empty cell, then the column's or the contract's."""
        return tuple(dict.fromkeys(["", *(col.null_values if col.null_values is not None else self.null_values)]))

    def claims(self, key: str) -> bool:
        name = strip_compression_suffix(key)
        return any(p.fullmatch(name) for p in self._key_patterns)


def strip_compression_suffix(key: str) -> str:
    for suffix in COMPRESSION_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay inside one path segment; ``**`` crosses segments."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _glob_tokens(pattern: str) -> list[str]:
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        token = "**" if pattern.startswith("**", i) else pattern[i]
        tokens.append(token)
        i += len(token)
    return tokens


def common_key(a: str, b: str) -> str | None:
    """A key that matches both globs, or None if none does: a breadth-first walk over pairs of positions
    in the two patterns (each pattern is a small automaton: a literal or ``?`` steps over one character,
    ``*`` loops over any but ``/``, ``**`` over anything), with the characters that matter as the alphabet
    and ``x`` standing for any other."""
    ta, tb = _glob_tokens(a), _glob_tokens(b)
    alphabet = sorted({t for t in ta + tb if len(t) == 1 and t not in "*?"} | {"/", "x"})

    def closure(tokens: list[str], states: Iterable[int]) -> frozenset[int]:
        todo, seen = list(states), set(states)
        while todo:
            i = todo.pop()
            if i < len(tokens) and tokens[i] in ("*", "**") and i + 1 not in seen:
                seen.add(i + 1)
                todo.append(i + 1)
        return frozenset(seen)

    def step(tokens: list[str], states: frozenset[int], ch: str) -> frozenset[int]:
        nxt = set()
        for i in states:
            t = tokens[i] if i < len(tokens) else None
            if t == "**" or (t == "*" and ch != "/"):
                nxt.add(i)
            elif (t == "?" and ch != "/") or t == ch:
                nxt.add(i + 1)
        return closure(tokens, nxt)

    start = (closure(ta, {0}), closure(tb, {0}))
    paths = {start: ""}
    todo = [start]
    while todo:
        pair = todo.pop(0)
        if len(ta) in pair[0] and len(tb) in pair[1]:
            return paths[pair]
        for ch in alphabet:
            nxt = (step(ta, pair[0], ch), step(tb, pair[1], ch))
            if nxt[0] and nxt[1] and nxt not in paths:
                paths[nxt] = paths[pair] + ch
                todo.append(nxt)
    return None


def globs_overlap(a: str, b: str) -> bool:
    """Whether some object key matches both globs."""
    return common_key(a, b) is not None


def contracts_overlap(a: Contract, b: Contract) -> list[tuple[str, str, str]]:
    """(glob of a, glob of b, a key both claim) for each pair of key globs of two contracts that overlap."""
    found = ((x, y, common_key(x, y)) for x in a.keys for y in b.keys)
    return [(x, y, key) for x, y, key in found if key is not None]


# --- parsing ----------------------------------------------------------------------------------------

_COLUMN_FIELDS = {
    "name",
    "type",
    "required",
    "primary_key",
    "unique",
    "min",
    "max",
    "pattern",
    "allowed",
    "normalize",
    "aliases",
    "formats",
    "precision",
    "scale",
    "max_length",
    "description",
    "null_values",
    "trim",
    "decimal",
    "position",
}
_CONTRACT_FIELDS = {
    "table",
    "schema",
    "keys",
    "columns",
    "load",
    "unknown_columns",
    "max_rejected_share",
    "null_values",
    "description",
    "max_bytes",
    "max_inflation",
    "skip_lines",
    "quoting",
    "null_padding",
}


def parse_contract(name: str, data: Mapping[str, Any], source: str = "") -> Contract:
    where = source or name

    def fail(msg: str) -> ContractError:
        return ContractError(f"{where}: {msg}")

    unknown = set(data) - _CONTRACT_FIELDS
    if unknown:
        raise fail(f"unknown field(s) {sorted(unknown)}; expected some of {sorted(_CONTRACT_FIELDS)}")
    table = data.get("table")
    problem = table_name_problem(table)
    if problem is not None:
        raise fail(problem)
    assert isinstance(table, str)  # table_name_problem said so
    schema = data.get("schema", DEFAULT_SCHEMA)
    problem = schema_name_problem(schema)
    if problem is not None:
        raise fail(problem)
    keys = data.get("keys")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
        raise fail("keys must be a non-empty list of object-key globs")
    raw_columns = data.get("columns")
    if not isinstance(raw_columns, list) or not raw_columns:
        raise fail("columns must be a non-empty list of [[columns]] tables")
    columns = tuple(_parse_column(c, fail) for c in raw_columns)
    if len(columns) > MAX_COLUMNS:
        raise fail(
            f"{len(columns)} columns: a PostgreSQL table holds at most 1600, two of them the lineage columns "
            f"(_ingest_md5, _ingest_loaded_at), so a contract at most {MAX_COLUMNS}"
        )

    seen: set[str] = set()
    for col in columns:
        for label in (col.name, *col.aliases):
            # columns read by position may share an alias: the header they read repeats it
            if label in seen and not (col.position is not None and label != col.name):
                raise fail(f"column name or alias {label!r} is used twice")
            seen.add(label)

    load = data.get("load", {"mode": "append"})
    if not isinstance(load, dict):
        raise fail('load must be a table: load = { mode = "append" | "replace" | "upsert", key = [...] }')
    mode = load.get("mode", "append")
    if mode not in LOAD_MODES:
        raise fail(f"load.mode must be one of {LOAD_MODES}, got {mode!r}")
    names = [c.name for c in columns]
    positions = [c.position for c in columns if c.position is not None]
    if len(set(positions)) != len(positions):
        raise fail("two columns name the same position of the file's header")
    upsert_key: tuple[str, ...] = ()
    if mode == "upsert":
        upsert_key = tuple(load.get("key") or [c.name for c in columns if c.primary_key])
        if not upsert_key:
            raise fail("load.mode = 'upsert' needs load.key or a primary_key column")
        missing = [k for k in upsert_key if k not in names]
        if missing:
            raise fail(f"load.key names unknown column(s) {missing}")
        pk = [c.name for c in columns if c.primary_key]
        if pk and sorted(pk) != sorted(upsert_key):
            raise fail(f"load.key {list(upsert_key)} must be the primary key {pk}")
    elif "key" in load:
        raise fail("load.key is only meaningful with mode = 'upsert'")

    policy = data.get("unknown_columns", "reject")
    if policy not in UNKNOWN_COLUMN_POLICIES:
        raise fail(f"unknown_columns must be one of {UNKNOWN_COLUMN_POLICIES}, got {policy!r}")
    share = data.get("max_rejected_share", 0.0)
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
        raise fail(f"max_rejected_share must be a number from 0 to 1, got {share!r}")
    max_bytes = data.get("max_bytes", DEFAULT_MAX_BYTES)
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise fail(f"max_bytes must be a positive integer (bytes after decompression), got {max_bytes!r}")
    inflation = data.get("max_inflation", DEFAULT_MAX_INFLATION)
    if not isinstance(inflation, (int, float)) or isinstance(inflation, bool) or inflation < 1:
        raise fail(f"max_inflation must be a number >= 1, got {inflation!r}")
    skip_lines = data.get("skip_lines", 0)
    if not isinstance(skip_lines, int) or isinstance(skip_lines, bool) or not 0 <= skip_lines <= MAX_SKIP_LINES:
        raise fail(
            f"skip_lines must be a whole number from 0 to {MAX_SKIP_LINES} (the lines before the header), "
            f"got {skip_lines!r}"
        )
    quoting = data.get("quoting", "csv")
    if quoting not in QUOTING_MODES:
        raise fail(
            f'quoting must be one of {QUOTING_MODES} ("none": quotes are characters like any other), got {quoting!r}'
        )
    null_padding = data.get("null_padding", False)
    if not isinstance(null_padding, bool):
        raise fail(
            "null_padding must be true or false (true: a row with fewer fields than the header reads the "
            f"missing ones at its end as empty), got {null_padding!r}"
        )
    nulls = data.get("null_values", list(DEFAULT_NULL_VALUES))
    if not _strings(nulls):
        raise fail("null_values must be a list of strings")

    return Contract(
        name=name,
        table=table,
        schema=schema,
        keys=tuple(keys),
        columns=columns,
        load_mode=mode,
        upsert_key=upsert_key,
        unknown_columns=policy,
        max_rejected_share=float(share),
        # An empty cell is always NULL: CSV cannot tell an empty string from a missing value.
        null_values=tuple(dict.fromkeys(["", *nulls])),
        description=str(data.get("description", "")),
        source=source,
        max_bytes=max_bytes,
        max_inflation=float(inflation),
        skip_lines=skip_lines,
        quoting=quoting,
        null_padding=null_padding,
        fingerprint=hashlib.sha256(json.dumps(dict(data), sort_keys=True, default=str).encode()).hexdigest(),
        _key_patterns=tuple(glob_to_regex(k) for k in keys),
    )


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def table_name_problem(table: object) -> str | None:
    """What is wrong with ``table`` as a contract's table name, or None."""
    if isinstance(table, str) and "." in table:
        schema, _, name = table.partition(".")
        return (
            f"table {table!r} names a schema: a contract names it in a field of its own, "
            f'schema = "{schema}" and table = "{name}"'
        )
    if not isinstance(table, str) or not IDENTIFIER.match(table):
        return f"table must be a lower-case SQL identifier ([a-z_][a-z0-9_]*), got {table!r}"
    if table in (LEDGER_TABLE, ATTEMPTS_TABLE) or table.startswith(RESERVED_COLUMN_PREFIX):
        return (
            f"table {table!r} is the pipeline's own ({LEDGER_TABLE!r} is the ledger, {ATTEMPTS_TABLE!r} its "
            f"deliveries, {RESERVED_COLUMN_PREFIX!r}… its staging tables): name the contract's table otherwise"
        )
    return None


def schema_name_problem(schema: object) -> str | None:
    """What is wrong with ``schema`` as a contract's schema, or None."""
    if not isinstance(schema, str) or not IDENTIFIER.match(schema):
        return f"schema must be a lower-case SQL identifier ([a-z_][a-z0-9_]*), got {schema!r}"
    if schema == PIPELINE_SCHEMA or schema.startswith("pg_") or schema == "information_schema":
        what = "the pipeline's own (its ledger)" if schema == PIPELINE_SCHEMA else "PostgreSQL's own"
        return f"schema {schema!r} is {what}: name the contract's schema otherwise"
    return None


def _parse_column(raw: Any, fail: Any) -> Column:
    if not isinstance(raw, dict):
        raise fail("each [[columns]] entry must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not IDENTIFIER.match(name) or name.startswith(RESERVED_COLUMN_PREFIX):
        raise fail(
            f"column name must be a lower-case SQL identifier not starting with "
            f"{RESERVED_COLUMN_PREFIX!r}, got {name!r}"
        )
    if name in SYSTEM_COLUMNS:
        raise fail(
            f"column name {name!r} is a PostgreSQL system column name ({', '.join(sorted(SYSTEM_COLUMNS))}), "
            f"which no table column may take: name it otherwise (say '_{name}') with aliases = [{name!r}]"
        )
    unknown = set(raw) - _COLUMN_FIELDS
    if unknown:
        raise fail(f"column {name!r}: unknown field(s) {sorted(unknown)}")
    ctype = raw.get("type", "text")
    if ctype not in COLUMN_TYPES:
        raise fail(f"column {name!r}: type must be one of {COLUMN_TYPES}, got {ctype!r}")
    normalize = tuple(raw.get("normalize", ()))
    bad = [n for n in normalize if n not in NORMALIZERS]
    if bad:
        raise fail(f"column {name!r}: unknown normalizer(s) {bad}; known: {NORMALIZERS}")
    if normalize and ctype != "text":
        raise fail(f"column {name!r}: normalizers apply to text columns only")
    pattern = raw.get("pattern")
    if pattern is not None:
        try:
            patterns.check(pattern)  # RE2 runs it, in linear time: a hostile cell cannot stall the function
        except ValueError as exc:
            raise fail(f"column {name!r}: pattern {pattern!r} cannot be used: {exc}") from None
    bounds = {}
    for bound in ("min", "max"):
        if bound in raw:
            if ctype not in ("integer", "bigint", "numeric", "double"):
                raise fail(f"column {name!r}: {bound} applies to numeric types only")
            try:
                bounds[bound] = Decimal(str(raw[bound]))
            except InvalidOperation:
                raise fail(f"column {name!r}: {bound} must be a number, got {raw[bound]!r}") from None
    formats = tuple(raw.get("formats", DEFAULT_DATE_FORMATS if ctype == "date" else ()))
    if formats and ctype != "date":
        raise fail(f"column {name!r}: formats apply to date columns only")
    for fmt in formats:
        if sorted(re.findall(r"YYYY|MM|DD", fmt)) != ["DD", "MM", "YYYY"]:
            raise fail(f"column {name!r}: date format {fmt!r} must contain YYYY, MM and DD once each")
    precision, scale = raw.get("precision"), raw.get("scale")
    if (precision is not None or scale is not None) and ctype != "numeric":
        raise fail(f"column {name!r}: precision/scale apply to numeric columns only")
    if scale is not None and precision is None:
        raise fail(f"column {name!r}: scale needs precision")
    if precision is not None and not (isinstance(precision, int) and 1 <= precision <= 1000):
        raise fail(f"column {name!r}: precision must be an integer from 1 to 1000")
    if scale is not None and not (isinstance(scale, int) and 0 <= scale <= (precision or 0)):
        raise fail(f"column {name!r}: scale must be an integer from 0 to precision")
    allowed = raw.get("allowed")
    aliases = tuple(raw.get("aliases", ()))
    if not all(isinstance(a, str) and a for a in aliases):
        raise fail(f"column {name!r}: aliases must be non-empty strings (header cells as written)")
    nulls = raw.get("null_values")
    if nulls is not None and not _strings(nulls):
        raise fail(f"column {name!r}: null_values must be a list of strings")
    trim = raw.get("trim", True)
    if not isinstance(trim, bool):
        raise fail(f"column {name!r}: trim must be true or false")
    if not trim and ctype != "text":
        raise fail(f"column {name!r}: trim = false applies to text columns only")
    decimal = raw.get("decimal", ".")
    if decimal not in (".", ","):
        raise fail(f'column {name!r}: decimal must be "." or "," (the decimal separator), got {decimal!r}')
    if decimal == "," and ctype not in ("numeric", "double"):
        raise fail(f'column {name!r}: decimal = "," applies to numeric and double columns only')
    position = raw.get("position")
    if position is not None and (not isinstance(position, int) or isinstance(position, bool) or position < 1):
        raise fail(f"column {name!r}: position must be a column number of the file, 1 or more, got {position!r}")
    primary_key = bool(raw.get("primary_key", False))
    return Column(
        name=name,
        type=ctype,
        required=bool(raw.get("required", False)) or primary_key,
        primary_key=primary_key,
        unique=bool(raw.get("unique", False)),
        min=bounds.get("min"),
        max=bounds.get("max"),
        pattern=pattern,
        allowed=tuple(str(a) for a in allowed) if allowed is not None else None,
        normalize=normalize,
        aliases=aliases,
        formats=formats,
        precision=precision,
        scale=scale,
        max_length=raw.get("max_length"),
        description=str(raw.get("description", "")),
        null_values=tuple(nulls) if nulls is not None else None,
        trim=trim,
        decimal=decimal,
        position=position,
    )


# --- the set of contracts ---------------------------------------------------------------------------


class ContractRegistry:
    """All contracts of a deployment; answers which one (if any) claims an object key."""

    def __init__(self, contracts: Iterable[Contract]):
        self.contracts: dict[str, Contract] = {}
        tables: dict[str, str] = {}
        for c in contracts:
            if c.name in self.contracts:
                raise ContractError(f"two contracts are named {c.name!r}")
            if c.target in tables:
                raise ContractError(f"contracts {tables[c.target]!r} and {c.name!r} both load table {c.target!r}")
            self.contracts[c.name] = c
            tables[c.target] = c.name

    @classmethod
    def from_directory(cls, directory: str | Path) -> ContractRegistry:
        path = Path(directory)
        files = sorted(path.glob("*.toml"))
        if not files:
            raise ContractError(f"no contracts (*.toml) in {path}")
        return cls(load_contract_file(f) for f in files)

    def match(self, key: str) -> list[Contract]:
        return [c for c in self.contracts.values() if c.claims(key)]

    def __getitem__(self, name: str) -> Contract:
        return self.contracts[name]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.contracts.values())


def load_contract_file(path: str | Path) -> Contract:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ContractError(f"{path}: not valid TOML: {exc}") from None
    return parse_contract(path.stem, data, source=str(path))


def default_contracts_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "contracts"
