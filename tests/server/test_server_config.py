"""Configuration is checked before anything starts, and fails closed with a message naming the option."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest

from wanrt.server.auth import TokenStore, hash_token
from wanrt.server.config import ClientConfig, ServerConfig, parse_host_port
from wanrt.server.errors import ConfigError


@pytest.fixture
def base(tmp_path, certs) -> ServerConfig:
    return ServerConfig(model=tmp_path, audit_log=tmp_path / "audit.jsonl", tls_cert=certs.server_cert,
                        tls_key=certs.server_key, listen="0.0.0.0:0", metrics_listen="127.0.0.1:0")


def field_of(config: ServerConfig | ClientConfig) -> str:
    with pytest.raises(ConfigError) as info:
        config.validated()
    return info.value.field


def test_a_complete_tls_config_is_accepted(base, certs):
    assert base.validated() is base
    assert dataclasses.replace(base, client_ca=certs.ca).validated()


def test_plaintext_needs_insecure_and_loopback(base):
    plain = dataclasses.replace(base, tls_cert=None, tls_key=None)
    assert field_of(plain) == "tls_cert"
    assert field_of(dataclasses.replace(plain, insecure=True)) == "insecure"  # 0.0.0.0 is not loopback
    assert field_of(dataclasses.replace(plain, insecure=True, listen="myhost.example:50051")) == "insecure"
    for loopback in ("127.0.0.1:50051", "[::1]:50051", "localhost:0"):
        assert dataclasses.replace(plain, insecure=True, listen=loopback).validated()
    assert field_of(dataclasses.replace(base, insecure=True, listen="127.0.0.1:0")) == "insecure"  # + TLS: ambiguous


def test_certificate_problems_are_named(base, certs, tmp_path):
    assert field_of(dataclasses.replace(base, tls_key=certs.client_key)) == "tls_key"  # not the cert's key
    assert field_of(dataclasses.replace(base, tls_cert=tmp_path / "missing.pem")) == "tls_cert"
    assert field_of(dataclasses.replace(base, tls_key=None)) == "tls_cert"
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello")
    assert field_of(dataclasses.replace(base, client_ca=not_pem)) == "client_ca"


@pytest.mark.parametrize("content", [
    "",
    "not json\n",
    json.dumps({"id": "a", "sha256": "abc"}),
    json.dumps({"id": "a", "sha256": hash_token("t"), "method": ["Generate"]}),  # typo'd key
    json.dumps({"id": "a", "sha256": hash_token("t"), "methods": ["Generat"]}),
    json.dumps({"id": "a b", "sha256": hash_token("t")}),
    # (one id with two tokens is allowed: that is rotation, tests/server/test_server_reload.py)
    json.dumps({"id": "a", "sha256": hash_token("t")}) + "\n" + json.dumps({"id": "b", "sha256": hash_token("t")}),
    json.dumps({"id": "a", "sha256": hash_token("t"), "expires": "2001-01-01T00:00:00Z"}),  # every token expired
    json.dumps({"id": "a", "sha256": hash_token("t"), "expires": "2099-01-01"}),  # no zone: refused, not guessed
])
def test_bad_token_files_are_refused(base, tmp_path, content):
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text(content)
    assert field_of(dataclasses.replace(base, tokens=tokens)) == "tokens"


def test_other_options(base, tmp_path):
    assert field_of(dataclasses.replace(base, audit_log=None)) == "audit_log"
    assert field_of(dataclasses.replace(base, audit_log=tmp_path / "no" / "such" / "dir.jsonl")) == "audit_log"
    assert field_of(dataclasses.replace(base, audit_log=tmp_path)) == "audit_log"
    assert field_of(dataclasses.replace(base, queue_size=-1)) == "queue_size"
    assert field_of(dataclasses.replace(base, grace_seconds=math.nan)) == "grace_seconds"
    assert field_of(dataclasses.replace(base, max_steps=0)) == "max_steps"
    assert field_of(dataclasses.replace(base, model=tmp_path / "nope")) == "model"
    assert field_of(dataclasses.replace(base, backend="tensorflow")) == "backend"
    assert field_of(dataclasses.replace(base, devices=("cuda:0", "cuda:0"))) == "device"
    assert field_of(dataclasses.replace(base, devices=("gpu0",))) == "device"
    assert field_of(dataclasses.replace(base, listen="127.0.0.1:50051", metrics_listen="127.0.0.1:50051")) \
        == "metrics_listen"
    for bad in ("localhost", ":50051", "::1:50051", "[::1]50051", "host:99999", "host:port"):
        with pytest.raises(ConfigError):
            parse_host_port("listen", bad)


def test_client_config(certs, tmp_path):
    assert field_of(ClientConfig(server="10.0.0.5:50051", insecure=True)) == "insecure"
    assert field_of(ClientConfig(server="127.0.0.1:50051", insecure=True, ca=certs.ca)) == "insecure"
    assert field_of(ClientConfig(server="h:1", cert=certs.client_cert)) == "cert"
    assert field_of(ClientConfig(server="h:1", cert=certs.client_cert, key=certs.server_key)) == "tls_key"
    empty = tmp_path / "token"
    empty.write_text("\n")
    assert field_of(ClientConfig(server="h:1", token_file=empty)) == "token_file"


def test_serve_cli_fails_fast_with_the_option_named(tmp_path):
    """Before any model is loaded: exit 2 and the option in the message."""
    result = subprocess.run(
        [sys.executable, "-m", "wanrt.cli", "serve", "--model", str(tmp_path), "--listen", "0.0.0.0:50051",
         "--insecure", "--audit-log", str(tmp_path / "audit.jsonl")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--insecure: plaintext is only allowed on loopback" in result.stderr


def test_token_cli_makes_tokens_the_server_accepts(tmp_path):
    tokens = tmp_path / "tokens.jsonl"
    made = subprocess.run([sys.executable, "-m", "wanrt.cli", "token", "new", "--id", "batch", "--methods",
                           "Generate", "--append", str(tokens)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert (tokens.stat().st_mode & 0o777) == 0o600
    store = TokenStore.load(tokens)
    assert store.check([("authorization", f"Bearer {token}")], "Generate").token_id == "batch"
    assert store.check([("authorization", f"Bearer {token}")], "DescribeModel").code is not None
    hashed = subprocess.run([sys.executable, "-m", "wanrt.cli", "token", "hash"], input=token + "\n",
                            capture_output=True, text=True, timeout=60)
    assert hashed.stdout.strip() == hash_token(token) == json.loads(tokens.read_text())["sha256"]
