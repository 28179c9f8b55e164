"""Files nobody here wrote, through ``ingest contract new`` and a real load: every value comes back intact.

Each test drafts a contract from a file, loads the same file through the service into a real PostgreSQL
(via the emulator's S3), and reads every cell back: text exactly, numbers, booleans and dates by value,
an empty cell as NULL. The property test does the same for arbitrary headers and cells.
"""

from __future__ import annotations

import csv
import io
import re
import tomllib
import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import tuple_row

from ingest.contract import ContractRegistry, parse_contract
from ingest.drafting import draft_contract, key_suffix
from ingest.rejection import FileRejected
from ingest.service import ingest_object
from ingest.validation import TRUE_WORDS, build_coercer

pytestmark = pytest.mark.integration


def render(header: list[str], rows: list[list[str]]) -> bytes:
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerows([header, *rows])
    return out.getvalue().encode("utf-8")


def draft_and_load(pipeline: Any, data: bytes, name: str, existing: list[Any] | None = None, rows: int = 10_000):
    text = draft_contract(data, name, rows=rows, existing=existing or [])
    contract = parse_contract(name, tomllib.loads(text))
    pipeline.deps.contracts = ContractRegistry([contract])
    key = f"incoming/{name}.csv"
    pipeline.upload(key, data)
    receipt = ingest_object(pipeline.bucket, key, pipeline.deps)
    return contract, receipt, text


def assert_round_trip(pipeline: Any, contract: Any, header: list[str], rows: list[list[str]]) -> None:
    names = ", ".join('"' + n + '"' for n in contract.column_names)
    with psycopg.connect(pipeline.database_url, row_factory=tuple_row) as conn:
        stored = conn.execute(
            # rows in file order: one COPY of a small file fills its pages in order (a big one may not: PostgreSQL
            # puts later rows in room left on earlier pages, so trials of large files compare them unordered)
            f"SELECT {names} FROM {contract.table} ORDER BY ctid"
        ).fetchall()
    assert len(stored) == len(rows)
    for source, back in zip(rows, stored):
        for col, cell, value in zip(contract.columns, source, back):
            assert same_value(contract, col, cell, value), (col.name, col.type, cell, value)


def same_value(contract: Any, col: Any, cell: str, value: Any) -> bool:
    raw = cell if not col.trim else cell.strip()
    if raw in contract.nulls(col):
        return value is None
    if col.type == "text":
        return value == cell if not col.trim else value == raw
    if col.type in ("integer", "bigint", "numeric"):
        # a drafted number prints back exactly as written ("007" is no number), its decimal comma a point
        shown = format(value, "f") if isinstance(value, Decimal) else str(value)  # PostgreSQL's text: 0.0000000000
        return shown == (raw.replace(",", ".") if col.decimal == "," else raw)
    if col.type == "boolean":
        return value is (raw.lower() in TRUE_WORDS)
    if col.type == "date":
        return isinstance(value, date) and value.isoformat() == build_coercer(col)(raw)
    if col.type in ("timestamp", "timestamptz"):
        fraction = re.search(r"[.,](\d+)", raw[11:])
        if fraction and fraction[1][6:].strip("0"):
            return False  # finer than microseconds: the column cannot give it back as written
        written = datetime.fromisoformat(raw)
        # as written: a time without an offset comes back as that wall-clock time, never as an instant
        # in a zone the file did not name; a time with one, as that instant
        return value == written and (value.tzinfo is None) == (written.tzinfo is None)
    return str(value) == raw


# --- files of the kind people download ----------------------------------------------------------------

COUNTRIES = (
    "Country or Area,ISO-alpha2 Code,ISO-alpha3 Code,M49 Code,Continent Code,"
    "Small Island Developing States (SIDS),Land Locked Developing Countries (LLDC)\n"
    "Namibia,NA,NAM,516,AF,,\n"
    "Canada,CA,CAN,124,NA,,\n"
    "Afghanistan,AF,AFG,004,AS,,x\n"
    "Antigua and Barbuda,AG,ATG,028,NA,x,\n"
    "Åland Islands,AX,ALA,248,EU,,\n"
    "Côte d’Ivoire,CI,CIV,384,AF,,\n"
)
FIPS = (
    "FIPS,Admin2,Province_State,Country_Region,Lat,Long_,Population,ZIP\n"
    "01001,Autauga,Alabama,US,32.53952745,-86.64408227,55869,36003\n"
    "01003,Baldwin,Alabama,US,30.72774991,-87.72207058,223234,36507\n"
    "06037,Los Angeles,California,US,34.30828379,-118.2282411,10039107,90001\n"
    "34005,Burlington,New Jersey,US,40.00919551,-74.66816983,445349,08123\n"
)
FINANCIALS = (
    "Symbol,Name,Sector,Price,Price/Earnings,Dividend Yield,Earnings/Share,52 Week Low,52 Week High,"
    "Market Cap,EBITDA,Price/Sales,Price/Book,SEC Filings,Growth %,Rank #\n"
    "MMM,3M Company,Industrials,222.89,24.31,2.3328617,7.92,259.77,175.49,138721055226,9048000000,"
    "4.390271,11.34,http://www.sec.gov/cgi-bin/browse-edgar?action=getcompany&CIK=MMM,3.5,1\n"
    "AOS,A.O. Smith Corp,Industrials,60.24,27.76,1.1479592,1.7,68.39,48.925,10783419933,601000000,"
    "3.5754826,6.35,http://www.sec.gov/cgi-bin/browse-edgar?action=getcompany&CIK=AOS,NA,2\n"
    "ABT,Abbott Laboratories,Health Care,56.27,22.51,1.9089824,0.26,64.6,42.28,102121042306,5744000000,"
    "3.7404804,3.19,http://www.sec.gov/cgi-bin/browse-edgar?action=getcompany&CIK=ABT,-1.25,3\n"
)
EDGE_CASES = (
    "id,Name,name,Notes,Größe,名前,Active\n"
    '1,"Smith, John","a ""quoted"" word","line one\nline two",1.80,太郎,true\n'
    "2,  padded  ,N/A,null,1.75,花子,false\n"
    "3,None,NULL,,1.9,,TRUE\n"
)


