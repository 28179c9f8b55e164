import pytest

from ingest.contract import parse_contract
from ingest.rejection import FileRejected, listing
from ingest.validation import RowValidator, build_coercer, plan_header

USERS_HEADER = ["id", "email", "full_name", "signup_date", "country", "age", "balance", "is_active"]


def coerce(contract, column, raw):
    col = next(c for c in contract.columns if c.name == column)
    return build_coercer(col)(raw)


@pytest.mark.parametrize(
    ("column", "raw", "expected"),
    [
        ("email", "Ada@Example.COM", "ada@example.com"),
        ("full_name", "Ada \t  King", "Ada King"),
        ("signup_date", "2024-01-15", "2024-01-15"),
        ("signup_date", "01/15/2024", "2024-01-15"),
        ("signup_date", "15.01.2024", "2024-01-15"),
        ("country", "gb", "GB"),
        ("age", "+42", "42"),
        ("balance", "0012.50", "12.50"),
        ("balance", "-.5", "-0.5"),
        ("balance", "-0.00", "0.00"),  # PostgreSQL's numeric has no negative zero: the output neither
        ("balance", "-00.0", "0.0"),
        ("balance", "-0.01", "-0.01"),
        ("balance", "9999999999.99", "9999999999.99"),
        ("is_active", "YES", "true"),
        ("is_active", "f", "false"),
        ("is_active", "0", "false"),
    ],
)
def test_users_cells_are_normalized(users, column, raw, expected):
    assert coerce(users, column, raw) == expected


@pytest.mark.parametrize(
    ("column", "raw", "rule"),
    [
        ("email", "no-at-sign", "pattern"),
        ("email", "a@b", "pattern"),
        ("signup_date", "2024-13-01", "type"),
        ("signup_date", "2023-02-29", "type"),
        ("signup_date", "15/01/2024", "type"),
        ("country", "GBR", "pattern"),
        ("age", "151", "max"),
        ("age", "-1", "min"),
        ("age", "4.5", "type"),
        ("id", "99999999999", "type"),  # does not fit a PostgreSQL integer
        ("balance", "1.005", "scale"),
        ("balance", "12345678901.00", "precision"),
        ("balance", "1,5", "type"),
        ("balance", "NaN", "type"),
        ("is_active", "maybe", "type"),
    ],
)
def test_users_bad_cells_name_their_rule(users, column, raw, rule):
    from ingest.validation import CellError

    with pytest.raises(CellError) as info:
        coerce(users, column, raw)
    assert info.value.rule == rule


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-06-01T08:30:00Z", "2024-06-01T08:30:00+00:00"),
        ("2024-06-01 10:30:00+02:00", "2024-06-01T08:30:00+00:00"),
        ("2024-06-01T08:30:00", "2024-06-01T08:30:00+00:00"),  # no offset: UTC
        ("2024-06-01T08:30:00.5-01:00", "2024-06-01T09:30:00.500000+00:00"),
        ("2024-06-01T08:30:00.123456000Z", "2024-06-01T08:30:00.123456+00:00"),  # zeros past µs: exact
    ],
)
def test_timestamps_are_iso8601_and_naive_means_utc(measurements, raw, expected):
    assert coerce(measurements, "measured_at", raw) == expected


@pytest.mark.parametrize("raw", ["2024-06-01", "yesterday", "2024-06-01T25:00:00", "1717230600"])
def test_bad_timestamps(measurements, raw):
    from ingest.validation import CellError

    with pytest.raises(CellError):
        coerce(measurements, "measured_at", raw)


@pytest.mark.parametrize(
    "raw", ["2024-06-01T08:30:00.123456789Z", "2024-06-01 08:30:00.1234567+05:30", "2024-06-01T08:30:00,0000001"]
)
def test_a_timestamp_finer_than_microseconds_is_rejected_not_cut(measurements, raw):
    # Python's fromisoformat drops the digits past the sixth without a word: 10:00:00.123456789 would
    # have been loaded as 10:00:00.123456, a value the file does not hold.
    from ingest.validation import CellError

    with pytest.raises(CellError) as info:
        coerce(measurements, "measured_at", raw)
    assert info.value.rule == "precision" and "microseconds" in info.value.message


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ("-273.15", True),
        ("-273.16", False),
        ("1000", True),
        ("1e3", True),
        ("1000.01", False),
        ("inf", False),
        ("nan", False),
    ],
)
def test_double_ranges(measurements, raw, ok):
    from ingest.validation import CellError

    if ok:
        coerce(measurements, "temperature_c", raw)
    else:
        with pytest.raises(CellError):
            coerce(measurements, "temperature_c", raw)


def test_header_aliases_case_and_order(users):
    plan = plan_header(users, [" E-Mail ", "USER_ID", "Full Name", "is_active"])
    assert plan.positions == (1, 0, 2, -1, -1, -1, -1, 3)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (["id", "email", "email", "full_name"], "duplicate_header"),
        (["id", "email", "e_mail", "full_name"], "duplicate_header"),
        (["id", "email"], "missing_columns"),
        ([*USERS_HEADER, "password"], "unknown_columns"),
        (["1", "ada@example.com", "Ada"], "no_header"),
        (["id", "email", "full_name", 'x"); DROP TABLE users; --'], "unknown_columns"),
    ],
)
def test_schema_problems_reject_the_file(users, header, reason):
    with pytest.raises(FileRejected) as info:
        plan_header(users, header)
    assert info.value.reason == reason


