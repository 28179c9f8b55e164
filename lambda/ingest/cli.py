"""``ingest``: the command line for people who write contracts and run the pipeline.

Every verb is a thin call into the library the function uses. Exit codes: 0 ok, 1 the file is (or
would be) rejected or a check found problems, 2 usage, 3 an error reaching the stack or the database.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from .contract import (
    LEDGER_TABLE,
    ContractError,
    ContractRegistry,
    contracts_overlap,
    default_contracts_dir,
    pipeline_schema,
)
from .processing import judge_file
from .rejection import FileRejected

OK, REJECTED, USAGE, ERROR = 0, 1, 2, 3
READ_BYTES = 1024 * 1024


class StackError(click.ClickException):
    exit_code = ERROR


def _registry(contracts_dir: str | None) -> ContractRegistry:
    try:
        return ContractRegistry.from_directory(
            contracts_dir or os.environ.get("INGEST_CONTRACTS_DIR") or default_contracts_dir()
        )
    except ContractError as exc:
        raise click.ClickException(str(exc)) from None


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--contracts", "contracts_dir", envvar="INGEST_CONTRACTS_DIR", help="folder of contract files")
@click.pass_context
def main(ctx: click.Context, contracts_dir: str | None) -> None:
    """Check files against table contracts, draft contracts, and run the pipeline's stack.

    \b
    Examples:
      ingest check samples/users_with_errors.csv
      ingest contract lint
      ingest status
    """
    ctx.obj = {"contracts_dir": contracts_dir}


# --- check ------------------------------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--contract", "contract_name", help="contract to check against (default: the one the key maps to)")
@click.option("--key", help="the object key it would be uploaded as (default: incoming/<file name>)")
@click.option("--show", default=10, show_default=True, help="how many rejected rows to list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def check(
    obj: dict[str, Any], file: Path, contract_name: str | None, key: str | None, show: int, as_json: bool
) -> None:
    """Run the real normalization and validation on a local file; no stack needed.

    Exits 1 when the pipeline would reject the file.

    \b
    Example:
      ingest check samples/users_with_errors.csv
      ingest check exports/march.csv --contract users --json
    """
    registry = _registry(obj["contracts_dir"])
    key = key or f"incoming/{file.name}"
    if contract_name and contract_name not in registry.contracts:
        raise click.UsageError(f"no contract named {contract_name!r}; known: {', '.join(registry.contracts)}")
    if not contract_name:
        from .service import check_key, choose_contract

        try:
            check_key(key)
            choose_contract(registry, key)
        except FileRejected as exc:  # what the pipeline would answer for this key
            verdict = {
                "file": str(file),
                "key": key,
                "verdict": "rejected",
                "reason": exc.reason,
                "message": exc.message,
            }
            hint = "  (check it against a contract anyway with --contract NAME, or name its key with --key)"
            _emit(as_json, verdict, f"{file}: REJECTED ({exc.reason}): {exc.message}\n{hint}")
            sys.exit(REJECTED)
    contract = registry[contract_name] if contract_name else registry.match(key)[0]
    started = time.monotonic()
    # the function's own verdict: its engines in turn (the exact one from the first byte, should the columnar
    # one hand the file over), its limits by the file's size as S3 would state it
    outcome, rejection = judge_file(
        lambda: _read_with_progress(file, as_json),
        contract,
        lambda _block: None,
        lambda _block: None,
        file.stat().st_size,
    )
    first_errors = [
        {"line": e.line, "column": e.column, "rule": e.rule, "value": e.value, "message": e.message}
        for e in outcome.first_errors[:show]
    ]
    fmt = outcome.text_format
    data = {
        "file": str(file),
        "key": key,
        "contract": contract.name,
        "table": contract.target,
        "verdict": "rejected" if rejection else "loadable",
        "reason": rejection.reason if rejection else None,
        "message": rejection.message if rejection else None,
        "rows_total": outcome.rows_total,
        "rows_valid": outcome.rows_valid,
        "rows_rejected": outcome.rows_rejected,
        "errors_by_rule": dict(outcome.errors_by_rule),
        "first_errors": first_errors,
        "encoding": fmt.encoding if fmt else None,
        "delimiter": fmt.delimiter if fmt else None,
        "compression": fmt.compression if fmt else None,
        "engine": outcome.engine,
        "seconds": round(time.monotonic() - started, 3),
    }
    lines = [
        f"{file}  ->  contract {contract.name} (table {contract.target})",
        f"  read as {data['encoding']}, delimiter {data['delimiter']!r}"
        + (f", {data['compression']}" if data["compression"] else "")
        + f", {data['engine']} engine, {data['seconds']}s",
        f"  rows: {outcome.rows_total:,} read, {outcome.rows_valid:,} valid, {outcome.rows_rejected:,} rejected",
    ]
    if outcome.errors_by_rule:
        lines.append("  by rule: " + ", ".join(f"{rule} {n}" for rule, n in sorted(outcome.errors_by_rule.items())))
    for e in first_errors:
        lines.append(f"    line {e['line']:>6}  {e['column'] or '(row)':<14} {e['rule']:<14} {e['message']}")
    if len(outcome.first_errors) > show:
        lines.append(f"    ... ({outcome.rows_rejected - show} more rows rejected)")
    lines.append(f"  REJECTED ({rejection.reason}): {rejection.message}" if rejection else "  OK: the file would load")
    _emit(as_json, data, "\n".join(lines))
    sys.exit(REJECTED if rejection else OK)


def _read_with_progress(file: Path, quiet: bool) -> Iterator[bytes]:
    size = file.stat().st_size
    show = not quiet and size > 20 * READ_BYTES and sys.stderr.isatty()
    with open(file, "rb") as handle:
        if not show:
            yield from iter(lambda: handle.read(READ_BYTES), b"")
            return
        with click.progressbar(length=size, label="checking", file=sys.stderr) as bar:
            for chunk in iter(lambda: handle.read(READ_BYTES), b""):
                bar.update(len(chunk))
                yield chunk


# --- contracts --------------------------------------------------------------------------------------


@main.group()
def contract() -> None:
    """Draft and check contract files."""


@contract.command("lint")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def contract_lint(obj: dict[str, Any], as_json: bool) -> None:
    """Every contract parses, names known types, and no two claim the same keys.

    \b
    Example:
      ingest contract lint
    """
    registry = _registry(obj["contracts_dir"])
    problems = []
    contracts = list(registry)
    for i, a in enumerate(contracts):
        for b in contracts[i + 1 :]:
            for x, y, key in contracts_overlap(a, b):
                problems.append(f"{a.name} and {b.name} both claim keys such as {key!r} ({x}, {y})")
    data = {"contracts": [c.name for c in contracts], "problems": problems}
    text = "\n".join(
        [f"{len(contracts)} contracts: {', '.join(data['contracts'])}"]
        + [f"  PROBLEM: {p}" for p in problems]
        + ([] if problems else ["  OK"])
    )
    _emit(as_json, data, text)
    sys.exit(REJECTED if problems else OK)


#: How much of a file's beginning (its text, decompressed) ``contract new`` holds for its sample; the draft is
#: then checked against the whole file, streamed.
DRAFT_BYTES = 16 * READ_BYTES


def _text_head(file: Path, limit: int) -> tuple[bytes, bool]:
    """The file's first ``limit`` bytes of text (decompressed, if it is compressed), ending with a whole line
    when there is more (the drafter checks its draft against every row it is given, and a row cut short
    would fail it), and whether that is the whole file."""
    from .reading import inspect

    with file.open("rb") as handle:
        source = inspect(iter(lambda: handle.read(READ_BYTES), b""))
        head = bytearray()
        for chunk in source.chunks():
            head += chunk
            if len(head) > limit:
                del head[limit:]
                return bytes(head[: head.rfind(b"\n") + 1] or head), False
    return bytes(head), True


@contract.command("new")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="contract (and table) name: a lower-case SQL identifier")
@click.option("--rows", default=10_000, show_default=True, help="how many rows to infer types from")
@click.option("--schema", default=None, help="the schema the table lands in (default: public)")
@click.pass_obj
def contract_new(obj: dict[str, Any], file: Path, name: str, rows: int, schema: str | None) -> None:
    """Draft a contract from a sample CSV (types, required columns, key candidates), to edit by hand.

    The draft loads its file unchanged (codes with leading zeros stay text, only empty cells are NULL,
    headers map to columns as the loader maps them) and claims no key an existing contract claims. Typed
    from the first --rows rows, it is then checked against every row of the file, streamed, and mended
    where a later row would be rejected or changed (each change is a comment).

    \b
    Example:
      ingest contract new exports/orders.csv --name orders > lambda/contracts/orders.toml
      ingest contract new exports/orders.csv --name orders --schema raw > lambda/contracts/orders.toml
    """
    from .drafting import draft_contract, draft_keys, key_suffix

    try:
        existing = [c for c in _registry(obj["contracts_dir"]) if c.name != name]
    except click.ClickException:
        existing = []  # no contracts yet (or none readable): nothing to collide with
    suffix = key_suffix(file.name)
    for note in draft_keys(name, existing, suffix)[1]:
        click.echo(note, err=True)
    try:
        head, _whole = _text_head(file, DRAFT_BYTES)

        def whole_file() -> Iterable[bytes]:
            with file.open("rb") as handle:
                yield from iter(lambda: handle.read(READ_BYTES), b"")

        click.echo(draft_contract(head, name, rows, existing, suffix, read_all=whole_file, schema=schema))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except FileRejected as rejection:  # the loader would reject the file too: no draft could load it
        click.echo(f"{file}: cannot draft a contract ({rejection.reason}): {rejection.message}", err=True)
        sys.exit(REJECTED)


def _sql_engine() -> Any:
    """A SQLAlchemy engine on the stack's database (or DATABASE_URL), without a pool."""
    import sqlalchemy as sa

    from .adapters.postgres import _connect

    url = _stack_env()["DATABASE_URL"]
    return sa.create_engine("postgresql+psycopg://", creator=lambda: _connect(url, 5), poolclass=sa.NullPool)


