"""Contract patterns keep Python's meaning and run in RE2 (linear time); what RE2 cannot run is refused."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest import patterns
from ingest.contract import ContractError, parse_contract

PATTERNS = [
    r"^[^@\s]+@[^@\s]+\.[^@\s]+$",
    r"^[A-Z]{2}$",
    r"^(\w+\s?)*$",
    r"\d{3}-\d{4}",
    r"^abc$",
    r"(?i)^hello",
    r"[\W_]+",
    r"^\S+$",
    r"a.b",
    r"(?s)a.b",
    r"(?m)^b$",
    r"^(?:foo|bar)+$",
    r"x*?y",
    r"[^\d]",
    r"^\D+$",
    r"(?P<n>ab)+",
    r"[a\S]",
    r"^[0-9]{5}(?:-[0-9]{4})?$",
    r"^\s*$",
    r"(?a)^\w+$",
    r"^[+-]?\d+(\.\d+)?$",
    r"\Aab\Z",
]
#: letters, digits and spaces of several scripts, newlines and control characters: where \w, \d, \s differ
ALPHABET = "aAbxyz09_ -@.\n\t\x0b\x1c\x85\u00a0\u2028ñßÜ١٢é中"


@pytest.mark.parametrize("pattern", PATTERNS)
@given(value=st.text(alphabet=ALPHABET, max_size=12))
def test_a_pattern_means_in_re2_what_it_means_in_python(pattern, value):
    assert patterns.searcher(pattern)(value) == bool(re.search(pattern, value)), patterns.translate(pattern)


def test_word_boundaries_are_the_one_difference_and_judge_ascii_words():
    assert patterns.searcher(r"\bword\b")("a word here") and re.search(r"\bword\b", "a word here")
    assert patterns.searcher(r"\bword\b")("ñword") and not re.search(r"\bword\b", "ñword")  # documented


def test_the_backtracking_pattern_answers_a_long_cell_at_once_in_both_engines():
    """Python's re takes time exponential in this cell (24 letters: a second; each more doubles it); RE2
    answers in linear time. A child process runs it, so that a backtracking engine, which holds the
    interpreter, fails the test at the timeout instead of hanging it; the timeout is no speed goal: RE2
    answers in milliseconds, backtracking would not answer in the age of the universe."""
    code = textwrap.dedent(
        """
        import pyarrow as pa, pyarrow.compute as pc
        from ingest import patterns
        cell = "a" * 50_000 + "!"
        assert patterns.searcher(r"^(\\w+\\s?)*$")(cell) is False
        assert patterns.searcher(r"^(\\w+\\s?)*$")("words separated by single spaces") is True
        assert pc.match_substring_regex(pa.array([cell]), patterns.translate(r"^(\\w+\\s?)*$")).to_pylist() == [False]
        print("answered")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "answered", done.stderr


@pytest.mark.parametrize(
    ("pattern", "construct", "advice"),
    [
        (r"(a)\1", "a backreference", "drop it"),
        (r"(?P<x>a)(?P=x)", "a backreference", "drop it"),
        (r"foo(?=bar)", "a lookahead (?=…)", "match the text itself"),
        (r"^(?!.*x)", "a negative lookahead (?!…)", "^[^x]*$"),
        (r"(?<=x)y", "a lookbehind (?<=…)", "match the text itself"),
        (r"(?<!x)y", "a negative lookbehind (?<!…)", "match the text itself"),
        (r"(a)?(?(1)b|c)", "a conditional group", "|"),
        (r"(?>a+)b", "an atomic group", "(?:…)"),
        (r"a++b", "a possessive repeat", "plain repeat"),
        (r"a{2000}", "a counted repeat over 1,000", "max_length"),
        (r"[^a\W]", r"\W or \S inside a negated set", "list what may match"),
    ],
)
def test_what_re2_cannot_run_is_refused_naming_the_construct_and_what_to_write_instead(pattern, construct, advice):
    with pytest.raises(patterns.UnsupportedPattern) as refused:
        patterns.check(pattern)
    assert construct in str(refused.value) and advice in str(refused.value)


def test_a_contract_with_such_a_pattern_is_refused_when_parsed():
    columns = [{"name": "name", "pattern": r"^(?!admin).*$"}]
    with pytest.raises(ContractError, match=r"column 'name': pattern .* cannot be used: it uses a negative lookahead"):
        parse_contract("people", {"table": "people", "keys": ["incoming/people/*.csv"], "columns": columns})
    with pytest.raises(ContractError, match="does not compile"):
        parse_contract("people", {"table": "people", "keys": ["x/*.csv"], "columns": [{"name": "a", "pattern": "("}]})
