"""TLS to the database: ``verify-full`` with a CA bundle (on AWS the image's RDS bundle), against a PostgreSQL
cluster of the dev stack's kind with TLS turned on and a certificate authority made here. The function's
connection is checked by libpq itself: the right CA loads the file over TLS; another CA, a bundle that is not
there, or a server without TLS is a failure naming the database, TLS and what to check."""

from __future__ import annotations

import datetime
import ipaddress
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg.conninfo import make_conninfo

from devstack.postgres import create_function_role, enable_tls, start_postgres
from ingest import bootstrap
from ingest.adapters.postgres import Database
from ingest.service import ingest_object
from tests.e2e.conftest import unique_users


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def server_certificate(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]) -> tuple[bytes, bytes]:
    """A certificate for 127.0.0.1 and localhost, signed by ``ca``; and its key (both PEM)."""
    ca_certificate, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def tls_database(tmp_path_factory) -> Iterator[tuple[str, Path, Path]]:
    """The function's URL (its least-privilege role) on a cluster with TLS on; the bundle of the CA that
    signed the server's certificate; and the bundle of another CA."""
    folder = tmp_path_factory.mktemp("tls")
    ca = make_ca("ingest test CA")
    server = start_postgres(folder / "data")
    try:
        enable_tls(server, *server_certificate(ca))
        bundle, other = folder / "ca-bundle.pem", folder / "other-ca.pem"
        bundle.write_bytes(pem(make_ca("an unrelated CA")[0]) + pem(ca[0]))  # a bundle of several, as RDS's
        other.write_bytes(pem(make_ca("another CA")[0]))
        url = create_function_role(server.url)
        with psycopg.connect(server.url, autocommit=True) as conn:  # the function's role may create tables
            conn.execute("GRANT CREATE ON SCHEMA public TO ingest_function")
        _wait_for_tls(make_conninfo(url, sslmode="require"))
        yield url, bundle, other
    finally:
        server.stop()


def _wait_for_tls(url: str) -> None:
    """The reload that turned TLS on is taken up by the server a moment after it was asked for."""
    for _ in range(200):
        try:
            psycopg.connect(url, connect_timeout=5).close()
            return
        except psycopg.OperationalError:
            time.sleep(0.05)
    psycopg.connect(url, connect_timeout=5).close()  # raises what it says


def _load(pipeline, database_url: str) -> tuple[dict, list[int]]:
    data, ids = unique_users(rows=3)
    key = f"incoming/users/tls_{uuid.uuid4().hex[:8]}.csv"
    pipeline.upload(key, data)
    pipeline.deps.database = Database(database_url, connect_timeout=5)
    try:
        ingest_object(pipeline.bucket, key, pipeline.deps)
        receipt = pipeline.receipts()[-1]
    except Exception:
        receipt = pipeline.receipts()[-1]
    finally:
        pipeline.deps.database.dispose()
    return receipt, ids


def test_verify_full_with_the_servers_ca_in_the_bundle_loads_over_tls(pipeline, tls_database, monkeypatch):
    url, bundle, _other = tls_database
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    monkeypatch.setenv("PGSSLROOTCERT", str(bundle))
    receipt, ids = _load(pipeline, url)
    assert receipt["status"] == "loaded", receipt
    with psycopg.connect(url) as conn:  # verify-full too (the environment): the rows are there
        assert conn.execute("SELECT count(*) FROM users WHERE id = ANY(%s)", (ids,)).fetchone() == (3,)
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


def test_verify_full_with_another_ca_is_refused_naming_tls(pipeline, tls_database, monkeypatch):
    url, _bundle, other = tls_database
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    monkeypatch.setenv("PGSSLROOTCERT", str(other))
    receipt, _ids = _load(pipeline, url)
    assert (receipt["status"], receipt["reason"]) == ("failed", "database_unreachable"), receipt
    assert receipt["message"].startswith("PostgreSQL did not accept a connection: the TLS handshake failed")
    assert "certificate verify failed" in receipt["message"] and "PGSSLROOTCERT" in receipt["message"]


def test_verify_full_without_the_bundle_in_the_image_says_how_to_add_it(pipeline, tls_database, monkeypatch, tmp_path):
    url, _bundle, _other = tls_database
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    monkeypatch.setenv("PGSSLROOTCERT", str(tmp_path / "rds-global-bundle.pem"))
    receipt, _ids = _load(pipeline, url)
    assert (receipt["status"], receipt["reason"]) == ("failed", "database_unreachable"), receipt
    assert "rds-global-bundle.pem" in receipt["message"] and "make rds-ca" in receipt["message"]


def test_require_against_a_server_without_tls_is_refused(pipeline, database_url, monkeypatch):
    monkeypatch.setenv("PGSSLMODE", "require")  # the session's cluster has no TLS
    receipt, _ids = _load(pipeline, database_url)
    assert (receipt["status"], receipt["reason"]) == ("failed", "database_unreachable"), receipt
    assert "the TLS handshake failed" in receipt["message"]


def test_the_secrets_sslmode_is_the_secrets_else_pgsslmode_else_require(monkeypatch):
    secret = '{"host": "db", "port": 5432, "username": "u", "password": "p", "dbname": "d"}'
    monkeypatch.delenv("PGSSLMODE", raising=False)
    assert "sslmode=require" in bootstrap.database_url_from_secret(secret)
    monkeypatch.setenv("PGSSLMODE", "verify-full")
    assert "sslmode=verify-full" in bootstrap.database_url_from_secret(secret)
    assert "sslmode=disable" in bootstrap.database_url_from_secret(secret[:-1] + ', "sslmode": "disable"}')
