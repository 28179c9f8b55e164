"""The rules of lambda/contracts/users.toml as polars expressions, written the way a data engineer would
write them by hand (shared by the polars and dlt peers). Only what the bench file needs: every cell is
trimmed, only an empty cell is NULL (and NA in age), the formats and ranges of the contract.

A row that breaks any rule is dropped, as the pipeline rejects it; the result must hold exactly the rows
the pipeline loads (the bench checks count and checksum before a time counts)."""

from __future__ import annotations

import polars as pl

COLUMNS = ["id", "email", "full_name", "signup_date", "country", "age", "balance", "is_active"]
TRUE_WORDS = ["true", "t", "yes", "y", "1"]
FALSE_WORDS = ["false", "f", "no", "n", "0"]
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
NUMERIC_12_2 = r"^[+-]?(\d{1,10}(\.\d{0,2})?|\.\d{1,2})$"


def read(path: str) -> pl.DataFrame:
    """Every cell as text; a ninth column catches rows with too many fields."""
    return pl.read_csv(
        path,
        has_header=False,
        skip_rows=1,
        new_columns=[*COLUMNS, "_extra"],
        schema_overrides={c: pl.String for c in [*COLUMNS, "_extra"]},
        infer_schema=False,
        truncate_ragged_lines=True,
        missing_columns="insert",
        empty_string_is_null=False,
    )


def apply(df: pl.DataFrame) -> pl.DataFrame:
    """The valid rows, typed and normalized."""
    s = {c: pl.col(c).str.strip_chars() for c in COLUMNS}
    blank = {c: s[c] == "" for c in COLUMNS}
    email = s["email"].str.to_lowercase()
    name = s["full_name"].str.replace_all(r"\s+", " ")
    date = pl.coalesce(
        s["signup_date"].str.to_date("%Y-%m-%d", strict=False),
        s["signup_date"].str.to_date("%m/%d/%Y", strict=False),
        s["signup_date"].str.to_date("%d.%m.%Y", strict=False),
    )
    country = s["country"].str.to_uppercase()
    age_null = blank["age"] | (s["age"] == "NA")
    age = s["age"].cast(pl.Int64, strict=False)
    balance = s["balance"].cast(pl.Decimal(12, 2), strict=False)
    active = s["is_active"].str.to_lowercase()
    ok = (
        (pl.col("_extra") == "").fill_null(True)
        & s["id"].str.contains(r"^[+-]?\d+$")
        & s["id"].cast(pl.Int64, strict=False).is_between(-(2**31), 2**31 - 1)
        & ~blank["email"]
        & email.str.contains(EMAIL)
        & (email.str.len_chars() <= 254)
        & ~blank["full_name"]
        & (blank["signup_date"] | date.is_not_null())
        & (blank["country"] | country.str.contains(r"^[A-Z]{2}$"))
        & (age_null | (s["age"].str.contains(r"^[+-]?\d+$") & age.is_between(0, 150)))
        & (blank["balance"] | s["balance"].str.contains(NUMERIC_12_2))
        & (blank["is_active"] | active.is_in([*TRUE_WORDS, *FALSE_WORDS]))
    )
    typed = df.filter(ok).select(
        s["id"].cast(pl.Int32).alias("id"),
        email.alias("email"),
        name.alias("full_name"),
        pl.when(blank["signup_date"]).then(None).otherwise(date).alias("signup_date"),
        pl.when(blank["country"]).then(None).otherwise(country).alias("country"),
        pl.when(age_null).then(None).otherwise(age).cast(pl.Int32).alias("age"),
        pl.when(blank["balance"]).then(None).otherwise(balance).alias("balance"),
        pl.when(blank["is_active"]).then(None).otherwise(active.is_in(TRUE_WORDS)).alias("is_active"),
    )
    return typed.unique(subset=["id"], keep="first", maintain_order=True)
