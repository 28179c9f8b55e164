"""What a failed connection is called: the service, the reason code, what happened and the likely cause."""

from __future__ import annotations

import pytest
from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

from ingest.adapters.network import Reaching, ServiceUnreachable, boto_unreachable, kind_of, reason_code


@pytest.mark.parametrize(
    ("service", "code"),
    [
        ("S3", "s3_unreachable"),
        ("SNS", "sns_unreachable"),
        ("Secrets Manager", "secrets_manager_unreachable"),
        ("PostgreSQL", "database_unreachable"),
    ],
)
def test_each_service_has_a_reason_code_of_its_own(service, code):
    assert reason_code(service) == code


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('connection to server at "10.0.1.5", port 5432 failed: timeout expired', "timeout"),
        ('connection to server at "127.0.0.1", port 1 failed: Connection refused', "refused"),
        ('could not translate host name "db.internal" to address: Name or service not known', "dns"),
        ('FATAL:  password authentication failed for user "ingest_function"', "auth"),
        ("SSL error: certificate verify failed", "tls"),
        ('root certificate file "/var/task/certs/rds-global-bundle.pem" does not exist', "tls"),
        ("server closed the connection unexpectedly", None),
    ],
)
def test_what_happened_is_read_from_the_error(text, kind):
    assert kind_of(text) == kind


def test_a_connect_timeout_names_the_service_and_the_vpc_as_the_likely_cause():
    exc = boto_unreachable("S3", ConnectTimeoutError(endpoint_url="https://s3.eu-west-1.amazonaws.com/b/k"))
    assert exc.reason == "s3_unreachable"
    assert str(exc).startswith(
        "S3 did not accept a connection: no answer to the connection, its packets dropped (ConnectTimeoutError"
    )
    assert "NAT gateway, or a VPC endpoint for S3" in str(exc)


def test_a_refused_endpoint_points_at_the_endpoint_setting():
    refused = EndpointConnectionError(endpoint_url="http://127.0.0.1:1/", error=ConnectionRefusedError(111, "refused"))
    assert "nothing listens at that endpoint" in str(boto_unreachable("SNS", refused))


def test_a_wrapped_client_raises_service_unreachable_and_passes_the_rest_through():
    class Client:
        meta = "meta"

        def publish(self, **kwargs):
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1/", error="Connection refused")

        def echo(self, value):
            return value

    client = Reaching(Client(), "SNS")
    assert client.meta == "meta" and client.echo(3) == 3
    with pytest.raises(ServiceUnreachable) as caught:
        client.publish(TopicArn="t")
    assert caught.value.service == "SNS" and caught.value.kind == "refused"
