"""From a file's header cells to a contract's columns: one function for the drafter and the loader.

``column_name`` turns any header a spreadsheet can produce into a PostgreSQL identifier that needs no
quoting (``Small Island Developing States (SIDS)`` → ``small_island_developing_states_sids``,
``52 Week Low`` → ``_52_week_low``, ``Größe %`` → ``grosse_pct``, ``xmin`` → ``_xmin``). ``ColumnLabels``
resolves a header cell to a contract column: a column name or alias written exactly as the header cell
wins, then the ``column_name`` of the cell against the ``column_name`` of every name and alias. So a
contract drafted from a file (which records the exact header as an alias wherever the two differ) always
reads that file.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

MAX_IDENTIFIER_BYTES = 63  # PostgreSQL truncates longer names
RESERVED_PREFIX = "_ingest"
#: PostgreSQL's system columns: no table column may take these names (CREATE TABLE fails), yet a geodata
#: file's bounding box is often "xmin, ymin, xmax, ymax". Such a header maps to the name with a leading "_".
SYSTEM_COLUMNS = frozenset({"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"})
#: Letters that Unicode decomposition does not reduce to ASCII but that have a usual transliteration.
_TRANSLITERATE = str.maketrans(
    {"ø": "o", "æ": "ae", "œ": "oe", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i", "ŋ": "ng", "ħ": "h"}
)
_SYMBOLS = {"%": " pct ", "#": " num "}
_NOT_IDENTIFIER = re.compile(r"[^a-z0-9_]+")


def column_name(header: str, position: int) -> str:
    """The identifier a header cell maps to; ``position`` (0-based) names a header with no usable letters."""
    text = unicodedata.normalize("NFKC", header.lstrip("\ufeff")).strip().casefold()
    for symbol, word in _SYMBOLS.items():
        text = text.replace(symbol, word)
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))
    text = text.translate(_TRANSLITERATE)
    parts = _NOT_IDENTIFIER.split(text)
    while parts and not parts[0]:
        parts.pop(0)
    while parts and not parts[-1]:
        parts.pop()
    name = "_".join(parts)
    if not name:
        name = f"column_{position + 1}"
    if name[0].isdigit():
        name = "_" + name
    if name.startswith(RESERVED_PREFIX):
        name = "x" + name
    if name in SYSTEM_COLUMNS:
        name = "_" + name
    return name[:MAX_IDENTIFIER_BYTES]


class ColumnLabels:
    """Which contract column a header cell names: exact label first, then the mapped identifier."""

    def __init__(self, columns: Iterable[tuple[str, Iterable[str]]]):
        self.exact: dict[str, str] = {}
        self.mapped: dict[str, str] = {}
        for name, aliases in columns:
            for label in (name, *aliases):
                self.exact.setdefault(label, name)
                self.mapped.setdefault(column_name(label, 0), name)

    def resolve(self, header: str, position: int) -> str | None:
        text = header.lstrip("\ufeff")
        found = self.exact.get(text) or self.exact.get(text.strip())
        return found or self.mapped.get(column_name(text, position))