@pytest.mark.parametrize(
    ("name", "text"),
    [("countries", COUNTRIES), ("fips", FIPS), ("financials", FINANCIALS), ("edge_cases", EDGE_CASES)],
)
def test_a_public_file_loads_whole_and_intact_through_its_drafted_contract(pipeline, name, text):
    data = text.encode("utf-8")
    contract, receipt, drafted = draft_and_load(pipeline, data, name)
    assert receipt.status == "loaded", (receipt.reason, receipt.message, drafted)
    assert receipt.rows_rejected == 0
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert_round_trip(pipeline, contract, rows[0], rows[1:])


def test_a_one_column_export_with_empty_cells_loads_every_cell(pipeline):
    """A spreadsheet saves a one-column sheet's empty cells as empty lines. Each one between values is a
    row (a NULL, as COPY reads it); only the line breaks after the last value end the file."""
    data = b"zip_code\r\n01001\r\n\r\n02134\r\n\r\n\r\n99501\r\n\r\n"
    contract, receipt, drafted = draft_and_load(pipeline, data, "zips")
    assert receipt.status == "loaded", (receipt.reason, receipt.message, drafted)
    assert (receipt.rows_loaded, receipt.rows_rejected) == (6, 0)
    assert contract.columns[0].type == "text" and not contract.columns[0].required
    assert_round_trip(pipeline, contract, ["zip_code"], [["01001"], [""], ["02134"], [""], [""], ["99501"]])


def test_timestamps_finer_than_microseconds_stay_text_and_come_back_as_written(pipeline):
    # A log export with nanoseconds: timestamptz would keep 10:00:00.123456 of 10:00:00.123456789.
    header = ["event_id", "logged_at", "received_at"]
    rows = [
        ["1", "2024-05-01T10:00:00.123456789Z", "2024-05-01T10:00:00.123456Z"],
        ["2", "2024-05-01T10:00:01.000000001Z", "2024-05-01T10:00:01.5+02:00"],
        ["3", "2024-05-01T10:00:02Z", "2024-05-01T10:00:02.000000000Z"],
    ]
    contract, receipt, drafted = draft_and_load(pipeline, render(header, rows), "log_events")
    assert receipt.status == "loaded", (receipt.reason, receipt.message, drafted)
    types = {c.name: c.type for c in contract.columns}
    assert types == {"event_id": "integer", "logged_at": "text", "received_at": "timestamptz"}
    assert_round_trip(pipeline, contract, header, rows)
    assert pipeline.query("SELECT logged_at FROM log_events ORDER BY event_id")[0] == {
        "logged_at": "2024-05-01T10:00:00.123456789Z"
    }


def test_local_times_of_an_export_load_as_written_whatever_the_readers_zone(pipeline):
    # A spreadsheet's times carry no offset. Drafted as timestamptz they were taken as UTC: a reader in
    # Paris saw 14:45 for the 13:45 of the file. They are a timestamp now; times with an offset are instants
    # (timestamptz), and a column mixing both stays text, with a note.
    header = ["ticket", "opened_at", "sent_at", "mixed_at"]
    rows = [
        ["1", "2024-01-05 13:45", "2024-01-05T13:45:00+01:00", "2024-01-05T13:45:00Z"],
        ["2", "2024-07-01 08:05:30.5", "2024-07-01T08:05:30Z", "2024-07-01 08:05:30"],
    ]
    contract, receipt, drafted = draft_and_load(pipeline, render(header, rows), "tickets")
    assert receipt.status == "loaded", (receipt.reason, receipt.message, drafted)
    types = {c.name: c.type for c in contract.columns}
    assert types == {"ticket": "integer", "opened_at": "timestamp", "sent_at": "timestamptz", "mixed_at": "text"}
    assert "times with a UTC offset and times without one" in drafted
    assert_round_trip(pipeline, contract, header, rows)
    with psycopg.connect(pipeline.database_url) as conn:
        conn.execute("SET TimeZone = 'Europe/Paris'")
        shown = conn.execute("SELECT opened_at::text, sent_at::text FROM tickets ORDER BY ticket").fetchall()
    assert shown == [
        ("2024-01-05 13:45:00", "2024-01-05 13:45:00+01"),
        ("2024-07-01 08:05:30.5", "2024-07-01 10:05:30+02"),
    ]


WORLD_BANK = (
    '"Data Source","World Development Indicators",\n'
    "\n"
    '"Last Updated Date","2024-06-28",\n'
    "\n"
    '"Country Name","Country Code","Indicator Name","Indicator Code","1960","1961","2023",\n'
    '"Aruba","ABW","GDP (current US$)","NY.GDP.MKTP.CD","","","3648573136.31285",\n'
    '"Africa Eastern and Southern","AFE","GDP (current US$)","NY.GDP.MKTP.CD","21125015452.2026","21616228139.1967",'
    '"1236163044999.27",\n'
    '"Namibia","NAM","GDP (current US$)","NY.GDP.MKTP.CD","","","12351025877.4055",\n'
)
ANALYTICS = (
    "# ----------------------------------------\n"
    "# All Web Site Data\n"
    "# Audience Overview\n"
    "# 20240101-20240131\n"
    "# ----------------------------------------\n"
    "\n"
    "Day Index,Users\n"
    "1/1/24,10\n"
    "1/2/24,12\n"
    '1/3/24,"1,203"\n'
)