def test_long_lists_in_schema_rejections_show_their_first_items_and_how_many_there_are(users):
    # one helper (rejection.listing) for every list of the kind: "and 5 more" here, "(N in all)" elsewhere
    with pytest.raises(FileRejected) as info:
        plan_header(users, [*USERS_HEADER, *(f"extra_{i}" for i in range(25))])
    assert "'extra_0', 'extra_1'" in info.value.message and "'extra_19', … (25 in all)" in info.value.message
    assert "extra_20" not in info.value.message
    assert (
        listing(["a", "b"]) == "a, b"
        and listing(map(str, range(1200)), 2, "; ", "names") == "0; 1; … (1,200 names in all)"
    )


def test_unknown_columns_can_be_ignored_by_policy():
    contract = parse_contract(
        "t", {"table": "t", "keys": ["k"], "unknown_columns": "ignore", "columns": [{"name": "a", "required": True}]}
    )
    plan = plan_header(contract, ["extra", "a"])
    assert plan.positions == (1,) and plan.ignored == ("extra",)


def test_rows_report_every_problem_with_line_column_rule_and_value(users):
    validate = RowValidator(users, plan_header(users, USERS_HEADER))
    values, errors = validate(7, ["5", "bad", "", "2024-02-30", "usa", "", "", ""])
    assert values is None
    assert [(e.line, e.column, e.rule, e.value) for e in errors] == [
        (7, "email", "pattern", "bad"),
        (7, "full_name", "required", ""),
        (7, "signup_date", "type", "2024-02-30"),
        (7, "country", "pattern", "usa"),
    ]


def test_only_empty_cells_and_declared_tokens_are_null_and_field_count_is_checked(users):
    validate = RowValidator(users, plan_header(users, USERS_HEADER))
    # users.toml declares NA as NULL for age only; elsewhere an empty cell is the only NULL
    values, errors = validate(2, ["1", "a@b.co", "A", "", "", "NA", " ", ""])
    assert errors == [] and values == ["1", "a@b.co", "A", None, None, None, None, None]
    values, errors = validate(2, ["1", "a@b.co", "NA", "", "", "", "N/A", ""])
    assert values is None and [(e.column, e.rule, e.value) for e in errors] == [("balance", "type", "N/A")]
    text = parse_contract("t", {"table": "t", "keys": ["k"], "columns": [{"name": "code"}, {"name": "n"}]})
    values, errors = RowValidator(text, plan_header(text, ["code", "n"]))(2, ["NA", "null"])
    assert values == ["NA", "null"]  # Namibia stays Namibia
    values, errors = validate(3, ["2", "a@b.co"])
    assert values is None and errors[0].rule == "field_count"


def test_duplicate_keys_within_a_file_are_rejected_after_the_first(users):
    validate = RowValidator(users, plan_header(users, ["id", "email", "full_name"]))
    assert validate(2, ["1", "a@b.co", "A"])[1] == []
    assert validate(3, ["2", "x", "B"])[1][0].rule == "pattern"  # invalid rows do not claim their key
    assert validate(4, ["2", "b@b.co", "B"])[1] == []
    _values, errors = validate(5, ["1", "c@b.co", "C"])
    assert errors[0].rule == "duplicate_key" and "line 2" in errors[0].message


def test_a_timestamp_column_keeps_the_time_as_written_and_refuses_an_offset():
    # A spreadsheet's local times: a timestamptz would take 13:45 as UTC, and a reader in Paris would see
    # 14:45. A timestamp column keeps the wall-clock time, and refuses a value that names an instant.
    from ingest.contract import Column
    from ingest.validation import CellError

    coerce_time = build_coercer(Column(name="opened_at", type="timestamp"))
    assert coerce_time("2024-01-05 13:45") == "2024-01-05T13:45:00"
    assert coerce_time("2024-01-05T13:45:07.250") == "2024-01-05T13:45:07.250000"
    for raw in ("2024-01-05T13:45:00Z", "2024-01-05 13:45+01:00"):
        with pytest.raises(CellError) as info:
            coerce_time(raw)
        assert info.value.rule == "type" and "offset" in info.value.message
    with pytest.raises(CellError) as info:
        coerce_time("2024-01-05T13:45:00.1234567")
    assert info.value.rule == "precision" and "timestamp holds microseconds" in info.value.message


def test_a_decimal_comma_column_reads_the_comma_as_the_point_and_its_messages_show_the_value_as_written():
    from ingest.contract import Column
    from ingest.validation import CellError

    coerce_price = build_coercer(Column(name="price", type="numeric", precision=8, scale=2, decimal=","))
    assert coerce_price("4,50") == "4.50" and coerce_price("-0,5") == "-0.5" and coerce_price("12") == "12"
    with pytest.raises(CellError) as info:
        coerce_price("1,234")
    assert info.value.rule == "scale" and info.value.message == "price 1,234 has more than 2 decimal places"
    with pytest.raises(CellError) as info:
        coerce_price("1.234,50")
    assert info.value.rule == "type" and "is not a number with a decimal comma" in info.value.message
