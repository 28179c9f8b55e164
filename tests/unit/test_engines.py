"""The columnar engine must give exactly what the exact engine gives: values, errors, counts, bytes."""

from __future__ import annotations

import csv
import dataclasses
import io
import threading
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.benchdata import generate
from ingest import columnar
from ingest.columnar import ExactEngineNeeded
from ingest.contract import ContractRegistry, default_contracts_dir, parse_contract
from ingest.processing import process
from ingest.rejection import FileRejected
from tests.unit.conftest import run


def outcome_of(data: bytes, contract, engine: str, chunk: int):
    """The run's outputs, or the whole-file rejection it ended in (reason and message)."""
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    try:
        return run(chunks, contract, engine)
    except FileRejected as rejection:
        return (rejection.reason, rejection.message)


def both(data: bytes, contract, chunk: int = 1 << 20):
    exact = outcome_of(data, contract, "exact", chunk)
    fast = outcome_of(data, contract, "auto", chunk)
    if isinstance(exact, tuple) or isinstance(fast, tuple):
        assert fast == exact
    return exact, fast


def assert_same(exact, fast):
    if isinstance(exact, tuple):
        return  # both rejected the file identically (checked in both())
    assert fast.valid == exact.valid
    assert fast.errors == exact.errors
    e, f = exact.outcome, fast.outcome
    assert (f.rows_total, f.rows_valid, f.rows_rejected) == (e.rows_total, e.rows_valid, e.rows_rejected)
    assert f.errors_by_rule == e.errors_by_rule


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(columnar, "BLOCK_BYTES", 4096)  # many batches, records straddling their edges


def test_generated_benchmark_data_is_identical_in_both_engines(users, tmp_path, small_blocks):
    data = generate(tmp_path / "users.csv", 5_000, seed=7).read_bytes()
    exact, fast = both(data, users, chunk=65_536)
    assert fast.outcome.engine == "columnar" and exact.outcome.engine == "exact"
    assert_same(exact, fast)
    assert exact.outcome.rows_rejected > 20 and exact.outcome.errors_by_rule["field_count"] > 0


@pytest.mark.parametrize(
    "data",
    [
        b'id,email,full_name\n1,a@b.co,"Ann"x\n',  # text after a closing quote
        b'id,email,full_name\n1,a@b.co,An"n\n2,b@b.co,"B\n',  # a quote inside an unquoted field
        b"id,email,full_name\r1,a@b.co,Ann\r",  # lone CR line ends
        b'id,email,full_name\n1,a@b.co,"never closed\n',
        b"\n\nid,email,full_name\n1,a@b.co,Ann\n",  # blank lines before the header
    ],
)
def test_what_the_columnar_engine_cannot_vouch_for_goes_to_the_exact_engine(users, data):
    exact, fast = both(data, users)
    assert_same(exact, fast)
    with pytest.raises((ExactEngineNeeded, FileRejected)):
        process([data], users, lambda b: None, lambda b: None, engine="columnar")


@pytest.mark.parametrize("start", [b"sep=,\n", b"sep=,\r\n", b"\xef\xbb\xbfsep=,\r\n", b"sep=,\r"])
def test_a_delimiter_hint_line_gives_identical_results_and_line_numbers_in_both_engines(users, start):
    body = b"id,email,full_name\n1,a@b.co,Ann\n2,not an email,Bob\n3,c@d.co,Cy\n"
    if start.endswith(b"\r"):
        body = body.replace(b"\n", b"\r")  # a file of lone CRs: the exact engine's
    exact, fast = both(start + body, users)
    assert_same(exact, fast)
    assert fast.outcome.engine == ("exact" if start.endswith(b"\r") else "columnar")
    assert exact.outcome.rows_valid == 2 and "\n4,email,pattern,not an email," in exact.errors  # line 4 of the file