def _chosen_contracts(obj: dict[str, Any], name: str | None) -> list[Any]:
    """Every contract, or the one named."""
    registry = _registry(obj["contracts_dir"])
    contracts = [c for c in registry if name in (None, c.name)]
    if not contracts:
        raise click.UsageError(f"no contract named {name!r} (contracts: {', '.join(c.name for c in registry)})")
    return contracts


def _plans(contracts: list[Any]) -> list[Any]:
    """Each contract compared with its live table in the stack's database."""
    from .adapters.evolution import compare

    engine = _sql_engine()
    try:
        with engine.connect() as conn:
            return [compare(conn, c) for c in contracts]
    except Exception as exc:
        raise StackError(f"cannot compare with the database: {exc}") from None
    finally:
        engine.dispose()


def _plan_text(plan: Any) -> str:
    if not plan.differences:
        return f"{plan.contract} → table {plan.table}: matches (or does not exist yet)"
    return f"{plan.contract} → table {plan.table}:\n{plan.describe()}"


def _plan_data(plan: Any) -> dict[str, Any]:
    return {
        "contract": plan.contract,
        "table": plan.table,
        "differences": [{"kind": d.kind, "what": d.what, "ddl": d.ddl} for d in plan.differences],
    }


@contract.command("diff")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def contract_diff(obj: dict[str, Any], name: str | None, as_json: bool) -> None:
    """How each contract (or NAME) differs from its live table, additive or breaking, with the DDL.

    Exits 1 if any difference is breaking (the function would fail such files with
    contract_table_mismatch); additive ones the function applies by itself on the next load.

    \b
    Example:
      ingest contract diff users
    """
    plans = _plans(_chosen_contracts(obj, name))
    _emit(as_json, {"plans": [_plan_data(p) for p in plans]}, "\n".join(_plan_text(p) for p in plans))
    sys.exit(REJECTED if any(p.breaking for p in plans) else OK)


