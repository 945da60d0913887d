"""TLS, mutual TLS (certificates made here) and bearer tokens, against a real server on 127.0.0.1."""

from __future__ import annotations

import json

import grpc
import pytest
from server_testkit import TINY, health_status, running_server

from wanrt.server.auth import hash_token
from wanrt.server.client import Client
from wanrt.server.errors import RemoteError

GENERATE_ONLY, DESCRIBE_ONLY = "generate-token-value-0123456789", "describe-token-value-0123456789"


def remote_code(fn) -> str:
    with pytest.raises(RemoteError) as info:
        fn()
    return info.value.code


@pytest.fixture(scope="module")
def tls_server(pipeline, certs, tmp_path_factory):
    with running_server(pipeline, tmp_path_factory.mktemp("tls"), tls_cert=certs.server_cert,
                        tls_key=certs.server_key) as running:
        yield running


@pytest.fixture(scope="module")
def mtls_server(pipeline, certs, tmp_path_factory):
    with running_server(pipeline, tmp_path_factory.mktemp("mtls"), tls_cert=certs.server_cert,
                        tls_key=certs.server_key, client_ca=certs.ca) as running:
        yield running


@pytest.fixture(scope="module")
def token_server(pipeline, certs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tokens")
    tokens = tmp / "tokens.jsonl"
    tokens.write_text("\n".join([
        "# generate-only and describe-only tokens",
        json.dumps({"id": "renderer", "sha256": hash_token(GENERATE_ONLY), "methods": ["Generate"]}),
        json.dumps({"id": "dashboard", "sha256": hash_token(DESCRIBE_ONLY), "methods": ["DescribeModel"]}),
    ]) + "\n")
    with running_server(pipeline, tmp, tls_cert=certs.server_cert, tls_key=certs.server_key,
                        tokens=tokens) as running:
        yield running


# --- TLS ----------------------------------------------------------------------------------------------------

def test_tls_serves_clients_that_trust_its_ca(tls_server, certs):
    with Client(tls_server.address, ca=certs.ca) as client:
        assert client.health() == "SERVING"
        result = client.generate(TINY)
    assert result.sha256 == tls_server.audit()[-1]["output"]["sha256"]
    assert tls_server.audit()[-1]["principal"] == "anonymous"


def test_tls_refuses_untrusting_and_plaintext_clients(tls_server, certs):
    with Client(tls_server.address, ca=certs.rogue_ca) as client:
        assert remote_code(lambda: client.describe(timeout=5)) == "UNAVAILABLE"
    with Client(tls_server.address) as client:  # system roots do not know the test CA
        assert remote_code(lambda: client.describe(timeout=5)) == "UNAVAILABLE"
    with Client(tls_server.address, insecure=True) as client:
        assert remote_code(lambda: client.describe(timeout=5)) == "UNAVAILABLE"
    assert all(r["method"] != "DescribeModel" for r in tls_server.audit())  # nothing got through


# --- mutual TLS ---------------------------------------------------------------------------------------------

def test_mtls_principal_is_the_certificate_subject(mtls_server, certs):
    with Client(mtls_server.address, ca=certs.ca, cert=certs.client_cert, key=certs.client_key) as client:
        client.generate(TINY)
    record = mtls_server.audit()[-1]
    assert record["status"] == "OK" and record["principal_kind"] == "certificate"
    assert f"CN={certs.client_subject_cn}" in record["principal"] == record["certificate_subject"]


def test_mtls_refuses_clients_without_a_trusted_certificate(mtls_server, certs):
    with Client(mtls_server.address, ca=certs.ca) as client:
        assert remote_code(lambda: client.describe(timeout=5)) == "UNAVAILABLE"
        # Health is exempt from tokens, not from mutual TLS.
        assert remote_code(lambda: client.health(timeout=5)) == "UNAVAILABLE"
    with Client(mtls_server.address, ca=certs.ca, cert=certs.rogue_client_cert,
                key=certs.rogue_client_key) as client:
        assert remote_code(lambda: client.describe(timeout=5)) == "UNAVAILABLE"
    assert not [r for r in mtls_server.audit() if r["method"] == "DescribeModel"]


# --- bearer tokens ------------------------------------------------------------------------------------------

def test_tokens_authenticate_and_authorise(token_server, certs):
    def client(token: str | None) -> Client:
        return Client(token_server.address, ca=certs.ca, token=token)

    with client(None) as anonymous:
        assert remote_code(anonymous.describe) == "UNAUTHENTICATED"
        assert remote_code(lambda: anonymous.generate(TINY)) == "UNAUTHENTICATED"
        assert anonymous.health() == "SERVING"  # health needs no token
    with client("not-a-listed-token") as wrong:
        assert remote_code(wrong.describe) == "UNAUTHENTICATED"
    with client(DESCRIBE_ONLY) as dashboard:
        assert dashboard.describe().workers == 1
        assert remote_code(lambda: dashboard.generate(TINY)) == "PERMISSION_DENIED"
    with client(GENERATE_ONLY) as renderer:
        result = renderer.generate(TINY)
        assert remote_code(renderer.describe) == "PERMISSION_DENIED"

    records = token_server.audit()
    assert [(r["method"], r["status"], r["principal"]) for r in records] == [
        ("DescribeModel", "UNAUTHENTICATED", "unauthenticated"),
        ("Generate", "UNAUTHENTICATED", "unauthenticated"),
        ("DescribeModel", "UNAUTHENTICATED", "unauthenticated"),
        ("DescribeModel", "OK", "dashboard"),
        ("Generate", "PERMISSION_DENIED", "dashboard"),
        ("Generate", "OK", "renderer"),
        ("DescribeModel", "PERMISSION_DENIED", "renderer"),
    ]
    assert records[5]["output"]["sha256"] == result.sha256
    assert (records[0]["token_presented"], records[2]["token_presented"]) == (False, True)
    assert all("token-value" not in json.dumps(r) for r in records)  # tokens never reach the log
    assert token_server.metric("wanrt_requests_total", code="UNAUTHENTICATED") == 3


def test_reflection_needs_no_token(token_server, certs):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=certs.ca.read_bytes())
    with grpc.secure_channel(token_server.address, credentials) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        response = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                  timeout=5))
        assert "wanrt.v1.VideoGeneration" in {s.name for s in response.list_services_response.service}
        assert health_status(token_server.address, channel=channel) == "SERVING"