CELLS = {
    "id": st.one_of(st.integers(-5, 3_000_000_000).map(str), st.sampled_from(["+7", "007", "1.0", "", "x", "٣"])),
    "email": st.one_of(
        st.sampled_from(["a@b.co", " A@B.CO ", "bad", "é@x.io", "a@b", "a\t@b.co", "x@y.z"]),
        st.text(max_size=8),
    ),
    "full_name": st.one_of(st.sampled_from(["Ann  Lee", "A\tB", "Zoë", " x ", "", "a,b", 'q"t', "l\nm"]), st.text()),
    "signup_date": st.sampled_from(
        ["2024-01-15", "2024-1-5", "01/15/2024", "15.01.2024", "2023-02-29", "2024-02-29", "", "NA", "0000-01-01"]
    ),
    "country": st.sampled_from(["gb", "GB", "GBR", " us ", "", "ü1"]),
    "age": st.one_of(st.integers(-2, 160).map(str), st.sampled_from(["", "N/A", "4.5", "+3", "0150"])),
    "balance": st.one_of(
        st.decimals(-(10**11), 10**11, places=3, allow_nan=False).map(str),
        st.sampled_from(["", "1.", ".5", "-0", "0012.50", "1e3", "12345678901.00", "-.5", "+1.5"]),
    ),
    "is_active": st.sampled_from(["true", "F", "yes", "N", "1", "0", "maybe", "", "İ"]),
}


def _field(value: str, delimiter: str) -> str:
    if any(ch in value for ch in (delimiter, '"', "\n", "\r")) or value != value.strip():
        return '"' + value.replace('"', '""') + '"'
    return value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.fixed_dictionaries(CELLS), min_size=1, max_size=40),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    newline=st.sampled_from(["\n", "\r\n"]),
    chunk=st.integers(1, 300),
    hint=st.booleans(),
    title=st.lists(st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",))), max_size=3),
)
def test_random_tables_give_identical_results_in_both_engines(users, rows, delimiter, newline, chunk, hint, title):
    users = dataclasses.replace(users, skip_lines=len(title))  # lines before the header, whatever they hold
    header = delimiter.join(CELLS)
    lines = (
        [f"sep={delimiter}"] * hint
        + title
        + [header]
        + [delimiter.join(_field(row[c], delimiter) for c in CELLS) for row in rows]
    )
    data = (newline.join(lines) + newline).encode()
    exact, fast = both(data, users, chunk)
    assert_same(exact, fast)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(st.binary(max_size=2000), st.text(max_size=500).map(lambda t: t.encode("utf-8"))),
    header=st.booleans(),
)
def test_arbitrary_bytes_either_load_or_are_rejected_with_a_reason(users, data, header):
    """Never a crash: every input ends as an outcome or a FileRejected with a known reason."""
    if header:
        data = b"id,email,full_name\n" + data
    exact, fast = both(data, users, chunk=97)
    for result in (exact, fast):
        if isinstance(result, tuple):
            assert result[0] in REASONS and result[1]
        else:
            assert result.outcome.rows_total == result.outcome.rows_valid + result.outcome.rows_rejected


REASONS = {
    "empty_object",
    "binary_content",
    "invalid_encoding",
    *(f"{fault}_{kind}" for fault in ("truncated", "corrupt") for kind in ("gzip", "bzip2", "xz")),
    "unsupported_compression",
    "no_header",
    "duplicate_header",
    "missing_columns",
    "unknown_columns",
    "malformed_csv",
    "field_too_large",
    "no_data_rows",
    "too_many_rejected_rows",
}


def test_repeated_keys_across_many_batches_are_found_like_the_exact_engine(users, small_blocks):
    ids = [*range(1, 3000), 5, 2999, 1500, *range(5000, 5600, 3), 5003, 4000, 1, 7, 9000, 8000]
    ids += [*range(7000, 6000, -7), 7000, 6993, 9000]  # descending: the overlapping (LSM) path too
    data = ("id,email,full_name\n" + "".join(f"{i},u{i}@example.com,User {i}\n" for i in ids)).encode()
    exact, fast = both(data, users, chunk=8192)
    assert_same(exact, fast)
    assert fast.outcome.engine == "columnar"
    assert exact.outcome.errors_by_rule["duplicate_key"] == 9
    assert "id 5 already appeared at line 6" in exact.errors


