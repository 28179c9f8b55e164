"""A burst of small files through the embedded stack, at several concurrencies: files/s and latency.

What AWS does on a busy morning: hundreds of small files land at once and the event source runs several
batches at a time. For each concurrency (function instances, ``INGEST_CONCURRENCY``) it starts an embedded
stack of its own (its own emulator, PostgreSQL, dispatcher and instances, through the dev-stack CLI as a user
would), warms every instance (S3's test event, straight to each), loads one file per table untimed (so the
tables exist), then uploads ``files`` files of 1,000 rows each, spread over four tables (two appends, two
upserts), from eight threads at once, and waits for every receipt. It reports files/s (files over the time
from the first upload to the last receipt) and the latency of each file from its upload to its receipt
(published right after its commit: its rows are in the table), median and p95, and how many of the
machine's cores were busy meanwhile (everything on it: the function instances, the emulator, PostgreSQL, the
uploads). Every file must end ``loaded``.

Everything here shares the machine's cores, S3's and SQS's work (the emulator's) and the uploads included:
on two cores, concurrency 1 already keeps ~1.2 of them busy (a file's download, COPY, ledger and upload of
its outputs overlap), so concurrency cannot give much more than 2 / 1.2 times its files/s. With
``--landed`` the burst is uploaded while the dispatcher is paused and the clock starts when it goes on (the
uploads' cost left out; latency counted from that moment).

    python -m devstack.burst [--files 400] [--concurrency 1 2 4] [--landed]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3

from .function import REPO, WARM_UP_EVENT, invoke_url
from .processes import listen_port
from .stack import Settings, function_instances, read_state

ROWS_PER_FILE = 1_000
UPLOADERS = 8
#: The four tables of the burst: name → (load, key column or None). Each file goes to one of them in turn.
TABLES = {
    "burst_events": ("append", None),
    "burst_readings": ("append", None),
    "burst_accounts": ("upsert", "id"),
    "burst_prices": ("upsert", "id"),
}
CONTRACT = """
table = "{table}"
keys = ["incoming/{table}/*.csv"]
load = {load}

[[columns]]
name = "id"
type = "bigint"
required = true

[[columns]]
name = "at"
type = "timestamptz"

[[columns]]
name = "label"
type = "text"