RAGGED = (  # statsmodels' arima212_forecast.csv: rows leave out their empty fields at the end
    "dates, cpi, predict, stderr, conf1, conf2\n"
    "1950:1, 28.980,,,,\n"
    "1950:2, 29.150, 29.848,,\n"
    "1950:3, 29.350, 29.751\n"
    "2009:3, 214.6, 215.1, 0.87, 213.4, 216.8\n"
)
SHEET = (  # a spreadsheet's export (data.gov, csvkit's examples): an empty row, a title row, both padded
    ",,,,\r\n"
    "Number of Beneficiaries Who Received VA Education Benefits By State During FY 2010,,,,\r\n"
    "State Name,State Abbreviation,Post-9/11 GI Bill,Montgomery GI Bill,Total\r\n"
    'ALABAMA,AL,"6,211",1320,"7,531"\r\n'
    "ALASKA,AK,825,176,1001\r\n"
    "ARIZONA,AZ,,,\r\n"
)
TINY_RAGGED = "a,b,c\n1\n4,5,6\n"  # astropy's simple_csv_missing.csv: its only whole row is its last
BLS = (  # a Bureau of Labor Statistics download: a title block, and a header that ends with a delimiter
    "Series Id:           LNS14000000Q\n"
    "\n"
    "Seasonally Adjusted\n"
    "Series title:        (Seas) Unemployment Rate\n"
    "\n"
    "\n"
    "Series id,Year,Period,Value,\n"
    "LNS14000000Q,1959,Q01,5.8\n"
    "LNS14000000Q,1959,Q02,5.1\n"
    "LNS14000000Q,1959,Q03,5.3\n"
)


@pytest.mark.parametrize(
    ("text", "skipped", "padded"),
    [
        (WORLD_BANK, 4, False),
        (ANALYTICS, 6, False),
        (SHEET, 2, False),
        (RAGGED, 0, True),
        (TINY_RAGGED, 0, True),
        (BLS, 6, True),
    ],
    ids=["world_bank", "analytics", "sheet", "ragged", "tiny_ragged", "bls"],
)
def test_a_download_with_a_title_block_or_ragged_rows_loads_its_table_intact(pipeline, text, skipped, padded):
    # The title block was read as the header: the draft named columns after "Data Source", and the load
    # rejected every row (field_count). The draft now says skip_lines, and the loader skips those lines.
    # A spreadsheet's empty row (",,,,") was taken for the header: columns column_1 to column_5, every
    # one text, the title and the header loaded as rows. Its title rows are a title block too.
    # Rows narrower than the header were field_count errors too: the draft now says null_padding. The drafter
    # left the sample's last record out (a sample may end mid-row) even where the text ends with its line, so
    # a small file whose only whole row was its last got no null_padding and rejected half its rows.
    contract, receipt, drafted = draft_and_load(pipeline, text.encode(), f"downloads_{skipped}_{int(padded)}")
    assert (contract.skip_lines, contract.null_padding) == (skipped, padded), drafted
    assert receipt.status == "loaded" and receipt.rows_rejected == 0, (receipt.reason, receipt.message, drafted)
    records = list(csv.reader(io.StringIO(text.split("\n", skipped)[-1], newline="")))
    header, rows = records[0], [r + [""] * (len(records[0]) - len(r)) for r in records[1:] if r]
    assert receipt.rows_loaded == len(rows)
    assert_round_trip(pipeline, contract, header, rows)


def test_rows_wider_than_their_header_by_one_field_draft_a_note_saying_why():
    r_export = draft_contract(b'"Weight","Feed"\n"1",26.5,NA\n"2",27.6,5.2\n', "dietox")  # R's row names
    assert "first field has no name (row names" in r_export and "null_padding" not in r_export
    trailing = draft_contract(b"a,b\n1,x,\n2,y,\n", "trailing")
    assert "end with a delimiter the header does not" in trailing
    note = draft_contract(b"Source: a survey, 2020, all rights\n1,2\n3,4\n", "note")  # no row as wide
    assert "null_padding" not in note


def test_a_tsv_whose_quotes_are_characters_loads_every_title_as_written(pipeline):
    # IMDb's title.basics.tsv: quotes are characters, \\N is NULL. Read as CSV, "Weird Al" Yankovic was
    # malformed and the draft was refused; the draft now says quoting = "none", and \\N is a NULL in the
    # number columns (a title could be "\\N" for all the drafter knows: text keeps it).
    text = (
        "tconst\ttitleType\tprimaryTitle\tisAdult\tstartYear\truntimeMinutes\tgenres\n"
        "tt0000001\tshort\tCarmencita\t0\t1894\t1\tDocumentary,Short\n"
        'tt0000002\tmovie\tThe "Best" Film\t0\t\\N\t\\N\t\\N\n'
        'tt0000003\ttvSpecial\t"Weird Al" Yankovic: The Ultimate Video Collection\t0\t2003\t85\tComedy,Music\n'
        'tt0000004\tshort\t"\t0\t1892\t12\tAnimation\n'
    )
    contract, receipt, drafted = draft_and_load(pipeline, text.encode(), "title_basics")
    assert receipt.status == "loaded", (receipt.reason, receipt.message, drafted)
    assert contract.quoting == "none" and 'quoting = "none"' in drafted
    types = {c.name: (c.type, contract.nulls(c)) for c in contract.columns}
    assert types["startyear"] == ("integer", ("", "\\N")) and types["genres"][0] == "text"
    records = [line.split("\t") for line in text.splitlines()]
    assert_round_trip(pipeline, contract, records[0], records[1:])


def test_a_file_wider_than_a_table_gets_no_draft_and_a_file_without_a_header_a_warning():
    wide = (",".join(f"c{i}" for i in range(2000)) + "\n" + ",".join("1" * 2000) + "\n").encode()
    with pytest.raises(FileRejected) as info:
        draft_contract(wide, "wide")
    assert info.value.reason == "too_many_columns" and "2,000 columns" in info.value.message
    # No header line: its first row became the header (and was lost from every load). The draft says so.
    drafted = draft_contract(b"1,Ada,2024-01-05\n2,Bob,2024-01-06\n3,Cy,2024-01-07\n", "people")
    assert "# The header's cells 1, 2024-01-05 read as values of their columns:" in drafted
    assert "read as values" not in draft_contract(b"id,name,joined\n1,Ada,2024-01-05\n", "people")


