"""``make bench``: the whole pipeline against raw ``psql \\copy`` on the same PostgreSQL, side by side.

For each size (1M and 5M rows by default) it generates a users-like CSV once (seeded, cached under
bench/data/), uploads it to a moto server, and times, several times each:
- raw: ``psql \\copy`` of the same rows (the file's valid rows, as the pipeline normalizes them) into a
  fresh table of the same definition: the physical cost of putting these rows into this table;
- pipeline: one ``ingest_object`` call in a fresh process (download, MD5, decode, validate every row,
  COPY, upsert, processed/ and errors/, ledger, receipt) into a fresh table, as a first load;
- pipeline, upsert into a table that already holds the rows (staging + MERGE), first size only: each run
  loads the rows first (untimed), then times the load of the same rows under new bytes;
- at the first size, the peers a user could pick instead (bench/peers/, run by the bench venv's Python):
  polars + COPY, dlt with its CSV (COPY) loader, pandas + pandera + COPY, each applying the same rules;
- a burst of 400 small files through the embedded stack at concurrency 1, 2 and 4 (``devstack.burst``):
  files/s and upload-to-row latency, summed up in the line before the peers line.
Every route must load exactly the rows of an untimed reference load by the pipeline (count and checksum of
the typed rows) before its time counts. The methods (the upsert one of them) run in alternating order
(forward, then reversed) so a slow minute of the machine does not fall on one of them, each after a
CHECKPOINT (see ``Bench.settle``). It prints each run's time as it goes, then medians (rows/s, MB/s, peak
RSS of the process, ratio to raw), the slowest run against raw's median (p-max) and the runs' spread, how
steady each route was (its slowest run over its fastest), a line with the peers' ratios, and last the 1M-row
ratio; with --chart it also draws the run (time
and peak RSS per route) as a PNG and writes the figures as JSON beside it.

    python -m devstack.bench [--rows 1000000 5000000] [--runs 5] [--peers-python .venv-bench/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import boto3
import psutil
import psycopg
from boto3.s3.transfer import TransferConfig

from . import burst, emulator
from .benchdata import dataset
from .function import REPO
from .postgres import find_bin_dir, start_postgres
from .processes import HOST, listen_port, stop_pid

BUCKET = "bench"
# The child's peak RSS is VmHWM, the high-water mark of its own address space. Not getrusage's ru_maxrss:
# on Linux that also counts the parent's RSS at the moment the child was exec'd (the parent's address space
# is the child's until exec), so a bench process holding a large file made the function look larger.
PEAK_RSS = """
import resource

def peak_rss_mb():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""
CHILD = (
    PEAK_RSS
    + """
import json, sys, time
from ingest import bootstrap
from ingest.service import ingest_object

deps = bootstrap.dependencies()
started = time.perf_counter()
receipt = ingest_object(sys.argv[1], sys.argv[2], deps)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "status": receipt.status, "rows_loaded": receipt.rows_loaded,
                  "rows_rejected": receipt.rows_rejected, "md5": receipt.md5, "peak_rss_mb": peak_rss_mb()}))
"""
)


#: How often the RSS of a route that cannot report its own peak is sampled. Each sample reads /proc for
#: the whole process tree: every 5 ms that took ~30% of a core, taken from the routes on a 2-core machine.
SAMPLE_SECONDS = 0.1


def measure(argv: list[str], env: dict[str, str] | None = None, sample: bool = True) -> tuple[float, float, str]:
    """Wall time, peak RSS (MB, sampled every SAMPLE_SECONDS, children included; 0 without ``sample``, for a
    command that reports its own) and stdout of a command."""
    started = time.perf_counter()
    process = psutil.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0.0
    done = threading.Event()

    def sample_rss() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(recursive=True))
                peak = max(peak, rss / 2**20)
            except psutil.Error:
                pass
            done.wait(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample_rss, daemon=True) if sample else None
    if sampler:
        sampler.start()
    out, err = process.communicate()
    seconds = time.perf_counter() - started
    done.set()
    if sampler:
        sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {err.decode()[-2000:]}")
    return seconds, peak, out.decode()