TEXT_CONTRACT = parse_contract(
    "notes",
    {
        "table": "notes",
        "keys": ["incoming/notes.csv"],
        "max_rejected_share": 1.0,
        "columns": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
    },
)
# Text as people write it: any printable character, tabs and line breaks; other control characters make
# a file look binary (more than 1% of its bytes), which is a rejection of its own (binary_content).
CELL_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from(["\t", "\n", "\r"]), max_size=12)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.tuples(CELL_TEXT, CELL_TEXT, CELL_TEXT), min_size=1, max_size=25),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    newline=st.sampled_from(["\n", "\r\n"]),
    quote_all=st.booleans(),
)
def test_values_round_trip_through_the_pipeline(rows, delimiter, newline, quote_all):
    """Any table rendered to CSV (any delimiter, line ending, quoting) comes out of processed/ with the
    same values: trimmed, and NULL where the cell was empty or a null token."""
    buffer = io.StringIO()
    # Python's writer leaves a lone CR unquoted under QUOTE_MINIMAL (a reader then sees a line break):
    # quote everything when a value holds one, as a careful producer would
    quote_all = quote_all or any("\r" in cell for row in rows for cell in row)
    writer = csv.writer(
        buffer, delimiter=delimiter, lineterminator=newline, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL
    )
    writer.writerow(["a", "b", "c"])
    writer.writerows(rows)
    result = outcome_of(buffer.getvalue().encode(), TEXT_CONTRACT, "auto", 1 << 20)
    assert not isinstance(result, tuple), result
    expected = [["" if c.strip() in TEXT_CONTRACT.null_values else c.strip() for c in row] for row in rows]
    assert list(csv.reader(io.StringIO(result.valid, newline="")))[1:] == expected
    assert (result.outcome.rows_valid, result.outcome.rows_rejected) == (len(rows), 0)


KEPT_EDGES_CONTRACT = parse_contract(
    "kept",
    {
        "table": "kept",
        "keys": ["incoming/kept.csv"],
        "max_rejected_share": 1.0,
        "null_values": ["null"],
        "columns": [
            {"name": "a", "trim": False},
            {"name": "b", "type": "integer", "null_values": ["NA", "-"]},
            {"name": "c", "trim": False, "required": True, "null_values": []},
        ],
    },
)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            CELL_TEXT | st.sampled_from([" x ", "null", " ", "NA"]),
            st.sampled_from(["", "NA", "-", "null", " 7 ", "12", "x"]),
            CELL_TEXT | st.sampled_from([" y", "null", ""]),
        ),
        min_size=1,
        max_size=25,
    ),
    chunk=st.sampled_from([7, 1 << 20]),
)
def test_kept_edges_and_column_null_values_are_identical_in_both_engines(rows, chunk):
    buffer = io.StringIO()
    csv.writer(buffer, quoting=csv.QUOTE_ALL).writerows([["a", "b", "c"], *rows])
    exact, fast = both(buffer.getvalue().encode(), KEPT_EDGES_CONTRACT, chunk)
    assert_same(exact, fast)
    if not isinstance(exact, tuple):
        valid = list(csv.reader(io.StringIO(exact.valid, newline="")))[1:]
        kept = [r for r in rows if r[2] != "" and r[1].strip() in ("", "NA", "-", "7", "12")]
        assert valid == [
            ["" if a in ("", "null") else a, b.strip() if b.strip() not in ("NA", "-") else "", c] for a, b, c in kept
        ]


@pytest.mark.parametrize(
    "data",
    [b"id,email,full_name\n ", b'id,email,full_name\n1,a@b.co,A\n \t \n"  "\n2,c@d.ef,B\n'],
)
def test_whitespace_only_lines_are_blank_in_both_engines(users, data):
    exact, fast = both(data, users)
    assert_same(exact, fast)


def test_blank_lines_between_the_rows_of_a_one_column_file_are_empty_cells():
    """A spreadsheet exports an empty cell of a one-column sheet as an empty line (PostgreSQL's COPY reads it
    as a NULL): such a line followed by more records is a row, and so is a line of whitespace; the empty
    lines after the last record are the file's trailing line breaks, and blank lines before the header are
    nothing. Both engines (the columnar one hands these files to the exact one) say so."""
    contract = parse_contract("one", {"table": "one", "keys": ["k"], "columns": [{"name": "v"}]})
    exact, fast = both(b"\n  \nv\na\n  \nb\n\n\t\nc\n\n \n\n\n", contract)
    assert_same(exact, fast)
    assert fast.outcome.engine == "exact"
    assert (exact.outcome.rows_total, exact.outcome.rows_valid) == (8, 8)
    assert exact.valid == "v\na\n\nb\n\n\nc\n\n\n"  # the empty and whitespace cells as NULLs, in order
    required = parse_contract("one", {"table": "one", "keys": ["k"], "columns": [{"name": "v", "required": True}]})
    rejected = outcome_of(b"v\na\n\nb\n\n", dataclasses.replace(required, max_rejected_share=1.0), "auto", 1 << 20)
    assert [e.split(",")[:3] for e in rejected.errors.splitlines()[1:]] == [["3", "v", "required"]]


