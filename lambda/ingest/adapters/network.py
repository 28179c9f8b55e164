"""A service the function could not reach, named, with the likely cause.

A function placed in a VPC reaches S3, SNS and Secrets Manager only through a NAT gateway or VPC endpoints,
and its database only if the security groups allow it. Without them a connection is refused or, more often,
never answered (the packets are dropped): each request then waits for its connect timeout, kept short here
(``CONNECT_TIMEOUT_SECONDS`` with ``CONNECT_ATTEMPTS``), instead of until the invocation's deadline.
``Reaching`` wraps a boto3 client so that such a failure is raised as ``ServiceUnreachable`` naming the
service; the PostgreSQL adapter raises its subclass ``DatabaseUnreachable``. Each has a reason code of its own
(``s3_unreachable``, ``sns_unreachable``, ``secrets_manager_unreachable``, ``database_unreachable``).
"""

from __future__ import annotations

import functools
from typing import Any

from botocore.config import Config
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

#: The services the function reaches, as its messages name them (each has its reason code, reason_code()).
SERVICES = ("S3", "SNS", "Secrets Manager", "PostgreSQL")
#: How long a connection to an AWS service may take to be accepted, and how many tries a request makes (the
#: standard retry mode also retries throttling): a black-holed endpoint is given up after ~10 s.
CONNECT_TIMEOUT_SECONDS = 3
CONNECT_ATTEMPTS = 3
AWS_CONFIG = Config(
    retries={"max_attempts": CONNECT_ATTEMPTS, "mode": "standard"},
    connect_timeout=CONNECT_TIMEOUT_SECONDS,
    read_timeout=60,
)
#: The same for PostgreSQL (libpq's connect_timeout, for each address the host name resolves to).
DATABASE_CONNECT_TIMEOUT_SECONDS = 5

_IN_A_VPC = (
    "if the function runs in a VPC, it needs a route to {service}: a NAT gateway, or a VPC endpoint for {service} "
    "(the template's CreateVpcEndpoints), and its security group must allow outbound HTTPS"
)
_CAUSES = {
    # (what happened, for an AWS service, for the database)
    "timeout": (
        "no answer to the connection, its packets dropped",
        _IN_A_VPC,
        "the database's security group must allow the function's security group on the database's port, and "
        "the function must run in the database's VPC (the template's SubnetIds and SecurityGroupIds)",
    ),
    "refused": (
        "the connection was refused",
        "nothing listens at that endpoint: check AWS_ENDPOINT_URL or the region",
        "nothing listens at that host and port: check the host and port in DATABASE_URL or the secret, and "
        "that the database is running",
    ),
    "dns": (
        "its name does not resolve",
        "in a VPC, turn on DNS support and DNS host names, and private DNS on interface endpoints",
        "check the host name in DATABASE_URL or the secret; in a VPC, turn on DNS support and host names",
    ),
    "auth": (
        "it refused the credentials",
        "check the function's role",
        "check the user and password in DATABASE_URL or the secret (db/roles.sql makes the function's role)",
    ),
    "tls": (
        "the TLS handshake failed",
        "check the endpoint's certificate and the system's CA bundle",
        "check PGSSLMODE and the CA bundle PGSSLROOTCERT names (the image's RDS bundle: make rds-ca)",
    ),
}


class ServiceUnreachable(RuntimeError):
    """A service the function needs did not accept a connection."""

    def __init__(self, service: str, detail: str, kind: str | None):
        self.service, self.detail, self.kind = service, detail, kind
        super().__init__(describe(service, detail, kind))

    @property
    def reason(self) -> str:
        return reason_code(self.service)


def reason_code(service: str) -> str:
    """``s3_unreachable``, ``sns_unreachable``, ``secrets_manager_unreachable``, ``database_unreachable``."""
    return "_".join(service.lower().replace("postgresql", "database").split()) + "_unreachable"


def describe(service: str, detail: str, kind: str | None) -> str:
    """``<service> did not accept a connection: <what happened> (<detail>); likely cause: <cause>``."""
    if kind not in _CAUSES:
        return f"{service} did not accept a connection ({detail})"
    happened, aws_cause, database_cause = _CAUSES[kind]
    cause = (database_cause if service == "PostgreSQL" else aws_cause).format(service=service)
    return f"{service} did not accept a connection: {happened} ({detail}); likely cause: {cause}"


def kind_of(text: str) -> str | None:
    """What a connection error's text says happened: timeout, refused, dns, auth, tls (or None)."""
    text = text.lower()
    for kind, words in (
        ("dns", ("name or service not known", "name resolution", "could not translate host name", "nodename")),
        ("refused", ("connection refused", "errno 111")),
        ("timeout", ("timeout", "timed out")),
        ("auth", ("password authentication failed", "no pg_hba.conf entry", "authentication")),
        ("tls", ("ssl", "certificate", "tls")),
    ):
        if any(word in text for word in words):
            return kind
    return None


def boto_unreachable(service: str, exc: BotoConnectionError) -> ServiceUnreachable:
    if isinstance(exc, ConnectTimeoutError):
        kind: str | None = "timeout"
    elif isinstance(exc, EndpointConnectionError):
        kind = kind_of(str(exc.kwargs.get("error", ""))) or "refused"
    else:
        kind = kind_of(str(exc))
    detail = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return ServiceUnreachable(service, detail, kind)


class Reaching:
    """A boto3 client whose calls raise ServiceUnreachable(service) when no connection could be made."""

    def __init__(self, client: Any, service: str):
        self._client, self.service = client, service

    @property
    def raw(self) -> Any:
        return self._client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attribute(*args, **kwargs)
            except BotoConnectionError as exc:
                raise boto_unreachable(self.service, exc) from exc

        return call
