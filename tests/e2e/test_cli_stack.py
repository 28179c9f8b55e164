"""The `ingest` verbs that talk to a running stack, through the entry point, against the e2e stack."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import SAMPLES
from tests.e2e.conftest import unique_users
from tests.integration.test_cli import ingest

pytestmark = pytest.mark.stack


def test_upload_status_and_errors(stack, tmp_path):
    data, _ids = unique_users(rows=3, bad=1)
    path = tmp_path / "fresh.csv"
    path.write_bytes(data)
    key = f"incoming/users/cli_{uuid.uuid4().hex[:8]}.csv"
    uploaded = ingest("upload", str(path), "--key", key, "--json", env=stack.env)
    assert uploaded.returncode == 0, uploaded.stderr
    receipt = json.loads(uploaded.stdout)
    assert receipt["status"] == "loaded" and receipt["rows_loaded"] == 3 and receipt["rows_rejected"] == 1

    status = ingest("status", "--limit", "50", env=stack.env)
    assert status.returncode == 0 and key in status.stdout
    hour = status.stdout.splitlines()[0]  # the last hour: files by outcome, rows, lag from upload to commit
    assert hour.startswith("last hour: ") and "loaded" in hour and "upload to commit p50" in hour, hour
    summary = json.loads(ingest("status", "--json", env=stack.env).stdout)["last_hour"]
    assert summary["files"]["loaded"] >= 1 and summary["rows_loaded"] >= 3 and summary["lag_p95_seconds"] >= 0

    # the file's metrics are a line of the function's log, in the Embedded Metric Format, as on AWS
    metrics = [json.loads(line) for line in stack.function_log_lines() if '"CloudWatchMetrics"' in line]
    [mine] = [m for m in metrics if m.get("key") == key]
    assert (mine["outcome"], mine["RowsLoaded"], mine["RowsRejected"]) == ("loaded", [3.0], [1.0]) and mine["Lag"]

    errors = ingest("errors", key, "--json", env=stack.env)
    assert errors.returncode == 0, errors.stderr
    rows = json.loads(errors.stdout)["errors"]
    assert [r["rule"] for r in rows] == ["pattern"] and rows[0]["value"] == "not-an-email"


def test_upload_of_a_file_no_contract_claims_exits_1(stack):
    key = f"incoming/inventory_{uuid.uuid4().hex[:8]}.csv"
    result = ingest("upload", str(SAMPLES / "inventory.csv"), "--key", key, env=stack.env)
    assert result.returncode == 1 and "REJECTED" in result.stdout
    summary = ingest("errors", key, env=stack.env)
    assert summary.returncode == 0 and "no_contract" in summary.stdout
