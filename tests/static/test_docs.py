"""Docs that cannot rot: every relative link and anchor in the README and docs/ resolves; every `make` target,
`ingest` subcommand and option they name exists; the contract fields they document are exactly the ones
contract.py accepts; every reason code the function can emit is documented."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import click
import pytest

from ingest.adapters.network import SERVICES, reason_code
from ingest.cli import main as ingest_cli
from ingest.contract import _COLUMN_FIELDS, _CONTRACT_FIELDS
from ingest.reading import COMPRESSED_KINDS
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")


def prose(text: str) -> str:
    """The text without its fenced code blocks (a link there is an example, not a link)."""
    return FENCE.sub("", text)


def code(text: str) -> list[str]:
    """Every line of a fenced block, and every inline code span: where commands are written."""
    lines = [line for block in FENCE.findall(text) for line in block.splitlines()[1:-1]]
    return lines + INLINE.findall(FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (but - and _), spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", prose(page.read_text()), re.M)}


def test_the_readme_is_short_and_every_page_says_what_it_answers():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
    for page in PAGES[1:]:
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# ") and lines[2].startswith("This page answers:"), page.name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for match in LINK.finditer(prose(page.read_text())):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
            broken.append(target)
    assert broken == []


def test_every_page_of_docs_is_in_the_readmes_table_of_contents():
    readme = (REPO / "README.md").read_text()
    assert [p.name for p in PAGES[1:] if f"(docs/{p.name})" not in readme] == []


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z0-9-]*):", (REPO / "Makefile").read_text(), re.M))


def test_every_make_target_the_docs_name_exists():
    named = set()
    for page in PAGES:
        for line in code(page.read_text()):
            for found in re.finditer(r"(?:^|[\s;&|(\"'])make((?: +-[a-zA-Z]+)*)((?: +[a-z][a-z0-9-]*)+)", line):
                named |= {word for word in found.group(2).split() if "=" not in word}
    assert named >= {"demo", "test", "up", "down", "bench"}
    assert sorted(named - make_targets()) == []


def commands(group: click.Group, words: list[str]) -> tuple[click.Command, list[str]] | None:
    """The command ``words`` names under ``group``, and the words after it; None if the first is no subcommand."""
    command: click.Command = group
    rest = list(words)
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return (command, rest) if command is not group else None


def test_every_ingest_subcommand_and_option_the_docs_name_exists():
    problems, seen = [], 0
    for page in PAGES:
        for line in code(page.read_text()):
            for found in re.finditer(r"(?:^\s*(?:\$\s+)?|/)ingest ((?:[a-z][a-z-]*)(?: [^#|;&]*)?)", line):
                try:
                    words = shlex.split(found.group(1), comments=True)
                except ValueError:
                    words = found.group(1).split()
                if not words or words[0] not in ingest_cli.commands:
                    if words and re.fullmatch(r"[a-z]+", words[0]) and words[0] not in ("the", "and", "to"):
                        problems.append(f"{page.name}: ingest {words[0]} is no subcommand")
                    continue
                named = commands(ingest_cli, words)
                assert named is not None
                command, rest = named
                seen += 1
                options = {o for p in command.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
                for word in rest:
                    option = word.split("=", 1)[0]
                    if option.startswith("--") and option not in options:
                        problems.append(f"{page.name}: ingest {command.name} has no {option}")
    assert seen > 10
    assert problems == []


def documented_fields(table_header: str) -> set[str]:
    text = (REPO / "docs" / "contracts.md").read_text()
    start = text.index(table_header)
    rows = text[start:].split("\n\n", 1)[0].splitlines()[2:]
    fields = set()
    for row in rows:
        first = row.split("|")[1]
        fields |= {name.split(".")[0] for name in re.findall(r"`([a-z_.]+)`", first)}
    return fields


def test_the_contract_fields_documented_are_exactly_those_the_parser_accepts():
    assert documented_fields("| contract field |") == _CONTRACT_FIELDS
    assert documented_fields("| column field |") == _COLUMN_FIELDS


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def emitted_reasons() -> set[str]:
    """The reason codes written in the function's code: what it rejects with (FileRejected), skips with
    (_Decided, _skipped) and fails with (``reason = ...``), and those it computes (a service out of reach,
    a corrupt compressed stream)."""
    found = {reason_code(s) for s in SERVICES}
    found |= {f"{what}_{kind}" for kind in COMPRESSED_KINDS for what in ("corrupt", "truncated")}
    for path in (REPO / "lambda" / "ingest").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if name in ("FileRejected", "_Decided") and node.args:
                    found |= set(_strings(node.args[0]))
                if name == "_skipped" and len(node.args) > 2:
                    found |= set(_strings(node.args[2]))
                found |= {s for kw in node.keywords if kw.arg == "reason" for s in _strings(kw.value)}
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id == "reason":
                        found |= set(_strings(node.value))
                    if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                        first = target.elts[0]
                        if isinstance(first, ast.Name) and first.id == "reason":
                            found |= set(_strings(node.value.elts[0]))
    return found


def test_every_reason_code_the_function_can_emit_is_documented():
    reasons = emitted_reasons()
    assert {"no_contract", "table_busy", "function_died", "s3_unreachable", "already_rejected"} <= reasons
    documented = set(INLINE.findall((REPO / "docs" / "files.md").read_text()))
    assert sorted(reasons - documented) == []