# Every cell the byte-level screens judge, in ASCII-only files (where the screens skip the Unicode checks):
# signs, leading zeros, bounds, points, widths, separators, whitespace at the edges and inside.
ASCII_EDGES = {
    "id": ["0", "-0", "-00", "00", "-", "+1", "7", "-7", "2147483647", "2147483648", "-2147483648", "1 2", " 9 "],
    "email": ["a@b.co", "A@B.CO", " a@b.co", "a@b.co\t", "a b@c.de", "@b.co", "a@.co", "a@b.", "a@@b.co", "x" * 250],
    "full_name": ["Ann  Lee", "Ann   Lee  Jr", "A\tB", "A\n\nB", '"q"', "a,b", " lead", "trail ", "  ", "A \t B"],
    "signup_date": [
        *["2024-01-15", "2024-1-15", "01/15/2024", "1/15/2024", "15.01.2024", "2024-02-30", "2024-13-01"],
        *["0000-01-01", "2024-01-15 ", "2024/01/15", "20240115", "2024-01-1x", "29.02.2000", "29.02.1900"],
    ],
    "country": ["gb", "GB", " de ", "G B", "GBR", "g", "", "NA"],
    "age": ["0", "150", "151", "-1", "007", "-0", "1.5", "  42", "N/A", "99999999999999999999"],
    "balance": [
        *["0", "-0", "0.5", "-0.50", "00.5", ".5", "5.", "1.2.3", "-", "-.5", "1234567890.12", "12345678901.1"],
        *["1.234", "1.230", "+1", "1e3", "10", "-10.00", "9999999999.99"],
    ],
    "is_active": ["true", "TRUE", "t", "F", "yes", "No", "y", "1", "0", "maybe", "", " true "],
}


@pytest.mark.parametrize("column", list(ASCII_EDGES))
def test_ascii_cells_at_the_edges_of_each_rule_give_identical_results(users, column, small_blocks):
    base = {
        "id": "1",
        "email": "a@b.co",
        "full_name": "Ann",
        "signup_date": "2024-01-15",
        "country": "GB",
        "age": "30",
        "balance": "1.50",
        "is_active": "true",
    }
    rows = []
    for i, value in enumerate(ASCII_EDGES[column] * 3):
        row = {**base, "id": str(i + 1), column: value}
        rows.append(",".join(_field(row[c], ",") for c in base))
    data = ("\n".join([",".join(base), *rows]) + "\n").encode()
    exact, fast = both(data, dataclasses.replace(users, max_rejected_share=1.0))
    assert fast.outcome.engine == "columnar"
    assert_same(exact, fast)


def test_dates_with_multibyte_separators_give_identical_results():
    contract = parse_contract(
        "d",
        {
            "table": "d",
            "keys": ["k"],
            "max_rejected_share": 1.0,
            "columns": [{"name": "n"}, {"name": "day", "type": "date", "formats": ["YYYY年MM月DD日", "DD.MM.YYYY"]}],
        },
    )
    cells = ["2024年01月15日", "2024年1月15日", "2024年02月30日", "15.01.2024", "2024-01-15", "2024年01月15"]
    exact, fast = both(("n,day\n" + "\n".join(f"{i},{c}" for i, c in enumerate(cells)) + "\n").encode(), contract)
    assert fast.outcome.engine == "columnar"
    assert_same(exact, fast)
    assert exact.outcome.rows_valid == 3