def machine_snapshot() -> dict[str, float]:
    """What the machine was doing, to tell a slow run's cause: CPU ticks by kind (/proc/stat), and the page
    cache's dirty and writeback megabytes (/proc/meminfo)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    user, nice, system, idle, iowait, irq, softirq, steal = map(float, fields)
    memory = {
        line.split(":")[0]: float(line.split()[1]) / 1024
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith(("Dirty:", "Writeback:"))
    }
    return {
        "busy": user + nice + system + irq + softirq,
        "idle": idle,
        "iowait": iowait,
        "steal": steal,
        "dirty_mb": memory.get("Dirty", 0.0),
        "writeback_mb": memory.get("Writeback", 0.0),
    }


def conditions(before: dict[str, float], after: dict[str, float], checkpoints: int, moto_mb: float) -> dict[str, float]:
    """A run's conditions: the share of CPU time that was iowait and steal, the cores busy, the dirty page
    cache when it began, the checkpoints PostgreSQL began meanwhile, and the emulator's RSS after it."""
    total = sum(after[k] - before[k] for k in ("busy", "idle", "iowait", "steal")) or 1.0
    cores = os.cpu_count() or 1
    return {
        "iowait": round((after["iowait"] - before["iowait"]) / total, 3),
        "steal": round((after["steal"] - before["steal"]) / total, 3),
        "cores_busy": round(cores * (after["busy"] - before["busy"]) / total, 2),
        "dirty_mb_before": round(before["dirty_mb"] + before["writeback_mb"]),
        "checkpoints": checkpoints,
        "emulator_mb": round(moto_mb),
    }


