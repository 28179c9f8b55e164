"""Deterministic, realistic users-like CSVs for the benchmark (same seed and size → identical bytes).

About 115 bytes a row: mixed date formats, blanks and null tokens, quoted commas, a few quoted
newlines, mixed-case emails and booleans, and about 1% bad rows of several kinds.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

GENERATOR_VERSION = 4  # 4: null tokens only where users.toml declares them (NA in age), so ~1% of rows are bad
FIRST = [
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Radia",
    "Tim",
    "Anita",
    "Dennis",
    "Hedy",
    "John",
    "Katherine",
    "Niklaus",
    "Sophie",
    "Yukihiro",
]
LAST = [
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Perlman",
    "Berners-Lee",
    "Borg",
    "Ritchie",
    "Lamarr",
    "McCarthy",
    "Johnson",
    "Wirth",
    "Wilson",
    "Matsumoto",
]
DOMAINS = ["customers.example.com", "mail.example.org", "users.example.net", "corporate.example.io"]
COUNTRIES = ["GB", "us", "DE", "fr", "FI", "NL", "es", "IT", "PT", "BE", "SE", "NO", "DK", "PL", "CZ", "JP"]
BOOLS = ["true", "false", "t", "f", "yes", "no", "Y", "N", "1", "0", "TRUE", "False"]
HEADER = "id,email,full_name,signup_date,country,age,balance,is_active\n"


def _row(i: int, rng: random.Random) -> str:
    first, middle, last = rng.choice(FIRST), rng.choice(FIRST), rng.choice(LAST)
    email = f"{first}.{middle[0]}.{last}.{i}@{rng.choice(DOMAINS)}"
    if rng.random() < 0.3:
        email = email.upper() if rng.random() < 0.5 else f"  {email} "
    roll = rng.random()
    if roll < 0.05:
        name = f'"{last}, {first}"'
    elif roll < 0.052:
        name = f'"{first}\n{last}"'  # a quoted newline
    else:
        name = f"{first}  {middle} {last}" if roll < 0.2 else f"{first} {middle} {last}"
    y, m, d = rng.randint(2000, 2025), rng.randint(1, 12), rng.randint(1, 28)
    fmt = rng.random()
    if fmt < 0.6:
        date = f"{y:04d}-{m:02d}-{d:02d}"
    elif fmt < 0.8:
        date = f"{m:02d}/{d:02d}/{y:04d}"
    elif fmt < 0.95:
        date = f"{d:02d}.{m:02d}.{y:04d}"
    else:
        date = ""
    age = rng.choice(["", "NA"]) if rng.random() < 0.1 else str(rng.randint(0, 99))
    balance = "" if rng.random() < 0.05 else f"{rng.randint(-9999, 999999)}.{rng.randint(0, 99):02d}"
    fields = [str(i), email, name, date, rng.choice(COUNTRIES), age, balance, rng.choice(BOOLS)]
    bad = rng.random()
    if bad < 0.002:
        fields[1] = "not-an-email"
    elif bad < 0.004:
        fields[3] = "2024-02-30"
    elif bad < 0.006:
        fields[5] = "200"
    elif bad < 0.008:
        fields[7] = "maybe"
    elif bad < 0.009:
        fields[6] = "12.345"
    elif bad < 0.010:
        fields.append("extra")
    return ",".join(fields) + "\n"


def generate(path: Path, rows: int, seed: int = 42) -> Path:
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as out:
        out.write(HEADER)
        batch: list[str] = []
        for i in range(1, rows + 1):
            batch.append(_row(i, rng))
            if len(batch) == 10_000:
                out.write("".join(batch))
                batch.clear()
        out.write("".join(batch))
    tmp.replace(path)
    return path


def dataset(directory: Path, rows: int, seed: int = 42) -> Path:
    """The cached file for (rows, seed), generated on first use."""
    directory.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha1(f"{GENERATOR_VERSION}:{rows}:{seed}".encode()).hexdigest()[:8]
    path = directory / f"users_{rows}_{seed}_{tag}.csv"
    return path if path.exists() else generate(path, rows, seed)