def test_cells_read_the_bytes_of_each_cell_also_in_slices_and_empty_cells():
    whole = pa.array(["x", "", "a b", "  c", "d  ", "12-3", ""], pa.string())
    cells = columnar.Cells(whole.slice(1, 5))  # "", "a b", "  c", "d  ", "12-3"
    assert cells.lengths.tolist() == [0, 3, 3, 3, 4]
    assert cells.count(columnar._any_of(b" ")).tolist() == [0, 1, 2, 2, 0]
    assert cells.count(columnar._not_digit).tolist() == [0, 3, 3, 3, 1]
    assert cells.byte_at(0).tolist() == [0, ord("a"), 32, ord("d"), ord("1")]
    assert cells.byte_at(3).tolist() == [0, 0, 0, 0, ord("3")]
    assert cells.pairs(32, 32).tolist() == [False, False, True, True, False]
    assert cells.at_an_edge(columnar.TRIMMED)
    assert not columnar.Cells(whole.slice(1, 2)).at_an_edge(columnar.TRIMMED)  # "" and "a b": inner space only
    assert columnar.Cells(whole.slice(3, 1)).at_an_edge(columnar.TRIMMED)  # "  c": at its start only
    assert columnar.Cells(whole.slice(4, 1)).at_an_edge(columnar.TRIMMED)  # "d  ": at its end only
    assert not columnar.Cells(whole.slice(6, 1)).at_an_edge(columnar.TRIMMED)  # "": no edge at all
    assert not columnar.Cells(pa.array(["a", " b"], pa.string()).slice(0, 1)).at_an_edge(columnar.TRIMMED)


def test_csv_lines_writes_only_the_kept_rows_quoted_like_the_exact_engine():
    ids = pa.array(["0", "1", "2", "3", "4"], pa.string()).slice(1, 4)  # offsets that do not start at 0
    names = pa.array(["x", 'Ada "A", L', None, "b\nc", "y"], pa.string()).slice(1, 4)
    keep = np.array([True, False, True, True])
    block = columnar.csv_lines([ids, names], [False, True], keep=keep)
    assert bytes(block) == b'1,"Ada ""A"", L"\n3,"b\nc"\n4,y\n'
    assert bytes(columnar.csv_lines([ids, names], [False, True])) == b'1,"Ada ""A"", L"\n2,\n3,"b\nc"\n4,y\n'
    assert columnar.csv_lines([ids, names], [False, True], keep=np.zeros(4, dtype=bool)) == b""
    assert bytes(columnar.csv_lines([ids, names], [False, True], keep=np.array([False, False, False, True]))) == (
        b"4,y\n"
    )


def columnar_and_exact(table: str, columns: list[dict], data: bytes) -> tuple[list[list[str]], list[list[str]]]:
    """The valid rows and the (line, column, rule) of each row error, both engines agreeing and the columnar
    one taking the file, under a contract of ``columns`` that tolerates any share of bad rows."""
    contract = parse_contract(
        table, {"table": table, "keys": [f"incoming/{table}.csv"], "max_rejected_share": 1.0, "columns": columns}
    )
    exact, fast = both(data, contract)
    assert_same(exact, fast)
    assert fast.outcome.engine == "columnar"
    return exact.valid_rows, [e.split(",")[:3] for e in exact.errors.splitlines()[1:]]


def test_timestamp_columns_give_identical_results_in_both_engines():
    valid, errors = columnar_and_exact(
        "times",
        [{"name": "local", "type": "timestamp"}, {"name": "instant", "type": "timestamptz"}],
        b"local,instant\n2024-01-05 13:45,2024-01-05 13:45+01:00\n 2024-01-05T13:45:07.25 ,2024-01-05T13:45Z\n"
        b"2024-01-05T13:45Z,2024-01-05T13:45\n2024-01-05T13:45:00.1234567,x\n,\n",
    )
    assert valid == [
        ["2024-01-05T13:45:00", "2024-01-05T12:45:00+00:00"],
        ["2024-01-05T13:45:07.250000", "2024-01-05T13:45:00+00:00"],
        ["", ""],
    ]
    assert errors == [
        ["4", "local", "type"],
        ["5", "local", "precision"],
        ["5", "instant", "type"],
    ]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_lines_before_the_header_give_identical_results_and_line_numbers_in_both_engines(users, newline):
    title = b'"Data Source","World Development Indicators",\n\nNote: 5" screens\n\n'
    body = b"id,email,full_name\n1,a@b.co,Ann\n2,not an email,Bob\n3,c@d.co,Cy\n"
    data = (title + body).replace(b"\n", newline)
    exact, fast = both(data, dataclasses.replace(users, skip_lines=4))
    assert_same(exact, fast)
    assert fast.outcome.engine == ("exact" if newline == b"\r" else "columnar")
    assert exact.outcome.rows_valid == 2 and "\n7,email,pattern,not an email," in exact.errors  # line 7 of the file


