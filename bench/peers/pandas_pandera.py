"""Peer: pandas (pyarrow-backed strings) reads the whole file, pandera validates the rules lazily (every
failure collected), the failing rows are dropped, and psycopg COPYs the rest.

    python bench/peers/pandas_pandera.py FILE DATABASE_URL TABLE
"""

from __future__ import annotations

import io
import json
import time
import sys

import pandas as pd
import pandera.pandas as pa
import psycopg

COLUMNS = ["id", "email", "full_name", "signup_date", "country", "age", "balance", "is_active"]
TRUE_WORDS = {"true", "t", "yes", "y", "1"}
FALSE_WORDS = {"false", "f", "no", "n", "0"}


def read(path: str) -> pd.DataFrame:
    # every cell as text, nothing read as NaN by default (pandas would turn NA, N/A, null... into NaN)
    df = pd.read_csv(
        path,
        header=None,
        skiprows=1,
        names=[*COLUMNS, "_extra"],
        dtype="string[pyarrow]",
        keep_default_na=False,
        na_values=[],
    )
    return df


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({c: df[c].str.strip() for c in COLUMNS})
    out["_extra"] = df["_extra"].fillna("")
    out["email"] = out["email"].str.lower()
    out["full_name"] = out["full_name"].str.replace(r"\s+", " ", regex=True)
    out["country"] = out["country"].str.upper()
    out["is_active"] = out["is_active"].str.lower()
    dates = out["signup_date"]
    parsed = pd.to_datetime(dates, format="%Y-%m-%d", errors="coerce")
    for fmt in ("%m/%d/%Y", "%d.%m.%Y"):
        parsed = parsed.fillna(pd.to_datetime(dates, format=fmt, errors="coerce"))
    out["_date"] = parsed
    return out


SCHEMA = pa.DataFrameSchema(
    {
        "_extra": pa.Column("string", pa.Check(lambda s: s == ""), nullable=True),
        "id": pa.Column("string", pa.Check.str_matches(r"^[+-]?\d{1,10}$")),
        "email": pa.Column(
            "string",
            [pa.Check.str_matches(r"^[^@\s]+@[^@\s]+\.[^@\s]+$"), pa.Check.str_length(max_value=254)],
        ),
        "full_name": pa.Column("string", pa.Check.str_length(min_value=1)),
        "country": pa.Column("string", pa.Check(lambda s: (s == "") | s.str.fullmatch(r"[A-Z]{2}"))),
        "age": pa.Column(
            "string",
            pa.Check(
                lambda s: (
                    s.isin(["", "NA"])
                    | (s.str.fullmatch(r"[+-]?\d{1,4}") & pd.to_numeric(s, errors="coerce").between(0, 150))
                )
            ),
        ),
        "balance": pa.Column(
            "string", pa.Check(lambda s: (s == "") | s.str.fullmatch(r"[+-]?(\d{1,10}(\.\d{0,2})?|\.\d{1,2})"))
        ),
        "is_active": pa.Column("string", pa.Check(lambda s: (s == "") | s.isin(TRUE_WORDS | FALSE_WORDS))),
    },
    checks=[pa.Check(lambda df: (df["signup_date"] == "") | df["_date"].notna(), name="signup_date")],
    strict=False,
)


def main(path: str, url: str, table: str) -> None:
    started = time.perf_counter()
    df = normalize(read(path))
    try:
        SCHEMA.validate(df, lazy=True)
        bad: set[int] = set()
    except pa.errors.SchemaErrors as errors:
        bad = set(errors.failure_cases["index"].dropna().astype(int))
    valid = df.drop(index=list(bad))
    valid = valid[~valid["id"].astype("int64").duplicated(keep="first")]
    out = pd.DataFrame(
        {
            "id": valid["id"].astype("int64"),
            "email": valid["email"],
            "full_name": valid["full_name"],
            "signup_date": valid["_date"].dt.strftime("%Y-%m-%d"),
            "country": valid["country"].replace("", pd.NA),
            "age": pd.to_numeric(valid["age"].replace({"NA": ""}).replace("", pd.NA)).astype("Int64"),
            "balance": valid["balance"].replace("", pd.NA),
            "is_active": valid["is_active"].map(lambda v: None if v == "" else v in TRUE_WORDS),
        }
    )
    buffer = io.StringIO()
    out.to_csv(buffer, header=False, index=False)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT csv)") as copy:
            copy.write(buffer.getvalue())
    print(json.dumps({"seconds": time.perf_counter() - started, "rows_loaded": len(out), "table": table}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
