"""The dev-stack CLI: ``python -m devstack up|down|status|env|logs|demo`` (the Makefile's targets call it)."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from .stack import Settings, down, environment, function_instances, is_running, process_table, read_state, up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description="the pipeline's local dev stacks")
    parser.add_argument(
        "--stack",
        choices=("embedded", "compose"),
        default=os.environ.get("STACK") or "embedded",
        help="embedded: host processes, no Docker (default); compose: compose.yaml (needs Docker)",
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("up", help="start the stack in the background; return when every part answers")
    verbs.add_parser("down", help="stop every process the stack started and remove its state")
    verbs.add_parser("status", help="what runs where")
    verbs.add_parser("env", help="print export lines for AWS_ENDPOINT_URL, DATABASE_URL, INGEST_BUCKET, ...")
    verbs.add_parser("logs", help="follow the logs of every function instance and of the dispatcher")
    demo = verbs.add_parser("demo", help="start the stack, upload the samples, report, stop")
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.stack == "compose":
        return _compose_verb(args.verb)

    if args.verb == "up":
        started = up(settings)
        print(f"embedded stack ready in {started.get('started_in_ms', 0) / 1000:.1f}s:")
        _print_status(started)
        print('\nnext: eval "$(make -s env)"; awslocal s3 cp samples/users.csv s3://$INGEST_BUCKET/incoming/users.csv')
        return 0
    if args.verb == "down":
        down(settings)
        return 0
    if args.verb == "status":
        state = read_state(settings)
        if not state:
            print("the embedded stack is not running (start it with: make up)")
            return 3
        _print_status(state)
        return 0 if is_running(settings) else 1
    if args.verb == "env":
        state = read_state(settings)
        if not state or not state.get("ready"):
            print("echo 'the embedded stack is not running: make up' >&2; false")
            return 3
        for name, value in environment(state).items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    if args.verb == "logs":
        state = read_state(settings) or {}
        logs = [Path(f["log_file"]) for f in function_instances(state) if f.get("log_file")]
        logs.append(settings.logs / "dispatcher.log")
        if not any(p.exists() for p in logs):
            print("no logs: the embedded stack is not running (make up)")
            return 3
        os.execvp("tail", ["tail", "-n", "50", "-F", *map(str, logs)])
    if args.verb == "demo":
        from .demo import run_demo

        return run_demo(settings, keep=args.keep)
    return 2


def _compose_verb(verb: str) -> int:
    from . import compose

    if verb == "env":
        for name, value in compose.environment().items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    actions = {"up": compose.up, "down": compose.down, "status": compose.status, "logs": compose.logs}
    if verb not in actions:
        print(f"'{verb}' runs on the embedded stack only (make {verb})")
        return 2
    actions[verb]()
    return 0


def _print_status(state: dict) -> None:
    for name, pid, where, running in process_table(state):
        print(f"  {name:<32} {'running' if running else 'STOPPED':<8} pid {pid or '-':<8} {where}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:  # DockerUnavailable too
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
