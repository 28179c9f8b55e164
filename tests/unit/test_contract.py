import pytest

from ingest.contract import ContractError, ContractRegistry, glob_to_regex, globs_overlap, parse_contract
from ingest.headers import column_name

MINIMAL = {"table": "t", "keys": ["incoming/t.csv"], "columns": [{"name": "a"}]}


def test_shipped_contracts_are_exactly_as_specified(contracts):
    users = contracts["users"]
    assert users.table == "users"
    assert users.keys == ("incoming/users.csv", "incoming/users_*.csv", "incoming/users/*.csv")
    assert users.load_mode == "upsert" and users.upsert_key == ("id",)
    assert users.max_rejected_share == 0.5
    assert [(c.name, c.type, c.required) for c in users.columns] == [
        ("id", "integer", True),
        ("email", "text", True),
        ("full_name", "text", True),
        ("signup_date", "date", False),
        ("country", "text", False),
        ("age", "integer", False),
        ("balance", "numeric", False),
        ("is_active", "boolean", False),
    ]
    test = contracts["test"]
    assert test.load_mode == "append" and test.max_rejected_share == 0.5
    assert [(c.name, c.type, c.required) for c in test.columns] == [
        ("sample_id", "text", True),
        ("measured_at", "timestamptz", True),
        ("instrument", "text", True),
        ("temperature_c", "double", False),
        ("ph", "numeric", False),
    ]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("incoming/users.csv", ["users"]),
        ("incoming/users_2024.csv", ["users"]),
        ("incoming/users/batch 1.csv", ["users"]),
        ("incoming/users/batch.csv.gz", ["users"]),
        ("incoming/users/a/b.csv", []),  # * stays within one path segment
        ("incoming/users.txt", []),
        ("users.csv", []),
        ("incoming/test.csv", ["test"]),
        ("incoming/test_x.csv", ["test"]),
        ("incoming/inventory.csv", []),
    ],
)
def test_keys_map_to_contracts_or_to_nothing(contracts, key, expected):
    assert [c.name for c in contracts.match(key)] == expected


def test_glob_star_does_not_cross_segments_but_double_star_does():
    assert glob_to_regex("a/*.csv").fullmatch("a/x.csv")
    assert not glob_to_regex("a/*.csv").fullmatch("a/b/x.csv")
    assert glob_to_regex("a/**.csv").fullmatch("a/b/x.csv")


def test_header_names_are_normalized():
    assert column_name("  Full-Name ", 0) == "full_name"
    assert column_name("Signup  Date", 0) == "signup_date"
    assert column_name("ÉMAIL", 0) == "email"
    # PostgreSQL's system column names, which no table column may take (a bounding box's xmin, ymin, ...)
    assert [column_name(h, 0) for h in ("xmin", "XMAX", " ctid ", "tableoid", "ymin", "oid")] == [
        "_xmin",
        "_xmax",
        "_ctid",
        "_tableoid",
        "ymin",
        "oid",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"table": "Users"}, "table must be a lower-case SQL identifier"),
        ({"table": "x; DROP TABLE y"}, "table must be"),
        ({"table": "ingest_files"}, "table 'ingest_files' is the pipeline's own .*ledger"),
        ({"table": "_ingest_stage_users"}, "table '_ingest_stage_users' is the pipeline's own"),
        ({"table": "raw.users"}, 'names a schema: .* schema = "raw" and table = "users"'),
        ({"schema": "Raw"}, "schema must be a lower-case SQL identifier"),
        ({"schema": "ingest_ledger"}, "schema 'ingest_ledger' is the pipeline's own"),
        ({"schema": "pg_catalog"}, "schema 'pg_catalog' is PostgreSQL's own"),
        ({"keys": []}, "keys must be a non-empty list"),
        ({"columns": [{"name": "a b"}]}, "column name must be"),
        ({"columns": [{"name": "_ingest_md5"}]}, "column name must be"),
        ({"columns": [{"name": "xmin"}]}, r"'xmin' is a PostgreSQL system column name .* aliases = \['xmin'\]"),
        ({"columns": [{"name": "a", "type": "varchar"}]}, "type must be one of"),
        ({"columns": [{"name": "a", "normalize": ["titlecase"]}]}, "unknown normalizer"),
        ({"columns": [{"name": "a", "pattern": "("}]}, "pattern .* cannot be used: it does not compile"),
        ({"columns": [{"name": "a", "min": 1}]}, "min applies to numeric types only"),
        ({"columns": [{"name": "a"}, {"name": "b", "aliases": ["a"]}]}, "used twice"),
        ({"load": {"mode": "merge"}}, "load.mode must be one of"),
        ({"load": {"mode": "upsert"}}, "needs load.key or a primary_key"),
        ({"max_rejected_share": 2}, "max_rejected_share must be a number from 0 to 1"),
        ({"unknown_columns": "keep"}, "unknown_columns must be one of"),
        ({"colums": []}, "unknown field"),
        ({"columns": [{"name": "d", "type": "date", "formats": ["YYYY-MM"]}]}, "must contain YYYY, MM and DD"),
    ],
)
def test_malformed_contracts_are_refused_with_a_specific_message(change, message):
    with pytest.raises(ContractError, match=message):
        parse_contract("t", {**MINIMAL, **change})


def test_an_empty_cell_is_always_null_even_if_null_values_omit_it():
    contract = parse_contract("t", {**MINIMAL, "null_values": ["-"]})
    assert contract.null_values == ("", "-")