LITERAL = st.text(st.characters(blacklist_characters="\t\r\n", blacklist_categories=("Cs",)) | st.just('"'), max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.lists(LITERAL, min_size=3, max_size=3), min_size=1, max_size=30),
    newline=st.sampled_from(["\n", "\r\n"]),
    chunk=st.integers(1, 300),
)
def test_tables_whose_quotes_are_characters_give_identical_results_in_both_engines(users, rows, newline, chunk):
    users = dataclasses.replace(users, quoting="none", max_rejected_share=1.0)
    lines = ["id\temail\tfull_name", *("\t".join(row) for row in rows)]
    exact, fast = both((newline.join(lines) + newline).encode(), users, chunk)
    assert_same(exact, fast)


def test_a_tsv_export_with_quotes_as_characters_reads_them_as_written_in_both_engines(users):
    data = (
        b'id\temail\tfull_name\n1\ta@b.co\t"Weird Al" Yankovic\n2\tc@d.co\tThe "Best" Film\n3\t"x@y.co"\t"\n4\tbad\tx\n'
    )
    exact, fast = both(data, dataclasses.replace(users, quoting="none", max_rejected_share=1.0))
    assert_same(exact, fast)
    assert fast.outcome.engine == "columnar"
    assert [row[:3] for row in csv.reader(io.StringIO(exact.valid))][1:] == [
        ["1", "a@b.co", '"Weird Al" Yankovic'],
        ["2", "c@d.co", 'The "Best" Film'],
        ["3", '"x@y.co"', '"'],
    ]
    assert [e.split(",")[:3] for e in exact.errors.splitlines()[1:]] == [["5", "email", "pattern"]]


def test_a_title_block_read_as_the_header_is_rejected_naming_skip_lines(users):
    data = b'"Data Source","World Development Indicators",\n\nid,email,full_name\n1,a@b.co,Ann\n'
    reason, message = both(data, users)[0]
    assert reason == "no_header" and message.startswith("the first line ('Data Source,World Development Indicators,')")
    assert "skipped with the contract's skip_lines" in message
    reason, message = both(data, dataclasses.replace(users, skip_lines=3))[0]
    assert message.startswith("the line after the 3 the contract skips ('1,a@b.co,Ann') names no column")
    for skipped in (1, 2):  # the blank line between the title and the header is skipped either way
        assert both(data, dataclasses.replace(users, skip_lines=skipped))[0].outcome.rows_valid == 1


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_a_repeated_header_is_a_row_error_saying_so_in_both_engines(users, newline):
    # cat a.csv b.csv: the second header was a row. In a text column it loaded as data, elsewhere it was
    # a type error about "id". Now it is a row error of its own, in both engines.
    data = b'id,email,full_name\n1,a@b.co,Ann\nid,email,full_name\n2,c@d.co,Bo\n"id",email,full_name\n'
    exact, fast = both(data.replace(b"\n", newline), dataclasses.replace(users, max_rejected_share=1.0))
    assert_same(exact, fast)
    assert fast.outcome.engine == "columnar" and exact.outcome.rows_valid == 2
    assert [e.split(",")[:3] for e in exact.errors.splitlines()[1:]] == [
        ["3", "", "repeated_header"],
        ["5", "", "repeated_header"],
    ]
    # one column: a value may be the column's name
    one = parse_contract("words", {"table": "words", "keys": ["k"], "columns": [{"name": "word"}]})
    assert both(b"word\nhello\nword\n", one)[0].outcome.rows_valid == 2