def test_files_concatenated_with_their_headers_draft_the_types_of_their_rows_and_say_where(pipeline):
    # The header again in the middle made "id" a text column, and the load took "id,name" for a row.
    data = b"id,name\n1,Ada\n2,Bob\nid,name\n3,Cy\n"
    contract, receipt, drafted = draft_and_load(pipeline, data, "people_all")
    assert [c.type for c in contract.columns] == ["integer", "text"]
    assert "# Line(s) 4 repeat the header" in drafted
    # the draft tolerates that one line (max_rejected_share), which goes to the errors report: the rest loads
    assert (receipt.status, receipt.rows_loaded, receipt.rows_rejected) == ("loaded", 3, 1)
    assert receipt.errors[0]["rule"] == "repeated_header" and receipt.errors[0]["line"] == 4


def test_a_header_narrower_than_rows_ending_with_a_delimiter_stays_the_header():
    # Rows with a trailing delimiter are one field wider than the header: no title block, and a data row
    # must never be taken for the header (it would be lost). The draft keeps line 1 and says what it saw.
    drafted = draft_contract(b"id,name\n1,Ada,\n2,Bob,\n3,Cy,\n", "trailing")
    assert "skip_lines =" not in drafted
    assert "# The header has 2 fields and most rows 3" in drafted
    assert 'name = "id"' in drafted and 'name = "name"' in drafted
    # nor is a header that names only its first column a spreadsheet's title row (those are words)
    only_first = draft_contract(b"id,,\n1,a,b\n2,c,d\n3,e,f\n", "only_first")
    assert "skip_lines =" not in only_first and 'name = "id"' in only_first


def test_a_last_line_below_a_blank_line_is_no_header_of_nothing():
    # frictionless' capital-invalid.csv: rows of uneven width, a blank line, one more line. That line "headed"
    # a table of no rows, so the draft skipped every line above it (skip_lines = 11) and loaded nothing.
    text = b"id,name,country\n" + b"".join(b"%d,City %d,Country\n" % (i, i) for i in range(7))
    drafted = draft_contract(text + b"8,Warsaw\n9,Rome,Italy,EU\n\nx,Tokio,Japan,review\n", "capitals")
    assert "skip_lines =" not in drafted and 'name = "country"' in drafted


def test_an_export_with_a_delimiter_hint_line_loads_its_header_and_rows_intact(pipeline):
    # Some exports begin with "sep=;" for spreadsheets; read as a header, it named one odd column and the
    # real header was loaded as a row.
    rows = [["00042", "Café moulu", "4,50", "31/12/2024"], ["00043", "Thé; vert", "12,00", ""]]
    text = 'sep=;\r\nRéf;Libellé;Prix (€);Date\r\n00042;Café moulu;4,50;31/12/2024\r\n00043;"Thé; vert";12,00;\r\n'
    data = b"\xef\xbb\xbf" + text.encode()
    contract, receipt, drafted = draft_and_load(pipeline, data, "hinted")
    assert receipt.status == "loaded" and receipt.rows_loaded == 2, (receipt.reason, receipt.message, drafted)
    assert [c.name for c in contract.columns] == ["ref", "libelle", "prix", "date"]
    assert_round_trip(pipeline, contract, ["Réf", "Libellé", "Prix (€)", "Date"], rows)


def test_a_european_export_drafts_its_decimal_commas_as_numbers_and_thousands_stay_text(pipeline):
    # "4,50" stayed text: right, but no number a user could sum. Where the delimiter leaves the comma free and
    # some value has other than three digits after it, the column is numeric with decimal = ",".
    text = "Réf;Prix (€);Poids;Milliers\r\nA;4,50;0,25;1,500\r\nB;-0,5;12;2,000\r\nC;12;2,5;3,000\r\n"
    contract, receipt, drafted = draft_and_load(pipeline, b"\xef\xbb\xbf" + text.encode(), "tarifs")
    assert receipt.status == "loaded", (receipt.reason, receipt.message, drafted)
    kinds = {c.name: (c.type, c.decimal) for c in contract.columns}
    assert kinds == {
        "ref": ("text", "."),
        "prix": ("numeric", ","),
        "poids": ("numeric", ","),
        "milliers": ("text", "."),
    }
    assert pipeline.query("SELECT sum(prix) AS total FROM tarifs")[0]["total"] == Decimal("16.00")
    records = [line.split(";") for line in text.splitlines()]
    assert_round_trip(pipeline, contract, records[0], records[1:])
    # in a comma-separated file a quoted "1,5" is no decimal comma the drafter may assume
    us = draft_contract(b'sku,price\nA,"4,50"\nB,"1,5"\n', "prices_us")
    assert 'decimal = ","' not in us


def test_a_bounding_box_file_loads_and_upserts_though_its_headers_are_system_column_names(pipeline):
    # xmin, xmax, ctid: CREATE TABLE refused the drafted columns ("conflicts with a system column name"),
    # so the file failed, was retried and dead-lettered.
    header = ["id", "name", "xmin", "ymin", "xmax", "ymax", "ctid"]
    rows = [
        ["1", "Lisbon", "-9.23", "38.69", "-9.09", "38.80", "PT"],
        ["2", "Oslo", "10.62", "59.81", "10.92", "60.00", "NO"],
    ]
    contract, receipt, drafted = draft_and_load(pipeline, render(header, rows), "places")
    assert receipt.status == "loaded", (receipt.reason, receipt.message, drafted)
    assert [c.name for c in contract.columns] == ["id", "name", "_xmin", "ymin", "_xmax", "ymax", "_ctid"]
    assert_round_trip(pipeline, contract, header, rows)
    rows[0][2] = "-9.24"  # an upsert over the loaded rows goes through the MERGE, which names every column
    pipeline.upload("incoming/places_2.csv", render(header, rows))
    assert ingest_object(pipeline.bucket, "incoming/places_2.csv", pipeline.deps).status == "loaded"
    assert pipeline.query('SELECT id, "_xmin"::text AS x, "_ctid" AS c FROM places ORDER BY id') == [
        {"id": 1, "x": "-9.24", "c": "PT"},
        {"id": 2, "x": "10.62", "c": "NO"},
    ]