[[columns]]
name = "amount"
type = "numeric"
precision = 12
scale = 2
"""


def write_contracts(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for table, (mode, key) in TABLES.items():
        load = f'{{ mode = "{mode}", key = ["{key}"] }}' if key else f'{{ mode = "{mode}" }}'
        (folder / f"{table}.toml").write_text(CONTRACT.format(table=table, load=load))
    return folder


def burst_files(count: int, round_: int = 0) -> list[tuple[str, bytes]]:
    """``count`` files of ROWS_PER_FILE rows, each of distinct content, the tables in turn. An upsert's file
    updates rows other files of its table inserted (ids repeat every 20 files), as daily files do."""
    files = []
    tables = list(TABLES)
    for i in range(count):
        table = tables[i % len(tables)]
        n = i // len(tables)
        first = (n % 20) * ROWS_PER_FILE if TABLES[table][1] else n * ROWS_PER_FILE
        lines = ["id,at,label,amount"] + [
            f"{first + r},2026-12-0{1 + r % 9}T{r % 24:02d}:00:00Z,r{round_}-{i}-{r},{(i * 7 + r) % 100000 / 100:.2f}"
            for r in range(ROWS_PER_FILE)
        ]
        files.append((f"incoming/{table}/f{round_}_{i:05d}.csv", ("\n".join(lines) + "\n").encode()))
    return files


def _cli(verb: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "devstack", verb], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"devstack {verb} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


class Receipts:
    """Reads the receipts tap in a thread: the time each key's receipt arrived, and its status."""

    def __init__(self, sqs: Any, queue_url: str):
        self.sqs, self.queue_url = sqs, queue_url
        self.arrived: dict[str, tuple[float, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            batch = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            now = time.perf_counter()
            messages = batch.get("Messages", [])
            for message in messages:
                try:
                    receipt = json.loads(json.loads(message["Body"])["Message"])
                    self.arrived.setdefault(receipt["key"], (now, receipt["status"]))
                except (ValueError, KeyError, TypeError):  # not a receipt (a message someone else published)
                    continue
            if messages:
                self.sqs.delete_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
                )

    def wait_for(self, keys: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(k in self.arrived for k in keys):
                return
            time.sleep(0.01)
        missing = [k for k in keys if k not in self.arrived]
        raise RuntimeError(f"{len(missing)} of {len(keys)} receipts did not arrive within {timeout:.0f}s")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def busy_seconds() -> float:
    """CPU seconds the machine's cores have been busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def run_burst(concurrency: int, files: int, workdir: Path, landed: bool = False) -> dict[str, Any]:
    """One embedded stack with ``concurrency`` function instances, one burst through it."""
    env = {
        **os.environ,
        "INGEST_STACK_DIR": str(workdir / f"stack-{concurrency}"),
        "INGEST_EMULATOR_PORT": str(listen_port()),
        "INGEST_FUNCTION_PORT": str(listen_port()),
        "INGEST_CONCURRENCY": str(concurrency),
        "INGEST_CONTRACTS_DIR": str(write_contracts(workdir / "contracts")),
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }
    for name in ("DATABASE_URL", "AWS_ENDPOINT_URL"):
        env.pop(name, None)
    _cli("up", env)
    try:
        stack = dict(line.removeprefix("export ").split("=", 1) for line in _cli("env", env).splitlines())
        stack = {k: v.strip("'") for k, v in stack.items()}
        session = boto3.session.Session(
            aws_access_key_id="test", aws_secret_access_key="test", region_name=stack["AWS_DEFAULT_REGION"]
        )
        s3 = session.client("s3", endpoint_url=stack["AWS_ENDPOINT_URL"])
        sqs = session.client("sqs", endpoint_url=stack["AWS_ENDPOINT_URL"])
        receipts = Receipts(sqs, sqs.get_queue_url(QueueName="ingest-receipts-tap")["QueueUrl"])
        bucket = stack["INGEST_BUCKET"]
        try:
            state = read_state(Settings.from_env(env))
            assert state is not None
            for instance in function_instances(state):  # the queue is empty: no invocation runs meanwhile
                invoke_url(instance["invoke_url"], WARM_UP_EVENT, 60)
            seeds = burst_files(len(TABLES), round_=1)  # untimed: each table made by its first load
            for key, data in seeds:
                s3.put_object(Bucket=bucket, Key=key, Body=data)
            receipts.wait_for([k for k, _ in seeds], 120)

            work = burst_files(files)
            keys = [k for k, _ in work]
            dispatcher = state["dispatcher"]["pid"]
            if landed:  # the burst lands while nothing consumes it; the clock starts when the dispatcher goes on
                os.kill(dispatcher, signal.SIGSTOP)
            try:
                uploaded: dict[str, float] = {}

                def upload(item: tuple[str, bytes]) -> None:
                    s3.put_object(Bucket=bucket, Key=item[0], Body=item[1])
                    uploaded[item[0]] = time.perf_counter()

                started, busy = time.perf_counter(), busy_seconds()
                with ThreadPoolExecutor(UPLOADERS) as pool:
                    list(pool.map(upload, work))
            finally:
                if landed:
                    started, busy = time.perf_counter(), busy_seconds()
                    uploaded = dict.fromkeys(keys, started)
                    os.kill(dispatcher, signal.SIGCONT)
            receipts.wait_for(keys, 600)
            busy = busy_seconds() - busy
        finally:
            receipts.stop()
        ended = max(receipts.arrived[k][0] for k in keys)
        statuses = {receipts.arrived[k][1] for k in keys}
        if statuses != {"loaded"}:
            raise RuntimeError(f"concurrency {concurrency}: the burst's files ended {sorted(statuses)}, not all loaded")
        latencies = sorted(receipts.arrived[k][0] - uploaded[k] for k in keys)
        return {
            "concurrency": concurrency,
            "files": files,
            "seconds": ended - started,
            "files_per_second": files / (ended - started),
            "latency_median": statistics.median(latencies),
            "latency_p95": latencies[max(0, round(0.95 * len(latencies)) - 1)],
            "cores_busy": busy / (ended - started),
        }
    finally:
        _cli("down", env)


def run(files: int, levels: list[int], landed: bool = False) -> list[dict[str, Any]]:
    workdir = Path(tempfile.mkdtemp(prefix="ingest-burst-"))
    try:
        results = []
        for concurrency in levels:
            print(f"\nburst of {files} files at concurrency {concurrency} ...", flush=True)
            result = run_burst(concurrency, files, workdir, landed)
            print(
                f"  {result['files_per_second']:.1f} files/s ({result['seconds']:.1f} s), latency median "
                f"{result['latency_median']:.2f} s, p95 {result['latency_p95']:.2f} s, "
                f"{result['cores_busy']:.2f} cores busy",
                flush=True,
            )
            results.append(result)
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(results: list[dict[str, Any]]) -> list[str]:
    """The burst's rows of the bench table, and its summary line (the last of these)."""
    if not results:
        return []
    files = results[0]["files"]
    lines = [
        "",
        f"burst of {files} files ({ROWS_PER_FILE:,} rows each, {len(TABLES)} tables) through the embedded stack:",
        f"  {'concurrency':>11} {'seconds':>8} {'files/s':>8} {'latency median':>15} {'p95':>7} {'cores busy':>11}"
        f" {'vs 1':>6}",
    ]
    one = next((r for r in results if r["concurrency"] == 1), results[0])
    for r in results:
        lines.append(
            f"  {r['concurrency']:>11} {r['seconds']:>8.1f} {r['files_per_second']:>8.1f} "
            f"{r['latency_median']:>14.2f}s {r['latency_p95']:>6.2f}s {r['cores_busy']:>11.2f} "
            f"{r['files_per_second'] / one['files_per_second']:>5.2f}x"
        )
    summary = ", ".join(f"{r['concurrency']} {r['files_per_second']:.1f} files/s" for r in results)
    lines.append(f"burst of {files} files: concurrency {summary}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.burst", description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--landed", action="store_true", help="upload the burst first, then start the clock")
    args = parser.parse_args(argv)
    print("\n".join(report(run(args.files, args.concurrency, args.landed))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