def test_decimal_comma_columns_read_the_comma_as_the_point_in_both_engines():
    # A French or German spreadsheet's export: "4,50". Such a column says decimal = ",".
    valid, errors = columnar_and_exact(
        "prices",
        [
            {"name": "sku"},
            {"name": "price", "type": "numeric", "precision": 8, "scale": 2, "decimal": ","},
            {"name": "weight", "type": "double", "decimal": ","},
        ],
        b"sku;price;weight\nA;4,50;0,25\nB;-0,5;1e3\nC;12;2,5E-3\nD;1.234,50;1\nE;4.50;1.5\nF;1,234;1,2,3\n"
        b"G;0,005;x\nH;;\n",
    )
    assert valid == [["A", "4.50", "0.25"], ["B", "-0.5", "1e3"], ["C", "12", "2.5E-3"], ["H", "", ""]]
    assert errors == [
        ["5", "price", "type"],
        ["6", "price", "type"],
        ["6", "weight", "type"],
        ["7", "price", "scale"],
        ["7", "weight", "type"],
        ["8", "price", "scale"],
        ["8", "weight", "type"],
    ]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_null_padding_reads_the_missing_fields_at_a_rows_end_as_empty_in_both_engines(newline, small_blocks):
    # statsmodels' arima212_forecast.csv: "1950:2, 29.150, 29.848,," under a header of six. Every such row
    # was a field_count error; under null_padding the fields it lacks are empty, and only those.
    columns = [
        {"name": "dates", "required": True},
        {"name": "cpi", "type": "numeric"},
        {"name": "predict"},
        {"name": "note"},
    ]
    data = b"dates,cpi,predict,note\n1950:1,28.980,,\n1950:2,29.150,29.848\n1950:3\n1950:4,x\n,29.370\n"
    data += b"1951:1,1,2,3,4\n" + b"1951:2,1,2,3\n" * 3000
    padded = [{"table": "t", "keys": ["k"], "max_rejected_share": 1.0, "columns": columns, "null_padding": True}]
    contract = parse_contract("t", padded[0])
    exact, fast = both(data.replace(b"\n", newline), contract)
    assert_same(exact, fast)
    assert exact.valid_rows[:3] == [
        ["1950:1", "28.980", "", ""],
        ["1950:2", "29.150", "29.848", ""],
        ["1950:3", "", "", ""],
    ]
    assert [e.split(",")[:3] for e in exact.errors.splitlines()[1:]] == [
        ["5", "cpi", "type"],  # padded, then judged like any row
        ["6", "dates", "required"],
        ["7", "", "field_count"],  # a row with more fields than the header is still one
    ]
    assert fast.outcome.engine == "exact"  # the columnar engine hands such a file over
    strict = parse_contract("t", {**padded[0], "null_padding": False})
    assert (
        both(b"dates,cpi,predict,note\n1950:3\n1950:4,1,2,3\n", strict)[0]
        .errors.splitlines()[1]
        .startswith("2,,field_count")
    )
    assert both(b"dates,cpi,predict,note\n1950:4,1,2,3\n" * 3, contract)[1].outcome.engine == "columnar"


def test_negative_zeros_are_written_as_zero_in_both_engines():
    # statsmodels' tables print -0.00 for a small negative rounded: numeric stored 0.00 while processed/ said
    # -0.00. Both engines now write it as PostgreSQL stores it; other negatives keep their sign.
    valid, errors = columnar_and_exact(
        "rounded",
        [{"name": "label"}, {"name": "estimate", "type": "numeric"}, {"name": "ratio", "type": "double"}],
        b"label,estimate,ratio\na,-0.00,-0.0\nb,-0,-0\nc,-0.01,1\nd,-10.50,2\ne,0.00,3\n",
    )
    assert valid == [
        ["a", "0.00", "-0.0"],
        ["b", "0", "-0"],
        ["c", "-0.01", "1"],
        ["d", "-10.50", "2"],
        ["e", "0.00", "3"],
    ]
    assert errors == []


def test_a_quoting_anomaly_blocks_after_the_first_hands_the_file_over_as_the_first_block_would(users, small_blocks):
    # blocks are parsed by a thread of their own, ahead of the validation: what it meets late is raised in turn
    rows = b"".join(b"%d,u%d@b.co,User %d\n" % (i, i, i) for i in range(1, 3000))
    data = b"id,email,full_name\n" + rows + b'3000,x@b.co,An"n\n'
    exact, fast = both(data, users)
    assert_same(exact, fast)
    assert fast.outcome.engine == "exact" and fast.outcome.rows_valid == 3000
    with pytest.raises(ExactEngineNeeded, match="quote inside an unquoted field"):
        process([data], users, lambda b: None, lambda b: None, engine="columnar")


