"""Contract patterns: written and meant as Python's ``re.search``, run by RE2, in time linear in the cell.

A pattern such as ``^(\\w+\\s?)*$`` ("words separated by single spaces") makes a backtracking engine (Python's
``re``) take time exponential in the length of a cell that almost matches: 35 letters and a ``!`` hold the
interpreter for hours. One such cell in an upload would stop a table's pipeline. RE2 never backtracks.

So a pattern is parsed by Python's own parser (its meaning is exactly what ``re`` would make of it) and
written out again in RE2's syntax, keeping that meaning: ``\\d``, ``\\w``, ``\\s`` (and ``\\D``, ``\\W``,
``\\S``) stay Unicode-aware as in Python (RE2's own are ASCII: they become ``\\p{Nd}``, ``[\\p{L}\\p{N}_]``
and Python's whitespace, character for character the same sets as Python's Unicode database has them);
``$`` still matches before a final newline; ``\\Z`` is RE2's ``\\z``. Both engines then run the same RE2
program (the columnar one through pyarrow's RE2 kernels, the exact one through google-re2). Differences
left: ``\\b`` and ``\\B`` judge word characters as ASCII, and RE2's Unicode tables may be of another version
than the Python's.

What RE2 cannot run is refused when the contract is parsed, naming the construct and what to write
instead: backreferences, lookahead and lookbehind, conditionals, atomic groups and possessive repeats, a
counted repeat over 1,000, and ``\\W`` or ``\\S`` inside a negated set.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from re import _constants as sre  # type: ignore[attr-defined]  # Python's own parser (3.11-3.13 alike)
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

import re2

#: RE2 refuses counted repeats above this (``{n,m}``).
MAX_COUNTED_REPEAT = 1000

_WORD = r"\p{L}\p{N}_"
_SPACE = r"\t\n\x0b\x0c\r\x{1c}-\x{1f}\x{85}\p{Z}"
_ASCII_WORD = r"0-9A-Za-z_"
_ASCII_SPACE = r"\t\n\x0b\x0c\r "


class UnsupportedPattern(ValueError):
    """A pattern RE2 cannot run (in linear time, or at all): what in it, and what to write instead."""

    def __init__(self, construct: str, advice: str):
        super().__init__(f"it uses {construct}, which RE2 (matching in linear time) cannot run; {advice}")
        self.construct, self.advice = construct, advice


def check(pattern: str) -> None:
    """Raise UnsupportedPattern (or ValueError, for a pattern that does not compile at all) if RE2 cannot
    run ``pattern``; what contract parsing calls."""
    _compiled(pattern)


def searcher(pattern: str) -> Callable[[str], bool]:
    """``value -> bool``: whether ``pattern`` matches somewhere in ``value`` (``re.search``), in linear time."""
    regex = _compiled(pattern)
    return lambda value: regex.search(value.encode("utf-8")) is not None


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> Any:
    try:
        return re2.compile(translate(pattern).encode("utf-8"))
    except re2.error as exc:
        raise ValueError(f"RE2 cannot compile it: {exc}") from None


@lru_cache(maxsize=256)
def translate(pattern: str) -> str:
    """``pattern`` in RE2's syntax, with the meaning Python's ``re`` gives it; raises UnsupportedPattern."""
    try:
        parsed = sre_parse.parse(pattern)
    except Exception as exc:  # re.error, and whatever else the parser raises on nonsense
        raise ValueError(f"it does not compile: {exc}") from None
    flags = parsed.state.flags
    if flags & sre.SRE_FLAG_LOCALE:
        raise UnsupportedPattern("the LOCALE flag (?L)", "it applies to bytes patterns only; remove it")
    prefix = "".join(
        letter
        for flag, letter in ((sre.SRE_FLAG_IGNORECASE, "i"), (sre.SRE_FLAG_MULTILINE, "m"), (sre.SRE_FLAG_DOTALL, "s"))
        if flags & flag
    )
    body = _Writer().sequence(parsed, flags)
    return f"(?{prefix}){body}" if prefix else body


def _char(code: int) -> str:
    """One character for RE2, inside or outside a set: letters and digits as they are, the rest as \\x{…}."""
    c = chr(code)
    return c if c.isascii() and c.isalnum() else f"\\x{{{code:x}}}"


class _Writer:
    """Writes the parse tree of Python's ``re`` out as an RE2 pattern of the same meaning."""

    def sequence(self, items: Any, flags: int) -> str:
        return "".join(self.item(op, av, flags) for op, av in items)

    def item(self, op: Any, av: Any, flags: int) -> str:
        if op is sre.LITERAL:
            return _char(av)
        if op is sre.NOT_LITERAL:
            return f"[^{_char(av)}]"
        if op is sre.ANY:
            return "."
        if op is sre.IN:
            return self.charset(av, flags)
        if op is sre.AT:
            return self.at(av, flags)
        if op is sre.BRANCH:
            return "(?:" + "|".join(self.sequence(branch, flags) for branch in av[1]) + ")"
        if op is sre.SUBPATTERN:
            _group, add, remove, inner = av
            flags = (flags | add) & ~remove
            modifiers = _modifiers(add, remove)
            return f"(?{modifiers}:{self.sequence(inner, flags)})"
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            low, high, inner = av
            if low > MAX_COUNTED_REPEAT or (high != sre.MAXREPEAT and high > MAX_COUNTED_REPEAT):
                raise UnsupportedPattern(
                    f"a counted repeat over {MAX_COUNTED_REPEAT:,} ({{{low},{'' if high == sre.MAXREPEAT else high}}})",
                    "check the length with max_length, and repeat the character class with + or *",
                )
            quantifier = _quantifier(low, high) + ("?" if op is sre.MIN_REPEAT else "")
            return f"(?:{self.sequence(inner, flags)}){quantifier}"
        raise _refused(op, av)

    def at(self, where: Any, flags: int) -> str:
        if where is sre.AT_BEGINNING:
            return "^"
        if where is sre.AT_BEGINNING_STRING:
            return r"\A"
        if where is sre.AT_END:  # Python's $ also matches before a final newline (every line's end with (?m))
            return "$" if flags & sre.SRE_FLAG_MULTILINE else r"(?:\n?\z)"
        if where is sre.AT_END_STRING:
            return r"\z"
        if where is sre.AT_BOUNDARY:
            return r"\b"
        if where is sre.AT_NON_BOUNDARY:
            return r"\B"
        raise UnsupportedPattern(f"the position {where}", "anchor with ^, $, \\A or \\Z")

    def charset(self, items: list[Any], flags: int) -> str:
        negated = bool(items) and items[0][0] is sre.NEGATE
        members: list[str] = []
        complements: list[str] = []
        for op, av in items[1:] if negated else items:
            if op is sre.LITERAL:
                members.append(_char(av))
            elif op is sre.RANGE:
                members.append(f"{_char(av[0])}-{_char(av[1])}")
            elif op is sre.CATEGORY:
                inside, outside = _category(av, flags)
                (members if inside is not None else complements).append(inside if inside is not None else outside)
            else:
                raise UnsupportedPattern(f"{op} in a set", "write the set with characters, ranges, \\d, \\w or \\s")
        if not complements:
            return f"[{'^' if negated else ''}{''.join(members)}]"
        if negated:
            raise UnsupportedPattern(
                "\\W or \\S inside a negated set ([^…\\W…])",
                "RE2 cannot take a set away from another: list what may match instead",
            )
        if not members and len(complements) == 1:
            return f"[^{complements[0]}]"
        options = ([f"[{''.join(members)}]"] if members else []) + [f"[^{c}]" for c in complements]
        return "(?:" + "|".join(options) + ")"