def test_slashed_dates_become_dates_only_where_the_sample_proves_day_or_month_first(pipeline):
    # "01/02/2024" is the 1st of February or the 2nd of January: the draft took month first, and a
    # European file loaded its dates wrong, silently. Now one order must fail on some value of the sample.
    header = ["id", "day_first", "month_first", "either"]
    rows = [["1", "01/02/2024", "02/01/2024", "01/02/2024"], ["2", "23/03/2024", "03/23/2024", "05/06/2024"]]
    contract, receipt, drafted = draft_and_load(pipeline, render(header, rows), "slashed")
    assert receipt.status == "loaded", (receipt.reason, receipt.message, drafted)
    drafts = {c.name: (c.type, c.formats) for c in contract.columns}
    assert drafts["day_first"] == ("date", ("DD/MM/YYYY",)) and drafts["month_first"] == ("date", ("MM/DD/YYYY",))
    assert drafts["either"] == ("text", ()) and 'set type = "date" and formats = ["DD/MM/YYYY"]' in drafted
    assert pipeline.query("SELECT day_first, month_first, either FROM slashed WHERE id = 1") == [
        {"day_first": date(2024, 2, 1), "month_first": date(2024, 2, 1), "either": "01/02/2024"}
    ]
    assert_round_trip(pipeline, contract, header, rows)


def test_a_column_is_boolean_only_where_the_sample_says_both_true_and_false(pipeline):
    # A sample of one sex ("F", "F") was drafted boolean and loaded false: a meaning the file never had.
    header = ["id", "sex", "smoker", "consent"]
    rows = [["1", "F", "Y", "yes"], ["2", "F", "N", "yes"]]
    contract, receipt, drafted = draft_and_load(pipeline, render(header, rows), "patients")
    assert receipt.status == "loaded", (receipt.reason, receipt.message, drafted)
    assert {c.name: c.type for c in contract.columns} == {
        "id": "integer",
        "sex": "text",
        "smoker": "boolean",
        "consent": "text",
    }
    assert pipeline.query("SELECT sex, smoker, consent FROM patients ORDER BY id") == [
        {"sex": "F", "smoker": True, "consent": "yes"},
        {"sex": "F", "smoker": False, "consent": "yes"},
    ]


def test_a_header_written_twice_gives_each_column_a_name_and_reads_it_by_position(pipeline):
    # The loader rejected such a file (it could not tell the columns apart), and so did the drafter: now each
    # column has a name of its own, the header as its alias, and its position in the file.
    data = b"id,Value,Value,Note\r\n1,a,b,c\r\n2,d,e,f\r\n"
    contract, receipt, drafted = draft_and_load(pipeline, data, "twice")
    assert receipt.status == "loaded", (receipt.message, drafted)
    assert [(c.name, c.position) for c in contract.columns] == [
        ("id", None),
        ("value", 2),
        ("value_2", 3),
        ("note", None),
    ]
    assert_round_trip(
        pipeline, contract, ["id", "Value", "Value", "Note"], [["1", "a", "b", "c"], ["2", "d", "e", "f"]]
    )
    import tomllib

    thrice = parse_contract("thrice", tomllib.loads(draft_contract(b"\xef\xbb\xbfa,a,b,a\n1,2,3,4\n", "thrice")))
    assert [c.position for c in thrice.columns] == [1, 2, None, 4]  # a BOM before the first is no difference

    from ingest.validation import plan_header

    cases = parse_contract("cases", tomllib.loads(draft_contract(b"Value,value, Value\n1,2,3\n", "cases")))
    assert plan_header(cases, ["Value", "value", " Value"]).positions == (0, 1, 2)  # these it tells apart


def test_a_file_of_numbers_without_a_header_is_refused_briefly_saying_so():
    # statsmodels' result files have no header: their first row (residuals) repeated the same numbers in
    # hundreds of columns, and the refusal listed every one of them (140,000 characters).
    row = ",".join(["0.00", "1.00"] * 500)
    with pytest.raises(FileRejected) as refused:
        draft_contract(f"{row}\n{row}\n".encode(), "residuals")
    message = refused.value.message
    assert refused.value.reason == "duplicate_header" and len(message) < 600
    assert "'0.00' (columns 1, 3, 5, 7, 9, … (500 in all))" in message
    assert "a row of numbers" in message and "add one naming its columns" in message
    # names repeated in a header of words are a header: each column is read by its position
    drafted = draft_contract(",".join(f"c{i},c{i}" for i in range(8)).encode() + b"\n", "pairs")
    assert "position = 10  # the header repeats 'c4'" in drafted


def test_codes_stay_text_and_na_stays_namibia(pipeline):
    contract, _receipt, _ = draft_and_load(pipeline, COUNTRIES.encode(), "countries")
    types = {c.name: c.type for c in contract.columns}
    assert types["iso_alpha2_code"] == "text" and types["m49_code"] == "text"  # "004" keeps its zeros
    assert pipeline.query("SELECT count(*) AS n FROM countries WHERE continent_code = 'NA'")[0]["n"] == 2
    assert pipeline.query("SELECT iso_alpha2_code FROM countries WHERE country_or_area = 'Namibia'") == [
        {"iso_alpha2_code": "NA"}
    ]
    contract, _receipt, drafted = draft_and_load(pipeline, FINANCIALS.encode(), "financials")
    growth = next(c for c in contract.columns if c.name == "growth_pct")
    assert growth.type == "numeric" and growth.null_values == ("NA",)  # NA stands for a missing number here
    assert 'aliases = ["Price/Earnings"]' in drafted and 'name = "_52_week_low"' in drafted


