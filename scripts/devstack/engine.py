"""Whether a Docker engine (with the compose plugin) answers here: the compose stack and the offline images
both ask this one place."""

from __future__ import annotations

import shutil
import subprocess


def docker_engine() -> str | None:
    """None when a Docker engine answers; else why not (printed as the reason tests are skipped)."""
    if not shutil.which("docker"):
        return "no docker client on PATH"
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 15 s"
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        return f"no Docker engine answers ({lines[-1] if lines else 'docker info failed'})"
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if plugin.returncode != 0:
        return "the docker compose plugin is not installed"
    return None
