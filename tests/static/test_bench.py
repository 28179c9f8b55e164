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