def test_the_same_bytes_load_into_each_table_once(pipeline):
    data = render(["id", "label"], [["1", "one"], ["2", "two"]])
    import tomllib

    drafts = {n: parse_contract(n, tomllib.loads(draft_contract(data, n))) for n in ("first", "second")}
    pipeline.deps.contracts = ContractRegistry(drafts.values())
    statuses = []
    for key in ("incoming/first.csv", "incoming/second.csv", "incoming/first_again.csv"):
        pipeline.upload(key, data)
        statuses.append(ingest_object(pipeline.bucket, key, pipeline.deps))
    assert [r.status for r in statuses] == ["loaded", "loaded", "skipped"]
    assert "into table first" in str(statuses[2].message) and statuses[2].table == "first"
    assert pipeline.query("SELECT count(*) AS n FROM second")[0]["n"] == 2


def test_an_existing_ledger_in_public_moves_to_the_pipelines_schema_and_to_per_table_identity_with_its_rows(pipeline):
    from ingest.adapters.postgres import Database

    with psycopg.connect(pipeline.database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE ingest_files (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, md5 VARCHAR(32) "
            "NOT NULL, bucket TEXT NOT NULL, object_key TEXT NOT NULL, contract TEXT, table_name TEXT, status TEXT "
            "NOT NULL, reason TEXT, error TEXT, rows_total BIGINT, rows_valid BIGINT, rows_rejected BIGINT, "
            "rows_loaded BIGINT, size_bytes BIGINT, encoding TEXT, delimiter TEXT, compression TEXT, processed_key "
            "TEXT, errors_key TEXT, request_id TEXT, started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ NOT "
            "NULL DEFAULT now(), duration_ms INTEGER)"
        )
        conn.execute("CREATE UNIQUE INDEX ingest_files_loaded_md5 ON ingest_files (md5) WHERE status = 'loaded'")
        conn.execute(
            "INSERT INTO ingest_files (md5, bucket, object_key, table_name, status, started_at) "
            "VALUES ('a', 'b', 'k1', 'users', 'loaded', now()), ('a', 'b', 'k2', 'users', 'skipped', now())"
        )
    database = Database(pipeline.database_url)
    database.ensure_tables()
    database.dispose()
    indexes = {
        r["indexname"]
        for r in pipeline.query(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'ingest_files' AND schemaname = 'ingest_ledger'"
        )
    }
    assert pipeline.query("SELECT to_regclass('public.ingest_files') AS t")[0]["t"] is None  # moved, not copied
    assert "ingest_files_loaded_table_md5" in indexes and "ingest_files_loaded_md5" not in indexes
    assert [
        r["object_key"] for r in pipeline.query("SELECT object_key FROM ingest_ledger.ingest_files ORDER BY id")
    ] == [
        "k1",
        "k2",
    ]


def test_drafted_keys_never_collide_with_existing_contracts():
    import tomllib

    data = render(["id", "label"], [["1", "one"]])
    orders = parse_contract("orders", tomllib.loads(draft_contract(data, "orders")))
    archive = parse_contract("orders_archive", tomllib.loads(draft_contract(data, "orders_archive", existing=[orders])))
    registry = ContractRegistry([orders, archive])
    for key in ("incoming/orders_archive/2024.csv", "incoming/orders.csv", "incoming/orders_2024.csv"):
        assert len(registry.match(key)) == 1, key
    # and the other way round: a prefix drafted after the longer name leaves the longer name's keys alone
    archive = parse_contract("orders_archive", tomllib.loads(draft_contract(data, "orders_archive")))
    orders = parse_contract("orders", tomllib.loads(draft_contract(data, "orders", existing=[archive])))
    registry = ContractRegistry([orders, archive])
    for key in ("incoming/orders_archive.csv", "incoming/orders_archive_1.csv", "incoming/orders.csv"):
        assert len(registry.match(key)) == 1, key


# --- arbitrary files ----------------------------------------------------------------------------------

# No ; | or tab: the delimiter is sniffed among , ; tab | and these files are comma-separated.
TEXT = st.lists(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=";|\t")
    | st.sampled_from(['"', ",", " ", "\n", "\r\n", "NA", "N/A", "null", "é", "ß", "(", ")", "%", "#", "/", "007"]),
    max_size=6,
).map("".join)
HEADER = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=";|\t\r\n")
    | st.sampled_from(["(", ")", "/", ".", "%", "#", " ", "Ä", "1", "-"]),
    max_size=20,
)
COLUMN_KINDS = {
    "text": TEXT,
    "codes": st.from_regex(r"\A0[0-9]{1,5}\Z"),
    "integers": st.integers(-(2**40), 2**40).map(str),
    "decimals": st.tuples(st.integers(-(10**6), 10**6), st.integers(0, 99)).map(lambda t: f"{t[0]}.{t[1]:02d}"),
    "numbers_or_na": st.one_of(st.integers(-999, 999).map(str), st.just("NA")),
    "dates": st.dates(date(1900, 1, 1), date(2100, 12, 31)).map(date.isoformat),
    "booleans": st.sampled_from(["true", "false", "yes", "no", "TRUE"]),
    "timestamps": st.tuples(
        st.datetimes(datetime(1900, 1, 1), datetime(2100, 12, 31)),
        st.integers(0, 10**9 - 1),
        st.integers(0, 9),
        st.sampled_from(["", "Z", "+05:30", "-01:00"]),
    ).map(lambda t: t[0].strftime("%Y-%m-%dT%H:%M:%S") + (f".{t[1]:09d}"[: t[2] + 1] if t[2] else "") + t[3]),
}


