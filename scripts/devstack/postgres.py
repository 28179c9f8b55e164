"""A throwaway PostgreSQL for the embedded stack and the tests, never on the standard port 5432.

Order of preference: ``DATABASE_URL`` when set (used as it is); else a cluster made with the PostgreSQL
binaries on the machine (``initdb``/``pg_ctl`` under /usr/lib/postgresql/*/bin or on PATH); else the
``pgserver`` wheel. As root, ``initdb`` refuses to run, so the cluster then belongs to an unprivileged
user (``postgres`` or ``nobody``) and runs through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .processes import HOST, listen_port

DEFAULT_USER = "ingest"
DEFAULT_DB = "ingest"
TEMP_PREFIX = "ingest-pg-"


@dataclass
class PostgresServer:
    url: str
    kind: str  # "external", "cluster" or "pgserver"
    data_dir: Path | None = None
    bin_dir: Path | None = None
    run_as: str | None = None
    port: int | None = None

    def stop(self, remove: bool = True) -> None:
        if self.kind == "cluster" and self.data_dir and self.bin_dir:
            if (self.data_dir / "postmaster.pid").exists():
                _run(
                    [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
                    self.run_as,
                    check=False,
                )
        elif self.kind == "pgserver" and self.data_dir:
            _stop_pgserver(self.data_dir)
        if remove and self.data_dir and self.kind != "external":
            shutil.rmtree(self.data_dir, ignore_errors=True)
            if self.data_dir.parent.name.startswith(TEMP_PREFIX):  # the private folder made for an unprivileged user
                shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def find_bin_dir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0))
    for directory in reversed(candidates):
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def start_postgres(data_dir: Path, port: int | None = None, prefer: str | None = None) -> PostgresServer:
    """Start a fresh cluster in ``data_dir`` (which must not exist yet) and return how to reach it."""
    bin_dir = find_bin_dir()
    if prefer != "pgserver" and bin_dir is not None:
        return _start_cluster(bin_dir, data_dir, port or listen_port())
    return _start_pgserver(data_dir)


def _unprivileged_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to own the cluster")


def _run(argv: list[str], run_as: str | None, check: bool = True) -> subprocess.CompletedProcess[str]:
    if run_as:
        argv = ["runuser", "-u", run_as, "--", *argv]
    return subprocess.run(argv, check=check, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _start_cluster(bin_dir: Path, data_dir: Path, port: int) -> PostgresServer:
    run_as = _unprivileged_user()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if run_as and not _can_reach(run_as, data_dir.parent):
        # The repository lies where the unprivileged user cannot enter (e.g. under /root): keep the
        # cluster in a private temp folder and point a symlink at it so `make down` still finds it.
        real = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        os.chmod(real, 0o755)
        data_dir.symlink_to(real / "data")
        data_dir = real / "data"
    data_dir.mkdir(parents=True)
    if run_as:
        user = pwd.getpwnam(run_as)
        os.chown(data_dir, user.pw_uid, user.pw_gid)
    os.chmod(data_dir, 0o700)
    result = _run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            DEFAULT_USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
        run_as,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"initdb failed: {result.stderr or result.stdout}")
    options = (
        f"-c listen_addresses={HOST} -p {port} -k {data_dir} -c fsync=on -c max_connections=50 -c shared_buffers=64MB"
    )
    result = _run(
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data_dir),
            "-o",
            options,
            "-l",
            str(data_dir / "server.log"),
            "-w",
            "-t",
            "30",
            "start",
        ],
        run_as,
        check=False,
    )
    if result.returncode != 0:
        log = (data_dir / "server.log").read_text(errors="replace") if (data_dir / "server.log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {result.stderr or result.stdout}\n{log[-2000:]}")
    _run([str(bin_dir / "createdb"), "-h", HOST, "-p", str(port), "-U", DEFAULT_USER, DEFAULT_DB], None)
    return PostgresServer(
        url=f"postgresql://{DEFAULT_USER}@{HOST}:{port}/{DEFAULT_DB}",
        kind="cluster",
        data_dir=data_dir,
        bin_dir=bin_dir,
        run_as=run_as,
        port=port,
    )


def enable_tls(server: PostgresServer, certificate: bytes, key: bytes) -> None:
    """Turn TLS on in a cluster of ours, with this server certificate and key (PEM), without a restart: new
    connections may then ask for it (``sslmode=require`` or ``verify-full``); the others still connect."""
    import psycopg

    assert server.kind == "cluster" and server.data_dir is not None, "TLS is turned on in clusters of ours only"
    for name, content in (("server.crt", certificate), ("server.key", key)):
        path = server.data_dir / name
        path.write_bytes(content)
        os.chmod(path, 0o600)  # PostgreSQL refuses a key others can read
        if server.run_as:
            user = pwd.getpwnam(server.run_as)
            os.chown(path, user.pw_uid, user.pw_gid)
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET ssl = on")
        conn.execute("SELECT pg_reload_conf()")


def _can_reach(user: str, directory: Path) -> bool:
    return _run(["test", "-x", str(directory)], user, check=False).returncode == 0


def _start_pgserver(data_dir: Path) -> PostgresServer:
    try:
        import pgserver  # type: ignore[import-not-found]
    except ImportError as exc:
        raise RuntimeError("no PostgreSQL binaries on this machine and the pgserver wheel is not installed") from exc
    server = pgserver.get_server(str(data_dir), cleanup_mode=None)
    server.psql(f"CREATE DATABASE {DEFAULT_DB};")
    return PostgresServer(url=server.get_uri(DEFAULT_DB), kind="pgserver", data_dir=data_dir)


def _stop_pgserver(data_dir: Path) -> None:
    try:
        import pgserver  # type: ignore[import-not-found]
    except ImportError:
        return
    pg_ctl = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_ctl"
    if pg_ctl.exists() and (data_dir / "postmaster.pid").exists():
        subprocess.run([str(pg_ctl), "-D", str(data_dir), "-m", "fast", "-w", "stop"], capture_output=True)


FUNCTION_ROLE = "ingest_function"
FUNCTION_PASSWORD = "ingest_function"  # a throwaway local cluster's: the role's grants are what matter here


def function_schemas(contracts_dir: str | Path | None = None) -> list[str]:
    """The schemas the function writes: the pipeline's own (INGEST_SCHEMA, else ingest_ledger), then each schema
    the contracts name (``public`` for contracts that name none), as db/roles.sql takes them."""
    from ingest.contract import ContractRegistry, default_contracts_dir, pipeline_schema

    folder = contracts_dir or os.environ.get("INGEST_CONTRACTS_DIR") or default_contracts_dir()
    return list(
        dict.fromkeys([pipeline_schema(os.environ), *(c.schema for c in ContractRegistry.from_directory(folder))])
    )


def create_function_role(admin_url: str, schemas: list[str] | None = None) -> str:
    """Create the function's least-privilege role of ``db/roles.sql`` in a stack's own cluster, with USAGE and
    CREATE on exactly ``schemas`` (default: function_schemas()), and return the URL the function connects
    with, so that every local run exercises the grants production relies on."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
    from psycopg.sql import Literal

    chosen = ",".join(schemas if schemas is not None else function_schemas())
    roles = (Path(__file__).resolve().parents[2] / "db" / "roles.sql").read_text()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        script = roles.replace(":password", Literal(FUNCTION_PASSWORD).as_string(conn))
        conn.execute(script.replace(":'schemas'", Literal(chosen).as_string(conn)))  # type: ignore[arg-type]
    params = conninfo_to_dict(admin_url)
    params.update(user=FUNCTION_ROLE, password=FUNCTION_PASSWORD)
    return make_conninfo(**params)  # type: ignore[arg-type]