class Bench:
    def __init__(self, workdir: Path, database_url: str, endpoint: str):
        self.workdir = workdir
        self.database_url = database_url
        self.endpoint = endpoint
        self.settles = 0  # the CHECKPOINTs the bench asked for (see settle)
        self.s3 = boto3.session.Session().client("s3", endpoint_url=endpoint)
        self.s3.create_bucket(Bucket=BUCKET)
        bin_dir = find_bin_dir()
        self.psql = str(bin_dir / "psql") if bin_dir and (bin_dir / "psql").exists() else shutil.which("psql")
        self.child_env = {
            **os.environ,
            "AWS_ENDPOINT_URL": endpoint,
            "DATABASE_URL": database_url,
            "INGEST_TOPIC_ARN": "",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO / "lambda"),
        }

    def sql(self, statement: str) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def settle(self) -> None:
        """A CHECKPOINT before a timed run: the dirty buffers and WAL of the runs before it are written now, so
        that no run pays for an earlier one's writes (a checkpoint falling inside a run added a second to one
        of three 1M upserts). Skipped where the role may not (a BENCH_DATABASE_URL of the user's).

        Then the kernel's dirty page cache is written out (``sync``): the runs before (the files the bench
        made, the emulator's objects, a spool) left up to 1.7 GB of it at 5M rows, which the kernel wrote back
        during the next run; the slowest 5M first load (15.4 s against 9.9-11.3 s) began with the most."""
        with suppress(psycopg.errors.InsufficientPrivilege):
            self.sql("CHECKPOINT")
            self.settles += 1
        os.sync()

    def as_loaded_earlier(self, table: str) -> None:
        """The table as a load of yesterday leaves it by today: vacuumed and analyzed. Right after a big load,
        autovacuum comes to the table within a minute (the launcher's nap): in one of the first eight upsert
        runs profiled it began during the timed load, vacuuming a million rows beside it and holding the lock
        the MERGE waits for (see postgres.DEADLOCK_TIMEOUT); and the load's first read of the rows set their
        hint bits, dirtying every page. A daily upsert meets neither: this does their work before the clock
        starts."""
        self.sql(f"VACUUM (ANALYZE) {table}")

    def checkpoints(self) -> int:
        """How many checkpoints PostgreSQL has begun (timed or requested, the bench's own included)."""
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            if conn.info.server_version >= 170000:
                query = "SELECT num_timed + num_requested FROM pg_stat_checkpointer"
            else:
                query = "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter"
            row = conn.execute(query).fetchone()  # type: ignore[arg-type]
        return int(row[0]) if row else 0

    def fresh_tables(self) -> None:
        self.sql("DROP TABLE IF EXISTS users; DROP TABLE IF EXISTS ingest_ledger.ingest_files;")

    def upload(self, path: Path, key: str) -> None:
        self.s3.upload_file(str(path), BUCKET, key, Config=TransferConfig(multipart_chunksize=64 * 2**20))

    def checksum(self, table: str) -> tuple[int, str]:
        """Row count and an order-free checksum of the rows as the contract types them."""
        typed = (
            "id::integer, email::text, full_name::text, signup_date::date, country::text, age::integer, "
            "balance::numeric(12,2), is_active::boolean"
        )
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(
                f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text "
                f"FROM (SELECT {typed} FROM {table}) AS t"
            ).fetchone()
        assert row is not None
        return int(row[0]), str(row[1])

    def peer(self, python: str, script: str, path: Path) -> dict[str, Any]:
        self.fresh_target()
        self.sql("DROP SCHEMA IF EXISTS bench_dlt CASCADE")
        argv = [python, str(REPO / "bench" / "peers" / script), str(path), self.database_url, "users"]
        self.settle()
        seconds, peak, out = measure(argv)
        result = json.loads(out.strip().splitlines()[-1])
        result["wall_seconds"] = seconds
        result["peak_rss_mb"] = peak
        return result

    def pipeline(self, key: str) -> dict[str, Any]:
        # the child reports its own peak RSS (VmHWM): no sampler runs beside it
        self.settle()
        seconds, _peak, out = measure([sys.executable, "-c", CHILD, BUCKET, key], env=self.child_env, sample=False)
        result = json.loads(out.strip().splitlines()[-1])
        result["wall_seconds"] = seconds
        return result

    def fresh_target(self) -> tuple[str, ...]:
        """A fresh, empty ``users`` table of the contract's definition (as the pipeline creates it)."""
        from sqlalchemy import create_engine

        from ingest.adapters.tables import target_table
        from ingest.contract import ContractRegistry, default_contracts_dir

        contract = ContractRegistry.from_directory(default_contracts_dir())["users"]
        self.sql("DROP TABLE IF EXISTS users")
        engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(self.database_url))
        with engine.begin() as conn:
            target_table(contract).create(conn)
        engine.dispose()
        return contract.column_names

    def raw_copy(self, csv_path: Path) -> tuple[float, float]:
        """psql \\copy of the rows into a fresh table of the target's definition."""
        columns = ", ".join(self.fresh_target())
        self.settle()
        if self.psql:
            command = f"\\copy users ({columns}) FROM '{csv_path}' WITH (FORMAT csv, HEADER true)"
            seconds, peak, _ = measure(
                [self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", self.database_url, "-c", command]
            )
        else:  # no psql here: the same COPY through psycopg, streamed from the file
            code = (
                f"import psycopg,sys\nwith psycopg.connect({self.database_url!r}) as c, c.cursor() as cur, "
                f"cur.copy('COPY users ({columns}) FROM STDIN (FORMAT csv, HEADER true)') as cp, "
                f"open({str(csv_path)!r},'rb') as f:\n    [cp.write(b) for b in iter(lambda: f.read(1<<20), b'')]"
            )
            seconds, peak, _ = measure([sys.executable, "-c", code])
        return seconds, peak


PEERS = {  # name in the report → script in bench/peers/
    "polars + COPY": "polars_copy.py",
    "dlt, CSV loader (COPY)": "dlt_csv.py",
    "pandas + pandera + COPY": "pandas_pandera.py",
}


def run(sizes: list[int], runs: int, peers_python: str | None = None) -> list[dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    port = listen_port()
    moto = emulator.start_moto(port, workdir / "moto.log")
    pg = None
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1")
    try:
        database_url = os.environ.get("BENCH_DATABASE_URL")
        if not database_url:
            pg = start_postgres(workdir / "pg")
            database_url = pg.url
        bench = Bench(workdir, database_url, f"http://{HOST}:{port}")
        results = []
        for rows in sizes:
            print(f"\n{rows:,} rows: generating/reading the data set ...", flush=True)
            path = dataset(REPO / "bench" / "data", rows)
            size_mb = path.stat().st_size / 2**20
            key = f"incoming/users/bench_{rows}.csv"
            bench.upload(path, key)
            # The reference: one untimed load by the pipeline. Its rows are what every route must load, and
            # its processed/ output is what raw \copy loads.
            bench.fresh_tables()
            reference = bench.pipeline(key)
            expected = bench.checksum("users")
            print(f"  reference load: {expected[0]:,} rows ({reference['rows_rejected']:,} rejected)", flush=True)
            valid_csv = workdir / f"valid_{rows}.csv"
            bench.s3.download_file(BUCKET, f"processed/users/{reference['md5']}.csv", str(valid_csv))
            methods = ["raw", "pipeline"]
            if rows == sizes[0]:
                # the same content again under new bytes (a trailing blank line): an upsert over existing rows
                again = workdir / "again.csv"
                shutil.copyfile(path, again)
                with again.open("ab") as tail:
                    tail.write(b"\n")
                bench.upload(again, key + ".again.csv")
                methods.append("upsert")
            if peers_python and rows == sizes[0]:
                methods += list(PEERS)
            seconds: dict[str, list[float]] = {m: [] for m in methods}
            peaks: dict[str, list[float]] = {m: [] for m in methods}
            mismatches: dict[str, str] = {}
            observed: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
            for i in range(runs):
                for method in methods if i % 2 == 0 else methods[::-1]:
                    began, checkpoints, settles = machine_snapshot(), bench.checkpoints(), bench.settles
                    if method == "raw":
                        s, peak = bench.raw_copy(valid_csv)
                        table = "users"
                    elif method in ("pipeline", "upsert"):
                        bench.fresh_tables()
                        if method == "upsert":  # the rows loaded first (untimed), then the same rows again
                            bench.pipeline(key)
                            bench.as_loaded_earlier("users")
                        result = bench.pipeline(key + ".again.csv" if method == "upsert" else key)
                        s, peak, table = result["seconds"], result["peak_rss_mb"], "users"
                    else:
                        assert peers_python is not None
                        result = bench.peer(peers_python, PEERS[method], path)
                        s, peak, table = result["seconds"], result["peak_rss_mb"], result["table"]
                    got = bench.checksum(table)
                    if got != expected:
                        mismatches[method] = f"loaded {got[0]:,} rows (checksum {got[1]}), expected {expected[0]:,}"
                    seconds[method].append(s)
                    peaks[method].append(peak)
                    moto_mb = psutil.Process(moto.pid).memory_info().rss / 2**20
                    others = bench.checkpoints() - checkpoints - (bench.settles - settles)  # not the bench's own
                    seen = conditions(began, machine_snapshot(), others, moto_mb)
                    observed[method].append(seen)
                    print(
                        f"  {method} run {i + 1}: {s:.2f}s, peak RSS {peak:.0f} MB "
                        f"(cores busy {seen['cores_busy']:.2f}, iowait {seen['iowait']:.0%}, "
                        f"steal {seen['steal']:.0%}, "
                        f"dirty {seen['dirty_mb_before']:.0f} MB before, checkpoints {seen['checkpoints']}, "
                        f"emulator {seen['emulator_mb']:.0f} MB)",
                        flush=True,
                    )
            entry: dict[str, Any] = {
                "rows": rows,
                "mb": size_mb,
                "rows_loaded": expected[0],
                "raw_seconds": statistics.median(seconds["raw"]),
                "raw_rss": max(peaks["raw"]),
                "raw_spread": (min(seconds["raw"]), max(seconds["raw"])),
                "runs": seconds,  # every run's seconds, by method, in the order they ran
                "conditions": observed,  # and what the machine did meanwhile (machine_snapshot, conditions)
                "pipeline_seconds": statistics.median(seconds["pipeline"]),
                "pipeline_spread": (min(seconds["pipeline"]), max(seconds["pipeline"])),
                "pipeline_rss": max(peaks["pipeline"]),
                "peers": {
                    name: {
                        "seconds": statistics.median(seconds[name]),
                        "spread": (min(seconds[name]), max(seconds[name])),
                        "rss": max(peaks[name]),
                        "mismatch": mismatches.get(name),
                    }
                    for name in methods
                    if name in PEERS
                },
                "mismatches": mismatches,
            }
            if "upsert" in seconds:
                entry["upsert_seconds"] = statistics.median(seconds["upsert"])
                entry["upsert_spread"] = (min(seconds["upsert"]), max(seconds["upsert"]))
                entry["upsert_rss"] = max(peaks["upsert"])
            results.append(entry)
        return results
    finally:
        stop_pid(moto.pid)
        if pg:
            pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _row(r: dict[str, Any], method: str, seconds: float, rss: float, spread: tuple[float, float] | None = None) -> str:
    """One method's line: its median, and in the p-max column its slowest run against raw's median (what a
    user meets on a bad run), then the spread of its runs."""
    worst = f"{spread[1] / r['raw_seconds']:>6.2f}x" if spread else f"{'':>7}"
    noise = f"  ({spread[0]:.2f}-{spread[1]:.2f})" if spread else ""
    return (
        f"{r['rows']:>10,} {r['mb']:>6.0f}  {method:<34} {seconds:>8.2f} {r['rows'] / seconds:>11,.0f} "
        f"{r['mb'] / seconds:>7.1f} {rss:>7.0f}MB {seconds / r['raw_seconds']:>6.2f}x {worst}{noise}"
    )


def steadiness(r: dict[str, Any]) -> str | None:
    """``steadiness at N rows: slowest / fastest run: ...`` for raw and the pipeline's routes, when runs were kept."""
    runs = r.get("runs") or {}
    named = [("raw", "raw"), ("pipeline", "first load"), ("upsert", "upsert")]
    parts = [f"{label} {max(runs[m]) / min(runs[m]):.2f}x" for m, label in named if runs.get(m)]
    return f"steadiness at {r['rows']:,} rows, slowest / fastest run: {', '.join(parts)}" if parts else None


def report(results: list[dict[str, Any]], bursts: list[dict[str, Any]] | None = None) -> str:
    header = f"{'rows':>10} {'MB':>6}  {'method':<34} {'seconds':>8} {'rows/s':>11} {'MB/s':>7} {'peak RSS':>9}"
    lines = ["", header + f" {'vs raw':>7} {'p-max':>7}"]
    for r in results:
        lines.append(_row(r, "raw psql \\copy (valid rows)", r["raw_seconds"], r["raw_rss"], r["raw_spread"]))
        lines.append(_row(r, "pipeline, first load", r["pipeline_seconds"], r["pipeline_rss"], r["pipeline_spread"]))
        if "upsert_seconds" in r:
            upsert = "pipeline, upsert over loaded rows"
            lines.append(_row(r, upsert, r["upsert_seconds"], r["upsert_rss"], r.get("upsert_spread")))
        for name, peer in r.get("peers", {}).items():
            label = f"peer: {name}" + (" (WRONG ROWS)" if peer["mismatch"] else "")
            lines.append(_row(r, label, peer["seconds"], peer["rss"], peer["spread"]))
    lines += [line for line in map(steadiness, results) if line]
    for r in results:
        for name, problem in r.get("mismatches", {}).items():
            lines.append(f"{r['rows']:,} rows, {name}: {problem}: its time does not count")
    burst_lines = burst.report(bursts or [])
    lines += burst_lines[:-1]
    if len(results) > 1:
        a, b = results[0], results[-1]
        growth = b["pipeline_seconds"] / a["pipeline_seconds"]
        lines.append(
            f"scaling {a['rows']:,} -> {b['rows']:,} rows: time x{growth:.2f} (rows x{b['rows'] / a['rows']:.0f}), "
            f"peak RSS {a['pipeline_rss']:.0f} -> {b['pipeline_rss']:.0f} MB"
        )
    lines += burst_lines[-1:]  # the burst's summary, just before the peers line
    first = results[0]
    ratio = first["pipeline_seconds"] / first["raw_seconds"]
    counted = {n: p for n, p in first.get("peers", {}).items() if not p["mismatch"]}
    if counted:
        peers = ", ".join(f"{n} {p['seconds'] / first['raw_seconds']:.2f}x" for n, p in counted.items())
        lines.append(f"peers at {first['rows']:,} rows: {peers}")
    lines.append(f"{first['rows']:,}-row ratio, pipeline / raw \\copy: {ratio:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--peers-python", help="the Python of the bench venv (bench/requirements.txt): runs the peers")
    parser.add_argument("--chart", type=Path, help="write the run as a PNG here (and its figures as .json beside it)")
    parser.add_argument("--burst-files", type=int, default=400, help="files in the burst (0: no burst)")
    parser.add_argument("--burst-concurrency", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args(argv)
    results = run(args.rows, args.runs, args.peers_python)
    bursts = burst.run(args.burst_files, args.burst_concurrency) if args.burst_files else []
    if bursts:
        results[0]["burst"] = bursts
    print(report(results, bursts))
    if args.chart:
        figures = args.chart.with_suffix(".json")
        figures.parent.mkdir(parents=True, exist_ok=True)
        figures.write_text(json.dumps(results, indent=2) + "\n")
        if args.peers_python:
            chart = [args.peers_python, str(REPO / "bench" / "chart.py"), str(figures), str(args.chart)]
            subprocess.run(chart, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