@st.composite
def files(draw: Any) -> tuple[list[str], list[list[str]]]:
    width = draw(st.integers(1, 5))
    names = HEADER | st.sampled_from(["xmin", "CTID", "tableoid", "cmax"])  # PostgreSQL's system column names
    names = names if width > 1 else names.filter(str.strip)  # a blank line alone is no header
    header = draw(st.lists(names, min_size=width, max_size=width, unique=True))
    kinds = [draw(st.sampled_from(sorted(COLUMN_KINDS))) for _ in header]
    height = draw(st.integers(1, 6))
    cell = {k: st.one_of(COLUMN_KINDS[k], st.just("")) if k != "text" else COLUMN_KINDS[k] for k in COLUMN_KINDS}
    rows = [[draw(cell[k]) for k in kinds] for _ in range(height)]
    return header, rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=files(), sample=st.integers(1, 6))
def test_any_file_loads_through_its_own_drafted_contract_with_every_value_intact(pipeline, file, sample):
    # typed from its first ``sample`` rows (all of them, or fewer: then checked and mended against the rest)
    header, rows = file
    data = render(header, rows)
    name = f"t_{uuid.uuid4().hex[:10]}"
    contract, receipt, drafted = draft_and_load(pipeline, data, name, rows=sample)
    assert receipt.status == "loaded", (receipt.reason, receipt.message, drafted)
    assert receipt.rows_rejected == 0 and receipt.rows_loaded == len(rows)
    assert_round_trip(pipeline, contract, header, rows)


#: What rows past a draft's sample hold that its sample may not: whitespace alone, or at a cell's edge.
STRAY_WHITESPACE = st.sampled_from([" ", "  ", "\t "])
TITLE = st.text(
    st.characters(whitelist_categories=("Lu", "Ll", "Nd")) | st.sampled_from(" :-."), min_size=1, max_size=30
)


@st.composite
def untidy_files(draw: Any) -> tuple[list[str], list[list[str]], list[str]]:
    """A file with, perhaps, title lines above its header (one field each), header names written more than once,
    and cells of whitespace alone or with whitespace at an edge (in any row, past the sample too)."""
    width = draw(st.integers(2, 5))
    names = HEADER.filter(lambda h: h.strip() and h.strip() == h)
    header = draw(st.lists(names, min_size=width, max_size=width))
    if draw(st.booleans()):  # a name written twice
        header[draw(st.integers(1, width - 1))] = header[0]
    kinds = [draw(st.sampled_from(sorted(COLUMN_KINDS))) for _ in header]
    untidy = {
        k: st.one_of(
            COLUMN_KINDS[k], st.just(""), STRAY_WHITESPACE, st.tuples(STRAY_WHITESPACE, COLUMN_KINDS[k]).map("".join)
        )
        for k in COLUMN_KINDS
    }
    rows = [[draw(untidy[k]) for k in kinds] for _ in range(draw(st.integers(2, 8)))]
    titles = draw(st.lists(TITLE.filter(lambda t: t.strip() and t.strip() == t), max_size=3))
    return header, rows, titles


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=untidy_files(), sample=st.integers(1, 4))
def test_an_untidy_file_loads_through_its_draft_and_every_change_is_written_in_it(pipeline, file, sample):
    """Title lines above the header, names written twice, whitespace alone or at a cell's edge in rows past the
    sample: the draft loads every row, each cell as written or as the draft openly says (a trimmed number, a
    cell of whitespace alone read as NULL with the count of such cells)."""
    from ingest.drafting import _all_numbers

    header, rows, titles = file
    if _all_numbers(header):
        return  # a header of numbers is no header (the drafter says so): not this test's subject
    data = "".join(f"{t}\n" for t in titles).encode() + render(header, rows)
    name = f"t_{uuid.uuid4().hex[:10]}"
    contract, receipt, drafted = draft_and_load(pipeline, data, name, rows=sample)
    assert receipt.status == "loaded", (receipt.reason, receipt.message, drafted)
    assert receipt.rows_rejected == 0 and receipt.rows_loaded == len(rows), drafted
    assert contract.skip_lines == len(titles), drafted
    assert_round_trip(pipeline, contract, header, rows)
    for i, col in enumerate(contract.columns):  # what trimming changes is written down
        blanks = sum(1 for row in rows if row[i] and not row[i].strip())
        if col.type != "text" and blanks:
            assert f"{blanks} cell" in drafted and "of whitespace alone" in drafted, drafted
        if col.type == "text" and any(row[i] != row[i].strip() for row in rows):
            assert not col.trim, drafted


@pytest.mark.parametrize(
    ("filename", "suffix"),
    [
        ("title.basics.tsv.gz", ".tsv"),
        ("export.csv", ".csv"),
        ("EXPORT.TXT", ".TXT"),
        ("dump", ".csv"),
        ("a.gz", ".csv"),
    ],
)
def test_drafted_keys_end_like_the_sample_file(filename, suffix):
    # IMDb's title.basics.tsv.gz was drafted with keys ending .csv: uploaded as it came, no contract claimed it.
    assert key_suffix(filename) == suffix
    drafted = draft_contract(b"tconst,title\ntt1,Carmencita\n", "title_basics", suffix=key_suffix(filename))
    keys = tomllib.loads(drafted)["keys"]
    assert keys == [
        f"incoming/title_basics{suffix}",
        f"incoming/title_basics_*{suffix}",
        f"incoming/title_basics/*{suffix}",
    ]
    contract = parse_contract("title_basics", tomllib.loads(drafted))
    assert contract.claims(f"incoming/title_basics/{filename}") == (filename not in ("dump", "a.gz"))


def test_a_file_of_numbers_without_a_header_line_is_drafted_with_a_warning_not_as_concatenated_files():
    # statsmodels' medparlogresids.csv: no header line, and its first row recurs. The draft said "files
    # concatenated with their headers?" and nothing of the missing header (its columns were text).
    row = "5.185370000000000257e-02,4.861850000000000199e-02\n"
    drafted = draft_contract((row + "1.2e-01,3.4e-01\n" + row).encode(), "residuals")
    assert "Line(s) 3 repeat the first line, a row of numbers" in drafted and "concatenated" not in drafted
    assert "should the file have no header line" in drafted
    assert "row of numbers" not in draft_contract(b"id,name\n1,a\nid,name\n", "words")