@contract.command("migrate")
@click.argument("name", required=False)
@click.option("--apply", "apply_changes", is_flag=True, help="run the additive DDL (else only print it)")
@click.pass_obj
def contract_migrate(obj: dict[str, Any], name: str | None, apply_changes: bool) -> None:
    """Print the additive DDL that brings each table (or NAME's) up to its contract; run it with --apply.

    Breaking differences are never applied: they are printed, for you to decide, and the exit code is 1.

    \b
    Example:
      ingest contract migrate users --apply
    """
    from .adapters.evolution import compare_locked

    contracts = {c.name: c for c in _chosen_contracts(obj, name)}
    plans = _plans(list(contracts.values()))
    for plan in plans:
        for d in plan.additive:
            click.echo(d.ddl)
        for d in plan.breaking:
            click.echo(f"-- not applied (breaking): {d.what}\n-- {d.ddl}")
    additive = [p for p in plans if p.additive]
    if apply_changes and additive:
        engine = _sql_engine()
        try:
            for plan in additive:
                with engine.begin() as conn:  # as the function does: under the table's lock, compared again
                    fresh = compare_locked(conn, contracts[plan.contract])
                    fresh.apply(conn)
                click.echo(f"applied to {plan.table}: {len(fresh.additive)} change(s)", err=True)
        finally:
            engine.dispose()
    elif additive:
        click.echo("(not applied: add --apply; the function also applies these on the next load)", err=True)
    sys.exit(REJECTED if any(p.breaking for p in plans) else OK)


