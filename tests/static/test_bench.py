"""The benchmark's own measuring: the function's peak RSS must be the function's, not the bench's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devstack.bench import PEAK_RSS


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_child_peak_rss_does_not_count_the_parent_memory():
    ballast = bytearray(300 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page: 300 MB resident in this process
    code = (
        PEAK_RSS + "\nimport resource\nprint(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    own, inherited = map(
        float, subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True).stdout.split()
    )
    assert own < 100 < 300 <= inherited  # getrusage reports the parent's RSS at exec; VmHWM does not
    del ballast


def _results(peers: dict[str, tuple[float, str | None]]) -> list[dict]:
    return [
        {
            "rows": 1_000_000,
            "mb": 100.0,
            "rows_loaded": 990_000,
            "raw_seconds": 2.0,
            "raw_rss": 10.0,
            "raw_spread": (1.9, 2.1),
            "pipeline_seconds": 2.5,
            "pipeline_spread": (2.4, 2.6),
            "pipeline_rss": 200.0,
            "upsert_seconds": 3.0,
            "upsert_rss": 210.0,
            "peers": {
                name: {"seconds": s, "spread": (s, s), "rss": 900.0, "mismatch": problem}
                for name, (s, problem) in peers.items()
            },
            "mismatches": {name: problem for name, (_s, problem) in peers.items() if problem},
        }
    ]


def test_the_report_ends_with_the_peers_line_then_the_ratio_line_and_leaves_out_wrong_routes():
    from devstack.bench import report

    text = report(_results({"polars + COPY": (3.8, None), "pandas + pandera + COPY": (17.0, "loaded 5 rows")}))
    lines = text.splitlines()
    assert lines[-1] == "1,000,000-row ratio, pipeline / raw \\copy: 1.25x"
    assert lines[-2] == "peers at 1,000,000 rows: polars + COPY 1.90x"  # the wrong one's time does not count
    assert "peer: pandas + pandera + COPY (WRONG ROWS)" in text
    assert "1,000,000 rows, pandas + pandera + COPY: loaded 5 rows: its time does not count" in text
    assert "peers at" not in report(_results({}))  # no peers run: no peers line


def test_the_burst_is_summed_up_in_the_line_before_the_peers_line():
    from devstack.bench import report

    bursts = [
        {
            "concurrency": c,
            "files": 400,
            "seconds": 400 / fps,
            "files_per_second": fps,
            "latency_median": 1.0,
            "latency_p95": 2.0,
            "cores_busy": 1.5,
        }
        for c, fps in ((1, 20.0), (2, 30.5), (4, 41.0))
    ]
    lines = report(_results({"polars + COPY": (3.8, None)}), bursts).splitlines()
    assert lines[-1] == "1,000,000-row ratio, pipeline / raw \\copy: 1.25x"
    assert lines[-2] == "peers at 1,000,000 rows: polars + COPY 1.90x"
    assert lines[-3] == "burst of 400 files: concurrency 1 20.0 files/s, 2 30.5 files/s, 4 41.0 files/s"
    assert any(line.split()[:3] == ["4", "9.8", "41.0"] and line.endswith("2.05x") for line in lines)


def test_each_route_shows_its_slowest_run_and_how_steady_it_was():
    from devstack.bench import report

    results = _results({})
    results[0]["runs"] = {"raw": [2.0, 2.1, 2.0], "pipeline": [2.4, 2.5, 3.6], "upsert": [2.8, 2.9, 3.0]}
    results[0]["pipeline_spread"] = (2.4, 3.6)
    lines = report(results).splitlines()
    first_load = next(line for line in lines if "pipeline, first load" in line)
    assert first_load.split()[-3:] == ["1.25x", "1.80x", "(2.40-3.60)"]  # median, p-max: 3.6 s / raw 2.0 s
    assert "steadiness at 1,000,000 rows, slowest / fastest run: raw 1.05x, first load 1.50x, upsert 1.07x" in lines
    assert lines[-1] == "1,000,000-row ratio, pipeline / raw \\copy: 1.25x"
