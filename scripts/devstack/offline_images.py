"""Local stand-ins of the compose stack's three upstream images: ``make offline-images``.

For machines with a Docker engine but no container registry (these machines: every pull fails). Each
stand-in keeps the contract the stack relies on (see offline-images/*/Dockerfile) and gets a name of its
own; ``compose.yaml`` uses them only when asked (``OFFLINE=1``: ``offline_environment()``). A user with a
registry runs the upstream images, untouched.

- a Debian trixie base made with ``debootstrap`` (root only) and ``docker import``;
- Python packages from wheels downloaded here on the host, for the image's Python (3.13): TLS from inside
  ``docker build`` fails on these machines. A requirement that only has a source distribution is built
  into a wheel here, and must come out pure Python (``*-none-any.whl``);
- each image is labelled with a digest of everything it is built from, and rebuilt only when that
  changes (``--force`` rebuilds all).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .engine import docker_engine
from .function import REPO, install_rie, rie_arch

FOLDER = REPO / "offline-images"
WORK = REPO / ".cache" / "offline-images"
LABEL = "org.ingest.offline-inputs"

BASE_IMAGE = "ingest-offline/debian:trixie"
BASE_SUITE = "trixie"
BASE_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "curl", "ca-certificates", "tini")
PYTHON_VERSION = "3.13"  # Debian trixie's python3: the wheels are downloaded for it

LOCALSTACK_IMAGE = "ingest-offline/localstack:4.14.0"
LAMBDA_BASE_IMAGE = "ingest-offline/lambda-python:3.13"
POSTGRES_IMAGE = "ingest-offline/postgres:17"

# compose.yaml's image variables and the stand-in each one gets with OFFLINE=1
COMPOSE_VARIABLES = {
    "INGEST_LOCALSTACK_IMAGE": LOCALSTACK_IMAGE,
    "INGEST_POSTGRES_IMAGE": POSTGRES_IMAGE,
    "INGEST_LAMBDA_BASE_IMAGE": LAMBDA_BASE_IMAGE,
}


def offline_environment(env: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, str]:
    """The compose variables for the stand-ins when OFFLINE=1 (a variable the user set wins); else {}."""
    if env.get("OFFLINE", "") not in ("1", "true", "yes"):
        return {}
    return {name: env.get(name) or image for name, image in COMPOSE_VARIABLES.items()}


def awslambdaric_version() -> str:
    """The awslambdaric the embedded stack runs (requirements-dev.txt), so both stacks run the same one."""
    for line in (REPO / "requirements-dev.txt").read_text().splitlines():
        if line.startswith("awslambdaric=="):
            return line.split("==", 1)[1].strip()
    raise RuntimeError("requirements-dev.txt pins no awslambdaric")


def say(message: str) -> None:
    print(f"offline-images: {message}", flush=True)


def docker(*args: str, capture: bool = False, stdin: int | None = None) -> str:
    done = subprocess.run(["docker", *args], check=True, text=True, capture_output=capture, stdin=stdin)
    return done.stdout if capture else ""


def image_inputs(name: str) -> str | None:
    """The inputs digest an existing image was built from; None when there is no such image."""
    found = subprocess.run(
        ["docker", "image", "inspect", "--format", f'{{{{ index .Config.Labels "{LABEL}" }}}}', name],
        capture_output=True,
        text=True,
    )
    return found.stdout.strip() if found.returncode == 0 else None


def image_id(name: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", name, capture=True).strip()


def digest(*parts: str | bytes | Path) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            for path in sorted(p for p in ([part] if part.is_file() else part.rglob("*")) if p.is_file()):
                h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
        else:
            h.update((part.encode() if isinstance(part, str) else part) + b"\0")
    return h.hexdigest()[:16]


# -- the base -------------------------------------------------------------------------------------------


def build_base(force: bool) -> str | None:
    """ingest-offline/debian:trixie from debootstrap; its image id, or None when it cannot be made here."""
    inputs = digest(BASE_SUITE, BASE_MIRROR, *BASE_PACKAGES)
    if not force and image_inputs(BASE_IMAGE) == inputs:
        say(f"{BASE_IMAGE} is up to date")
        return image_id(BASE_IMAGE)
    if os.geteuid() != 0:
        say(f"{BASE_IMAGE} needs debootstrap, which needs root: run `make offline-images` as root")
        return None
    if not shutil.which("debootstrap"):
        if not shutil.which("apt-get"):
            say("no debootstrap and no apt-get: install debootstrap yourself")
            return None
        say("installing debootstrap from Debian's packages")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"], check=True)
    root = WORK / "rootfs"
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    say(f"debootstrap {BASE_SUITE} (minbase + {', '.join(BASE_PACKAGES)}) from {BASE_MIRROR}")
    started = time.monotonic()
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(BASE_PACKAGES)}",
            BASE_SUITE,
            str(root),
            BASE_MIRROR,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (root / "var" / "cache" / "apt" / "archives").mkdir(parents=True, exist_ok=True)
    for deb in (root / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        deb.unlink()
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    changes = ['CMD ["/bin/bash"]', "ENV LANG=C.UTF-8", f"LABEL {LABEL}={inputs}"]
    docker("import", *[arg for c in changes for arg in ("--change", c)], "-", BASE_IMAGE, stdin=tar.stdout.fileno())  # type: ignore[union-attr]
    if tar.wait() != 0:
        raise RuntimeError("tar of the debootstrap root failed")
    shutil.rmtree(root, ignore_errors=True)
    say(f"{BASE_IMAGE} made in {time.monotonic() - started:.0f}s")
    return image_id(BASE_IMAGE)


# -- wheels for the image's Python ------------------------------------------------------------------------


def _target_flags() -> list[str]:
    machine = "aarch64" if rie_arch() == "arm64" else "x86_64"
    platforms = [f"manylinux{tag}_{machine}" for tag in ("2014", "_2_17", "_2_28", "_2_34")] + [
        f"linux_{machine}",
        "any",
    ]
    abi = "cp" + PYTHON_VERSION.replace(".", "")
    flags = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for a in (abi, "abi3", "none"):
        flags += ["--abi", a]
    for p in platforms:
        flags += ["--platform", p]
    return flags


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], capture_output=True, text=True
    )


def download_wheels(dest: Path, requirements: list[str], *, resolve: bool) -> None:
    """Wheels of ``requirements`` (``-r``/``-c`` arguments or specifiers) for the image's Python into
    ``dest``. With ``resolve`` pip also fetches their dependencies; without, the list must be complete (a
    freeze). A requirement with no wheel for that Python is built here, and must come out pure Python."""
    dest.mkdir(parents=True, exist_ok=True)
    wanted = list(requirements)
    built: list[str] = []
    for _ in range(50):
        done = _pip("download", "-d", str(dest), *_target_flags(), *([] if resolve else ["--no-deps"]), *wanted)
        if done.returncode == 0:
            break
        missing = re.search(r"No matching distribution found for (\S+)", done.stderr)
        if not missing or missing.group(1) in built:
            raise RuntimeError(f"pip download failed:\n{done.stderr[-2000:]}")
        spec = missing.group(1)
        say(f"{spec} has no wheel for Python {PYTHON_VERSION}: building it from its source distribution")
        wheel = _pip("wheel", "--no-deps", "-w", str(dest), spec)
        if wheel.returncode != 0:
            raise RuntimeError(f"pip wheel {spec} failed:\n{wheel.stderr[-2000:]}")
        built.append(spec)
        name = re.split(r"[=<>!~;\[ ]", spec, maxsplit=1)[0].lower().replace("-", "_")
        for path in dest.glob("*.whl"):
            if path.name.lower().startswith(name + "-") and not path.name.endswith("-none-any.whl"):
                raise RuntimeError(f"{path.name} is not pure Python: it cannot be built here for {PYTHON_VERSION}")
        if not resolve:  # the rest of the freeze goes on; this one is in dest now
            wanted = [w for w in wanted if w != spec]
    else:
        raise RuntimeError("pip download kept failing")


def freeze(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


# -- the images -------------------------------------------------------------------------------------------


@dataclass
class StandIn:
    name: str  # folder under offline-images/
    image: str

    @property
    def folder(self) -> Path:
        return FOLDER / self.name

    def inputs(self, base_id: str) -> str:
        extra: list[str | bytes | Path] = []
        if self.name == "lambda-python":
            requirements = [REPO / "lambda" / "requirements.txt", REPO / "requirements.lock"]
            extra = [*requirements, awslambdaric_version(), rie_arch()]
        return digest(base_id, self.folder, *extra, PYTHON_VERSION)

    def context(self) -> tuple[Path, list[str]]:
        """The build context (the folder's files plus wheels and binaries made here) and build args."""
        context = WORK / self.name
        shutil.rmtree(context, ignore_errors=True)
        shutil.copytree(self.folder, context)
        args: list[str] = []
        if self.name == "localstack":
            download_wheels(context / "wheels", freeze(self.folder / "requirements.txt"), resolve=False)
        elif self.name == "lambda-python":
            version = awslambdaric_version()
            download_wheels(
                context / "wheels",
                [
                    "-c",
                    str(REPO / "requirements.lock"),
                    "-r",
                    str(REPO / "lambda" / "requirements.txt"),
                    f"awslambdaric=={version}",
                ],
                resolve=True,
            )
            shutil.copy2(install_rie(REPO / ".cache"), context / "aws-lambda-rie")
            args = ["--build-arg", f"AWSLAMBDARIC_VERSION={version}"]
        return context, args

    def build(self, base_id: str, force: bool) -> None:
        inputs = self.inputs(base_id)
        if not force and image_inputs(self.image) == inputs:
            say(f"{self.image} is up to date")
            return
        started = time.monotonic()
        context, args = self.context()
        say(f"building {self.image}")
        docker(
            "build",
            "--quiet",
            "--tag",
            self.image,
            "--label",
            f"{LABEL}={inputs}",
            "--build-arg",
            f"BASE_IMAGE={BASE_IMAGE}",
            *args,
            str(context),
        )
        shutil.rmtree(context, ignore_errors=True)
        say(f"{self.image} built in {time.monotonic() - started:.0f}s")


STAND_INS = (
    StandIn("postgres", POSTGRES_IMAGE),
    StandIn("lambda-python", LAMBDA_BASE_IMAGE),
    StandIn("localstack", LOCALSTACK_IMAGE),
)


def build_all(force: bool = False) -> bool:
    """Build what is missing or out of date. False (with the reason printed) where it cannot be done."""
    problem = docker_engine()
    if problem:
        say(f"not built: {problem} (make docker-engine starts one as root)")
        return False
    started = time.monotonic()
    base_id = build_base(force)
    if base_id is None:
        return False
    for stand_in in STAND_INS:
        stand_in.build(base_id, force)
    say(f"ready in {time.monotonic() - started:.0f}s: {', '.join(s.image for s in STAND_INS)}")
    say("use them with OFFLINE=1: make up STACK=compose OFFLINE=1, OFFLINE=1 make test")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.offline_images", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild every image, up to date or not")
    parser.add_argument("--print-env", action="store_true", help="print the compose variables OFFLINE=1 sets")
    args = parser.parse_args(argv)
    if args.print_env:
        print(json.dumps(COMPOSE_VARIABLES, indent=2))
        return 0
    build_all(force=args.force)
    return 0  # like make docker-engine: where it cannot build, it says why and the caller goes on


if __name__ == "__main__":
    sys.exit(main())