def _category(category: Any, flags: int) -> tuple[str | None, str]:
    """(the members to put in a set, or None; the members whose complement it is)."""
    ascii_only = bool(flags & sre.SRE_FLAG_ASCII)
    word, space = (_ASCII_WORD, _ASCII_SPACE) if ascii_only else (_WORD, _SPACE)
    digit = "0-9" if ascii_only else r"\p{Nd}"
    if category is sre.CATEGORY_DIGIT:
        return digit, ""
    if category is sre.CATEGORY_NOT_DIGIT:
        return (None, "0-9") if ascii_only else (r"\P{Nd}", "")
    if category is sre.CATEGORY_WORD:
        return word, ""
    if category is sre.CATEGORY_NOT_WORD:
        return None, word
    if category is sre.CATEGORY_SPACE:
        return space, ""
    if category is sre.CATEGORY_NOT_SPACE:
        return None, space
    raise UnsupportedPattern(f"the class {category}", "use \\d, \\w, \\s or a set of characters")


def _modifiers(add: int, remove: int) -> str:
    letters = ((sre.SRE_FLAG_IGNORECASE, "i"), (sre.SRE_FLAG_MULTILINE, "m"), (sre.SRE_FLAG_DOTALL, "s"))
    on = "".join(letter for flag, letter in letters if add & flag)
    off = "".join(letter for flag, letter in letters if remove & flag)
    return on + (f"-{off}" if off else "")


def _quantifier(low: int, high: Any) -> str:
    if high == sre.MAXREPEAT:
        return {0: "*", 1: "+"}.get(low, f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def _refused(op: Any, av: Any) -> UnsupportedPattern:
    if op is sre.GROUPREF:
        return UnsupportedPattern(
            "a backreference (\\1 or (?P=name))",
            "RE2 cannot require the same text twice; drop it, or check the repetition in the file's producer",
        )
    if op is sre.GROUPREF_EXISTS:
        return UnsupportedPattern("a conditional group ((?(1)…|…))", "write each alternative with |")
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        direction = "lookahead" if av[0] == 1 else "lookbehind"
        kind = ("(?=…)" if av[0] == 1 else "(?<=…)") if op is sre.ASSERT else ("(?!…)" if av[0] == 1 else "(?<!…)")
        return UnsupportedPattern(
            f"a {'negative ' if op is sre.ASSERT_NOT else ''}{direction} {kind}",
            "match the text itself (e.g. ^[^x]*$ rather than ^(?!.*x)), or split the rule into allowed values, "
            "max_length or a second column",
        )
    if op is getattr(sre, "ATOMIC_GROUP", None):
        return UnsupportedPattern("an atomic group (?>…)", "write it as a plain group (?:…): RE2 never backtracks")
    if op is getattr(sre, "POSSESSIVE_REPEAT", None):
        return UnsupportedPattern(
            "a possessive repeat (*+, ++, ?+)", "write it as a plain repeat: RE2 never backtracks"
        )
    return UnsupportedPattern(f"{op}", "write it with sets, groups, | and repeats")