def test_two_contracts_cannot_load_one_table():
    a = parse_contract("a", MINIMAL)
    b = parse_contract("b", MINIMAL)
    with pytest.raises(ContractError, match="both load table"):
        ContractRegistry([a, b])


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("incoming/orders_*.csv", "incoming/orders_archive.csv", True),
        ("incoming/orders_*.csv", "incoming/orders_archive_*.csv", True),
        ("incoming/users/*.csv", "incoming/test/*.csv", False),
        ("incoming/**", "incoming/x/*.csv", True),
        ("incoming/*.csv", "incoming/a/b.csv", False),
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        ("incoming/users.csv", "incoming/users_*.csv", False),
        ("incoming/*_2024.csv", "incoming/sales_*.csv", True),
    ],
)
def test_globs_overlap_when_some_key_matches_both(a, b, overlap):
    assert globs_overlap(a, b) is overlap
    assert globs_overlap(b, a) is overlap


def test_null_values_are_opt_in_per_contract_and_per_column():
    contract = parse_contract(
        "t",
        {**MINIMAL, "null_values": ["null"], "columns": [{"name": "a"}, {"name": "b", "null_values": ["NA"]}]},
    )
    a, b = contract.columns
    assert contract.nulls(a) == ("", "null") and contract.nulls(b) == ("", "NA")
    assert parse_contract("t", MINIMAL).nulls(parse_contract("t", MINIMAL).columns[0]) == ("",)


def test_trim_false_is_for_text_columns_only():
    assert parse_contract("t", {**MINIMAL, "columns": [{"name": "a", "trim": False}]}).columns[0].trim is False
    with pytest.raises(ContractError, match="text columns only"):
        parse_contract("t", {**MINIMAL, "columns": [{"name": "a", "type": "integer", "trim": False}]})


@pytest.mark.parametrize("value", [-1, 1001, True, "4", 2.0])
def test_skip_lines_is_a_whole_number_of_lines_before_the_header(value):
    base = {"table": "wdi", "keys": ["incoming/wdi.csv"], "columns": [{"name": "country_name"}]}
    assert parse_contract("wdi", {**base, "skip_lines": 4}).skip_lines == 4
    assert parse_contract("wdi", base).skip_lines == 0
    with pytest.raises(ContractError, match="skip_lines must be a whole number from 0 to 1000"):
        parse_contract("wdi", {**base, "skip_lines": value})


def test_quoting_is_csv_or_none():
    base = {"table": "titles", "keys": ["incoming/titles.tsv"], "columns": [{"name": "tconst"}]}
    assert parse_contract("titles", base).quoting == "csv"
    assert parse_contract("titles", {**base, "quoting": "none"}).quoting == "none"
    with pytest.raises(ContractError, match="quoting must be one of"):
        parse_contract("titles", {**base, "quoting": "'"})


def test_null_padding_is_true_or_false():
    base = {"table": "forecasts", "keys": ["incoming/f.csv"], "columns": [{"name": "dates"}]}
    assert parse_contract("forecasts", base).null_padding is False
    assert parse_contract("forecasts", {**base, "null_padding": True}).null_padding is True
    with pytest.raises(ContractError, match="null_padding must be true or false"):
        parse_contract("forecasts", {**base, "null_padding": "yes"})


def test_a_contract_has_at_most_the_columns_a_postgresql_table_holds_beside_the_lineage_columns():
    # 2,000 columns drafted into a contract made CREATE TABLE fail at the first file, again at each retry.
    def contract(width):
        columns = [{"name": f"c{i}"} for i in range(width)]
        return {"table": "wide", "keys": ["incoming/wide.csv"], "columns": columns}

    assert len(parse_contract("wide", contract(1598)).columns) == 1598
    with pytest.raises(ContractError, match="1599 columns: a PostgreSQL table holds at most 1600"):
        parse_contract("wide", contract(1599))


def test_decimal_is_a_point_or_a_comma_for_numeric_and_double_columns():
    def contract(column):
        return {"table": "prices", "keys": ["incoming/prices.csv"], "columns": [{"name": "price", **column}]}

    assert parse_contract("prices", contract({"type": "numeric", "decimal": ","})).columns[0].decimal == ","
    assert parse_contract("prices", contract({"type": "double"})).columns[0].decimal == "."
    with pytest.raises(ContractError, match=r'decimal must be "\." or ","'):
        parse_contract("prices", contract({"type": "numeric", "decimal": "'"}))
    with pytest.raises(ContractError, match="applies to numeric and double columns only"):
        parse_contract("prices", contract({"type": "integer", "decimal": ","}))


def test_a_contract_names_its_schema_and_two_may_load_one_table_name_in_two_schemas():
    base = {"table": "users", "keys": ["incoming/a/*.csv"], "columns": [{"name": "id", "type": "integer"}]}
    public = parse_contract("users", base)
    raw = parse_contract("raw_users", {**base, "schema": "raw", "keys": ["incoming/b/*.csv"]})
    assert (public.schema, public.target) == ("public", "users")  # the default: as before schemas
    assert (raw.schema, raw.target) == ("raw", "raw.users")
    assert public.fingerprint == parse_contract("users", base).fingerprint  # an unchanged contract: same identity
    registry = ContractRegistry([public, raw])
    assert [c.name for c in registry.match("incoming/b/x.csv")] == ["raw_users"]
    with pytest.raises(ContractError, match=r"both load table 'raw\.users'"):
        ContractRegistry([raw, parse_contract("again", {**base, "schema": "raw"})])