def test_parsed_blocks_come_in_order_and_an_error_after_them_comes_where_it_happened():
    def items():
        yield from range(5)
        raise ValueError("the fifth block is broken")

    got = []
    with pytest.raises(ValueError, match="fifth"):
        for item in columnar._ahead(items(), "test-ahead"):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_a_validation_that_stops_early_leaves_the_parsing_thread_to_end_by_itself():
    def endless():
        n = 0
        while True:
            n += 1
            yield n

    ahead = columnar._ahead(endless(), "test-ahead-endless")
    assert next(ahead) == 1
    [thread] = [t for t in threading.enumerate() if t.name == "test-ahead-endless"]
    ahead.close()  # what a for loop left by an exception does
    thread.join(5)
    assert not thread.is_alive()


def test_a_giant_cell_is_refused_after_a_bounded_read_by_both_engines():
    """A 300 MB cell was held whole by the columnar engine (and copied, and parsed) and read as one line by the
    exact one: past a gigabyte. Both now stop once a record or line passes their bound."""
    from ingest.columnar import RECORD_BYTES
    from ingest.reading import MAX_LINE_CHARS

    consumed = 0

    def cell(total: int) -> Iterator[bytes]:
        nonlocal consumed
        yield b"id,email,full_name\n1,a@b.co,"
        while consumed < total:
            consumed += 1 << 20
            yield b"x" * (1 << 20)
        yield b"\n2,b@c.de,Bob\n"

    contract = ContractRegistry.from_directory(default_contracts_dir())["users"]
    with pytest.raises(ExactEngineNeeded, match="a record longer than"):
        process(cell(300 << 20), contract, lambda _b: None, lambda _b: None, engine="auto")
    assert consumed <= RECORD_BYTES + (2 << 20)
    consumed = 0
    with pytest.raises(FileRejected) as refused:
        process(cell(300 << 20), contract, lambda _b: None, lambda _b: None, engine="exact")
    assert refused.value.reason == "field_too_large" and "line 2" in refused.value.message
    assert consumed <= MAX_LINE_CHARS + (4 << 20)


def test_a_row_that_starts_with_a_byte_order_mark_reads_alike_in_both_engines(users):
    """pyarrow drops a UTF-8 BOM at the start of any buffer it parses: a row beginning with one, at the start of
    a block, lost it (hypothesis found it: the columnar engine saw a blank line, the exact one a row)."""
    data = b"id,email,full_name\n" + b"\xef\xbb\xbf "
    exact, fast = both(data, users, chunk=97)
    assert fast == exact


def test_rows_with_several_unsure_cells_get_every_error_in_column_order_and_rescued_values(users, small_blocks):
    # The columnar engine decides only a row's unsure cells by the exact rules: a row with several bad cells
    # must still name each (in the contract's column order), a row with bad and rescued cells ("+5",
    # "007.10") must still be rejected for the bad ones, and a row with only rescued cells must load their
    # exact values; between rows of clean cells, in many batches.
    odd = [
        "{},not-an-email,Ann,2020-13-40,DE,200,1.5,maybe",  # four bad cells
        "{},a{}@b.co,Ann,2020-01-02,de,+5,007.10,yes",  # rescued cells only
        "{},a@b.co,  Ann   Lee ,02.01.2020,XX1,+5,x,N",  # rescued and bad cells
        "{},,,,,,,",  # required cells empty
    ]
    rows = ["id,email,full_name,signup_date,country,age,balance,is_active"]
    for i in range(1, 400):
        template = odd[(i // 7 - 1) % len(odd)] if i % 7 == 0 else "{},a{}@b.co,Ann Lee,2020-01-02,DE,30,1.50,true"
        rows.append(template.format(i, i))
    exact, fast = both(("\n".join(rows) + "\n").encode(), dataclasses.replace(users, max_rejected_share=1.0), 997)
    assert_same(exact, fast)
    assert fast.outcome.engine == "columnar"
    errors = [e.split(",")[:2] for e in exact.errors.splitlines()[1:]]
    assert [column for line, column in errors if line == "8"] == ["email", "signup_date", "age", "is_active"]
    assert [column for line, column in errors if line == "22"] == ["country", "balance"]
    assert "15" not in {line for line, _column in errors}  # rescued only: loaded
    assert ",a14@b.co,Ann,2020-01-02,DE,5,7.10,true" in fast.valid