# --- the running stack --------------------------------------------------------------------------------


def _stack_env() -> dict[str, str]:
    """The running stack's settings: from the environment, else from the embedded stack's state file."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "INGEST_", "DATABASE_URL"))}
    if "DATABASE_URL" in env and "AWS_ENDPOINT_URL" in env:
        return env
    try:
        from devstack.stack import Settings, environment, read_state

        state = read_state(Settings.from_env())
    except ImportError:
        state = None
    if state and state.get("ready"):
        return {**environment(state), **env}
    if "DATABASE_URL" in env:
        return env
    raise StackError("no running stack: start one with `make up`, or set DATABASE_URL (and AWS_ENDPOINT_URL)")


def _database(env: dict[str, str]) -> Any:
    import psycopg
    from psycopg.rows import dict_row

    try:
        return psycopg.connect(env["DATABASE_URL"], row_factory=dict_row, connect_timeout=5)
    except psycopg.Error as exc:
        raise StackError(f"cannot reach the database: {exc}") from None


def _aws(env: dict[str, str], service: str) -> Any:
    import boto3

    session = boto3.session.Session(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
    )
    return session.client(service, endpoint_url=env.get("AWS_ENDPOINT_URL"))


def _ledger(conn: Any, env: dict[str, str]) -> str | None:
    """The ledger's qualified name: in the pipeline's schema (INGEST_SCHEMA, else ingest_ledger), or still in public
    where no function has started since it moved (the function moves it on its first start); None if none."""
    schema = pipeline_schema(env)
    for name in (f'"{schema}".{LEDGER_TABLE}', f"public.{LEDGER_TABLE}"):
        if conn.execute("SELECT to_regclass(%s) IS NOT NULL AS e", (name,)).fetchone()["e"]:
            return name
    return None


def _ledger_rows(env: dict[str, str], where: str = "", params: tuple[Any, ...] = (), limit: int = 20) -> list[dict]:
    with _database(env) as conn:
        ledger = _ledger(conn, env)
        if ledger is None:
            return []
        return conn.execute(
            "SELECT id, md5, bucket, object_key, contract, table_name, status, reason, error, rows_total, "
            f"rows_valid, rows_rejected, rows_loaded, errors_key, finished_at, duration_ms FROM {ledger} {where} "
            "ORDER BY id DESC LIMIT %s",
            (*params, limit),
        ).fetchall()


@main.command()
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def status(limit: int, as_json: bool) -> None:
    """The ledger of the running stack (or DATABASE_URL): recent files, status, counts, durations.

    \b
    Example:
      ingest status --limit 5
    """
    env = _stack_env()
    rows = _ledger_rows(env, limit=limit)
    hour = _last_hour(env)
    lines = [_hour_line(hour)] if hour else []
    lines += [f"{'id':>5}  {'status':<9} {'table':<16} {'rows':>9} {'rejected':>8} {'ms':>7}  {'key':<44} reason"]
    for r in rows:
        lines.append(
            f"{r['id']:>5}  {r['status']:<9} {r['table_name'] or '-':<16} {r['rows_loaded'] or 0:>9,} "
            f"{r['rows_rejected'] or 0:>8,} {r['duration_ms'] or 0:>7}  {r['object_key']:<44} {r['reason'] or ''}"
        )
    if not rows:
        lines.append("  (no files yet)")
    _emit(as_json, {"last_hour": hour, "files": rows}, "\n".join(lines))


def _last_hour(env: dict[str, str]) -> dict[str, Any] | None:
    """The ledger's last hour: files by outcome, rows loaded (per second over the hour, and while loading),
    and the lag from upload to commit (median, 95th percentile); None without a ledger."""
    with _database(env) as conn:
        ledger = _ledger(conn, env)
        if ledger is None:
            return None
        columns = conn.execute(
            "SELECT count(*) FILTER (WHERE attname = 'lag_ms') AS lag FROM pg_attribute "
            "WHERE attrelid = CAST(%s AS regclass) AND NOT attisdropped",
            (ledger,),
        ).fetchone()
        assert columns is not None
        recent = "finished_at > now() - interval '1 hour'"
        outcomes = conn.execute(
            f"SELECT status, count(*) AS n FROM {ledger} WHERE {recent} GROUP BY status ORDER BY status"
        ).fetchall()
        lag = "lag_ms" if columns["lag"] else "NULL::bigint"
        loads = conn.execute(
            f"SELECT coalesce(sum(rows_loaded), 0) AS rows, coalesce(sum(duration_ms), 0) AS ms, "
            f"percentile_cont(0.5) WITHIN GROUP (ORDER BY {lag}) AS p50, "
            f"percentile_cont(0.95) WITHIN GROUP (ORDER BY {lag}) AS p95 "
            f"FROM {ledger} WHERE status = 'loaded' AND {recent}"
        ).fetchone()
    assert loads is not None
    return {
        "files": {o["status"]: o["n"] for o in outcomes},
        "rows_loaded": int(loads["rows"]),
        "rows_per_second": round(int(loads["rows"]) / 3600, 1),
        "rows_per_second_loading": round(int(loads["rows"]) / (loads["ms"] / 1000), 1) if loads["ms"] else None,
        "lag_p50_seconds": round(loads["p50"] / 1000, 2) if loads["p50"] is not None else None,
        "lag_p95_seconds": round(loads["p95"] / 1000, 2) if loads["p95"] is not None else None,
    }


def _hour_line(hour: dict[str, Any]) -> str:
    files = hour["files"]
    if not files:
        return "last hour: no files"
    outcomes = ", ".join(f"{status} {n:,}" for status, n in files.items())
    loading = f", {hour['rows_per_second_loading']:,.0f}/s while loading" if hour["rows_per_second_loading"] else ""
    lag = (
        f"; upload to commit p50 {hour['lag_p50_seconds']:.2f} s, p95 {hour['lag_p95_seconds']:.2f} s"
        if hour["lag_p50_seconds"] is not None
        else ""
    )
    return (
        f"last hour: {sum(files.values()):,} files ({outcomes}); {hour['rows_loaded']:,} rows loaded "
        f"({hour['rows_per_second']:,.1f}/s{loading}){lag}"
    )


def _find(env: dict[str, str], ref: str) -> dict[str, Any]:
    rows = _ledger_rows(env, "WHERE md5 = %s OR object_key = %s", (ref, ref), limit=1)
    if not rows:
        raise click.ClickException(f"no file {ref!r} in the ledger (give an object key or an MD5)")
    return rows[0]


@main.command()
@click.argument("ref", metavar="KEY|MD5")
@click.option("--json", "as_json", is_flag=True)
def errors(ref: str, as_json: bool) -> None:
    """The rejected rows of one file, read back from errors/.

    \b
    Example:
      ingest errors incoming/users_with_errors.csv
    """
    env = _stack_env()
    entry = _find(env, ref)
    if not entry["errors_key"]:
        _emit(as_json, {"file": entry, "errors": []}, f"{entry['object_key']}: no rejected rows ({entry['status']})")
        return
    s3 = _aws(env, "s3")
    body = s3.get_object(Bucket=entry["bucket"], Key=entry["errors_key"])["Body"].read().decode()
    if entry["errors_key"].endswith(".json"):
        summary = json.loads(body)
        _emit(
            as_json,
            summary,
            f"{entry['object_key']}: {summary.get('status')} ({summary.get('reason')}): {summary.get('message')}",
        )
        return
    rows = list(csv.DictReader(io.StringIO(body)))
    lines = [f"{entry['object_key']}: {len(rows)} problems (s3://{entry['bucket']}/{entry['errors_key']})"]
    lines += [f"  line {r['line']:>6}  {r['column'] or '(row)':<14} {r['rule']:<14} {r['message']}" for r in rows]
    _emit(as_json, {"file": entry, "errors": rows}, "\n".join(lines))


@main.command()
@click.argument("ref", metavar="KEY|S3URI|MD5", required=False)
@click.option("--dead-letters", is_flag=True, help="move every message of the dead-letter queue back instead")
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait for the receipt")
@click.option("--json", "as_json", is_flag=True)
def replay(ref: str | None, dead_letters: bool, wait: bool, as_json: bool) -> None:
    """Run one object through the function again (e.g. one that failed while a dependency was down).

    It goes through the same queue and function as an upload; the ledger keeps it exactly-once, so it is
    safe to repeat: content that loaded comes back ``skipped``.

    \b
    Examples:
      ingest replay incoming/users.csv
      ingest replay s3://ingest-bucket/incoming/users.csv
      ingest replay --dead-letters
    """
    env = _stack_env()
    sqs = _aws(env, "sqs")
    if dead_letters:
        moved = _redrive(sqs, env["INGEST_DLQ_URL"], env["INGEST_QUEUE_URL"])
        _emit(as_json, {"moved": moved}, f"moved {moved} message(s) from the dead-letter queue back to the queue")
        return
    if not ref:
        raise click.UsageError("give KEY|MD5, or --dead-letters")
    if ref.startswith("s3://"):
        bucket, _, key = ref.removeprefix("s3://").partition("/")
        if not key:
            raise click.UsageError(f"{ref!r} names no object: s3://BUCKET/KEY")
    elif ref.startswith("incoming/"):
        bucket, key = env.get("INGEST_BUCKET", ""), ref
    else:
        entry = _find(env, ref)
        bucket, key = entry["bucket"], entry["object_key"]
    since = time.time()
    sqs.send_message(QueueUrl=env["INGEST_QUEUE_URL"], MessageBody=json.dumps(_s3_event(bucket, key)))
    _finish(env, key, since, wait, as_json, f"queued s3://{bucket}/{key} for the function")


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", help="object key (default: incoming/<file name>)")
@click.option("--wait/--no-wait", default=True, show_default=True, help="wait for the receipt")
@click.option("--json", "as_json", is_flag=True)
def upload(file: Path, key: str | None, wait: bool, as_json: bool) -> None:
    """Upload a file to the running stack and wait for its receipt.

    \b
    Example:
      ingest upload samples/users.csv --key incoming/users/today.csv
    """
    env = _stack_env()
    key = key or f"incoming/{file.name}"
    since = time.time()
    _aws(env, "s3").upload_file(str(file), env["INGEST_BUCKET"], key)
    _finish(env, key, since, wait, as_json, f"uploaded {file} to s3://{env['INGEST_BUCKET']}/{key}")


def _finish(env: dict[str, str], key: str, since: float, wait: bool, as_json: bool, done: str) -> None:
    if not wait:
        _emit(as_json, {"key": key}, done)
        return
    receipt = _wait_for_receipt(env, key, since)
    if receipt is None:
        raise StackError(f"{done}, but no receipt arrived within 120 s (see: make logs)")
    text = f"{done}\n{receipt['status'].upper()}: " + (
        f"{receipt['rows_loaded']:,} rows into {receipt['table']}, {receipt['rows_rejected']:,} rejected"
        if receipt["status"] == "loaded"
        else (receipt.get("message") or "")
    )
    _emit(as_json, receipt, text)
    sys.exit({"loaded": OK, "skipped": OK, "rejected": REJECTED}.get(receipt["status"], ERROR))


def _wait_for_receipt(env: dict[str, str], key: str, since: float) -> dict[str, Any] | None:
    from .adapters.sns import wait_for_receipt

    sqs = _aws(env, "sqs")
    tap = sqs.get_queue_url(QueueName="ingest-receipts-tap")["QueueUrl"]
    receipt = wait_for_receipt(sqs, tap, key, datetime.fromtimestamp(since, UTC))
    if receipt is not None:
        receipt.pop("_subject", None)
    return receipt


def _s3_event(bucket: str, key: str) -> dict[str, Any]:
    from urllib.parse import quote_plus

    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "ingest-replay",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": quote_plus(key)},
                },
            }
        ]
    }


def _redrive(sqs: Any, source: str, target: str) -> int:
    moved = 0
    while True:
        batch = sqs.receive_message(QueueUrl=source, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if not batch:
            return moved
        for message in batch:
            sqs.send_message(QueueUrl=target, MessageBody=message["Body"])
            sqs.delete_message(QueueUrl=source, ReceiptHandle=message["ReceiptHandle"])
            moved += 1


if __name__ == "__main__":
    main()