def test_a_column_with_negative_zeros_stays_text_and_keeps_their_sign(pipeline):
    # A rounded table's -0.00 ("a small negative") came back as 0.00 from a drafted numeric column.
    text = "term,estimate\nx1,-0.00\nx2,1.25\nx3,-0.5\n"
    contract, receipt, drafted = draft_and_load(pipeline, text.encode(), "estimates")
    assert contract.columns[1].type == "text" and receipt.status == "loaded", drafted
    rows = list(csv.reader(io.StringIO(text)))
    assert_round_trip(pipeline, contract, rows[0], rows[1:])
    assert (
        draft_and_load(pipeline, b"term,estimate\nx1,-0.01\nx2,1.25\n", "estimates_2")[0].columns[1].type == "numeric"
    )


def test_rows_past_the_sample_mend_the_draft_so_that_it_loads_its_whole_file(pipeline):
    # The draft was typed from the first rows only: a NULL word, a larger integer, a word in a number
    # column, an empty cell or a repeated key further down rejected the very file it was drafted from
    # (countymurders.csv: Stata's "." at line 30,034; frictionless' table-10MB.csv: a key repeated at 37,868),
    # and a ZIP code with its leading zero (a file sorted by state) loaded silently without it, a local time
    # among instants as UTC.
    header = ["id", "code", "count", "rate", "big", "when", "zip", "at"]
    rows = [
        [str(i), f"c{i}", str(i % 7), f"{i}.5", str(i), "2024-01-05", str(35001 + i % 5), f"2024-01-05T10:{i:02d}Z"]
        for i in range(1, 41)
    ]
    rows += [
        # a NULL word, and Stata's missing number: null_values
        ["41", "c41", "NA", "1.5", "5", "2024-01-06", "35001", "2024-01-05T10:59Z"],
        ["42", "c42", "3", ".", "6", "2024-01-07", "35001", "2024-01-05T10:59Z"],
        # past a PostgreSQL integer: bigint
        ["43", "c43", "4", "2.5", "3000000000", "2024-01-08", "35001", "2024-01-05T10:59Z"],
        # an empty code: optional, and no key; a word among dates: text
        ["44", "", "5", "3.5", "7", "soon", "35001", "2024-01-05T10:59Z"],
        # id repeats line 2's: no key
        ["1", "c45", "6", "4.5", "8", "2024-01-09", "35001", "2024-01-05T10:59Z"],
        # a ZIP code an integer would keep as 6103, a local time a timestamptz would take as UTC: text
        ["46", "c46", "6", "4.5", "8", "2024-01-09", "06103", "2024-01-05T11:00"],
    ]
    data = render(header, rows)
    text = draft_contract(data, "past_the_sample", rows=30)
    for said in (
        "line 42 holds 'NA' in count, no integer: read as NULL",
        "line 43 holds '.' in rate, no numeric: read as NULL",
        "line 44 holds '3000000000' in big, no integer: drafted as bigint",
        "line 45 leaves code empty: code is not required",
        "line 45 holds 'soon' in when, no date: drafted as text",
        "line 46 repeats a id of an earlier row: id is no key",  # every key candidate at once
        "line 47 holds '06103' in zip, which as integer would not load as written: drafted as text",
        "line 47 holds '2024-01-05T11:00' in at, which as timestamptz would not load as written: drafted as text",
    ):
        assert f"# Past the sample, {said}" in text, text
    contract = parse_contract("past_the_sample", tomllib.loads(text))
    assert contract.load_mode == "append" and not contract.primary_key, text  # code is optional now: no key
    pipeline.deps.contracts = ContractRegistry([contract])
    pipeline.upload("incoming/past_the_sample.csv", data)
    receipt = ingest_object(pipeline.bucket, "incoming/past_the_sample.csv", pipeline.deps)
    assert receipt.status == "loaded" and receipt.rows_rejected == 0, (receipt.reason, receipt.message, text)
    assert_round_trip(pipeline, contract, header, rows)


def test_a_row_past_the_sample_that_cannot_be_mended_does_not_stop_the_others_being_mended():
    # A wide row is reported, not mended. The check stopped at the first round that found one, so a problem
    # that the loader's report had no room for (it keeps 10,000 lines) was never seen: here the word among
    # the dates at the end, behind 12,000 words in "b". A word in "n" there is seen among its values.
    rows = [f"{i},{i},2024-01-05,{i}" for i in range(1, 6)] + ["6,6,2024-01-05,6,extra"]
    rows += [f"{i},x{i},2024-01-05,{i}" for i in range(7, 12_007)] + ["12007,1,soon,many"]
    text = draft_contract(("a,b,d,n\n" + "\n".join(rows) + "\n").encode(), "mixed", rows=5)
    assert "# Past the sample, line 7 breaks the rule field_count (6,6,2024-01-05,6,extra)" in text, text
    assert "# Past the sample, line 8 holds 'x7' in b, no integer: drafted as text." in text, text
    assert "# Past the sample, line 12008 holds 'soon' in d, no date: drafted as text." in text, text
    assert "# Past the sample, line 12008 holds 'many' in n, no integer: drafted as text." in text, text
    assert [c.type for c in parse_contract("mixed", tomllib.loads(text)).columns] == ["integer", "text", "text", "text"]


def test_a_header_of_fiscal_years_is_a_header_not_a_row_of_numbers():
    # float() reads "2019_2020" as 20192020 (Python's underscores): the draft warned of a missing header line
    drafted = draft_contract(b"2019_2020,2020_2021\n5,6\n7,8\n", "fiscal")
    assert "no header line" not in drafted and 'aliases = ["2019_2020"]' in drafted
