import bz2
import lzma

import pytest

from ingest.contract import parse_contract
from ingest.processing import neutralize_formula, summary_document
from ingest.rejection import FileRejected
from tests.unit.conftest import SAMPLES, run


def test_clean_users_sample_loads_every_row_normalized(users, engine):
    result = run((SAMPLES / "users.csv").read_bytes(), users, engine)
    assert result.outcome.rows_total == result.outcome.rows_valid == 5
    assert result.errors == ""
    assert result.valid.splitlines()[0] == "id,email,full_name,signup_date,country,age,balance,is_active"
    assert result.valid.splitlines()[1] == "1,ada.lovelace@example.com,Ada Lovelace,2024-01-15,GB,36,1234.50,true"
    assert '"Hopper, Grace"' in result.valid


def test_bad_rows_go_to_errors_and_good_rows_go_on(users, engine):
    result = run((SAMPLES / "users_with_errors.csv").read_bytes(), users, engine)
    o = result.outcome
    assert (o.rows_total, o.rows_valid, o.rows_rejected) == (10, 6, 4)
    assert [r[0] for r in result.valid_rows] == ["10", "14", "15", "16", "17", "18"]
    lines = result.errors.splitlines()
    assert lines[0] == "line,column,rule,value,message"
    assert lines[1].startswith("3,email,pattern,not-an-email,")
    assert o.errors_by_rule["duplicate_key"] == 1


def test_too_many_bad_rows_reject_the_whole_file(users, engine):
    data = b"id,email,full_name\n1,a@b.co,A\n2,bad,B\n3,bad,C\n"
    with pytest.raises(FileRejected) as info:
        run(data, users, engine)
    assert info.value.reason == "too_many_rejected_rows"
    assert "2 of 3 rows" in info.value.message


def test_exactly_half_rejected_is_tolerated(users, engine):
    result = run(b"id,email,full_name\n1,a@b.co,A\n2,bad,B\n", users, engine)
    assert result.outcome.rows_valid == 1


def test_header_only_is_rejected(users, engine):
    with pytest.raises(FileRejected) as info:
        run(b"id,email,full_name\n", users, engine)
    assert info.value.reason == "no_data_rows"


def test_output_is_deterministic_and_chunking_does_not_change_it(users, engine):
    data = (SAMPLES / "users_with_errors.csv").read_bytes()
    whole = run(data, users, engine)
    pieces = run([data[i : i + 3] for i in range(0, len(data), 3)], users, engine)
    assert (whole.valid, whole.errors) == (pieces.valid, pieces.errors)


def test_formula_like_cells_are_data_in_outputs_but_neutralized_in_the_errors_csv(users, engine):
    data = b"id,email,full_name\n1,a@b.co,=HYPERLINK(1)\n2,=cmd|x,+SUM(A1)\n"
    result = run(data, users, engine)
    assert "=HYPERLINK(1)" in result.valid
    assert ",'=cmd|x," in result.errors
    assert neutralize_formula("-2") == "'-2" and neutralize_formula("ok") == "ok"


def test_summary_document_is_stable(users, engine):
    result = run((SAMPLES / "users_with_errors.csv").read_bytes(), users, engine)
    kwargs = dict(bucket="b", key="k", md5="0" * 32, contract=users, status="loaded", outcome=result.outcome)
    assert summary_document(**kwargs) == summary_document(**kwargs)
    assert b'"errors_by_rule"' in summary_document(**kwargs)


def test_measurements_sample(measurements, engine):
    result = run((SAMPLES / "test.csv").read_bytes(), measurements, engine)
    assert result.outcome.rows_valid == 4
    assert result.outcome.text_format.delimiter == ";"


def test_a_rejection_message_is_bounded_and_says_how_long_it_was():
    from ingest.rejection import MAX_MESSAGE_CHARS

    rejection = FileRejected("duplicate_header", "x" * 10_000)
    assert len(rejection.message) <= MAX_MESSAGE_CHARS and str(rejection) == rejection.message
    assert rejection.message.endswith("… (cut: 10,000 characters in all)")
    assert FileRejected("r", "short").message == "short"


@pytest.mark.parametrize("compress", [bz2.compress, lzma.compress], ids=["bzip2", "xz"])
def test_a_bzip2_or_xz_bomb_is_refused_by_its_inflation(compress):
    # concatenated streams are legal: 100 copies of a 1 MB block of rows, a few hundred bytes each
    data = compress(b"word\n") + compress((b"x" * 999 + b"\n") * 1000) * 100
    words = parse_contract("words", {"table": "words", "keys": ["incoming/words.csv"], "columns": [{"name": "word"}]})
    with pytest.raises(FileRejected) as info:
        run(data, words)
    assert info.value.reason == "decompression_bomb" and "max_inflation" in info.value.message
    assert f"{len(data):,} compressed bytes" in info.value.message  # every one taken in, each counted once


def test_a_title_block_above_the_table_is_named_with_the_skip_lines_that_reads_it():
    """A statistics office's export: lines of one field above a ';' header. A contract without skip_lines is
    told which line names its columns."""
    from ingest.processing import process

    data = (
        b"GENESIS-Tabelle: 44211-11i\nLohn- und Einkommensteuerstatistik: Deutschland, Jahre\nStand: 12.08.2026\n"
        b"Gemeinde;AGS;Einwohner\nOrt 1;05111000;1000\nOrt 2;05111001;1001\n"
    )
    columns = [{"name": "gemeinde"}, {"name": "ags"}, {"name": "einwohner", "type": "integer"}]
    contract = parse_contract("genesis", {"table": "genesis", "keys": ["incoming/g.csv"], "columns": columns})
    for engine in ("auto", "exact"):
        with pytest.raises(FileRejected) as rejected:
            process([data], contract, lambda _b: None, lambda _b: None, engine=engine)
        assert rejected.value.reason == "no_header"
        assert "Line 4 of the file names the contract's columns" in rejected.value.message
        assert rejected.value.message.endswith("set skip_lines = 3")
    told = parse_contract(
        "genesis", {"table": "genesis", "keys": ["incoming/g.csv"], "columns": columns, "skip_lines": 3}
    )
    assert process([data], told, lambda _b: None, lambda _b: None).rows_valid == 2
