"""The health-only listeners: kubelet's native gRPC probes (plaintext TCP) and the image's HEALTHCHECK (a unix
socket, so the SELinux domain needs no name_connect) see grpc.health.v1 and nothing else, while the service
itself stays behind TLS and tokens."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from server_testkit import GRPC_SERVICE, health_status, running_server

from wanrt.server.config import ClientConfig, ServerConfig
from wanrt.server.errors import ConfigError
from wanrt.server.v1 import wanrt_pb2 as pb
from wanrt.server.v1 import wanrt_pb2_grpc as pb_grpc


def test_health_port_and_socket_serve_health_only_and_follow_the_drain(pipeline, certs, tmp_path):
    socket_path = tmp_path / "health.sock"
    with running_server(pipeline, tmp_path, tls_cert=certs.server_cert, tls_key=certs.server_key,
                        health_listen="127.0.0.1:0", health_socket=socket_path) as served:
        port_target = f"127.0.0.1:{served.server.health_port}"
        socket_target = f"unix:{socket_path}"
        for target in (port_target, socket_target):
            assert health_status(target) == "SERVING"
            assert health_status(target, GRPC_SERVICE) == "SERVING"
            # The plaintext listener carries no generation service: nothing to reach without TLS.
            with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as refused:
                pb_grpc.VideoGenerationStub(channel).DescribeModel(pb.DescribeModelRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # The real client reaches the socket with --insecure (a unix socket never leaves the machine).
        probe = subprocess.run([sys.executable, "-m", "wanrt.cli", "client", "health", "--server", socket_target,
                                "--insecure"], capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0, probe.stderr
        # One HealthServicer behind every listener: what a drain sets shows on the probes' listeners too.
        served.server.health.enter_graceful_shutdown()
        for target in (port_target, socket_target):
            assert health_status(target, GRPC_SERVICE) == "NOT_SERVING"


def test_health_listeners_are_off_unless_asked(pipeline, tmp_path):
    with running_server(pipeline, tmp_path) as served:
        assert served.server.health_port is None
        assert not list(tmp_path.glob("*.sock"))
        assert health_status(served.address) == "SERVING"  # the main listener still answers health


@pytest.mark.parametrize("overrides, field", [
    ({"health_listen": "127.0.0.1:9464", "metrics_listen": "127.0.0.1:9464"}, "health_listen"),
    ({"health_listen": "nonsense"}, "health_listen"),
    ({"health_socket": "relative.sock"}, "health_socket"),
    ({"health_socket": "/nonexistent-dir/health.sock"}, "health_socket"),
])
def test_bad_health_settings_fail_closed_naming_the_option(tmp_path, overrides, field):
    config = ServerConfig(model=None, insecure=True, listen="127.0.0.1:0", audit_log=tmp_path / "a.jsonl",
                          **overrides)
    with pytest.raises(ConfigError) as err:
        config.validated(model_required=False)
    assert err.value.field == field


def test_a_regular_file_in_the_socket_place_is_refused(tmp_path):
    squatter = tmp_path / "health.sock"
    squatter.write_text("not a socket")
    config = ServerConfig(model=None, insecure=True, audit_log=tmp_path / "a.jsonl", health_socket=squatter)
    with pytest.raises(ConfigError, match="not a socket"):
        config.validated(model_required=False)


def test_client_accepts_unix_targets_as_local_only():
    assert ClientConfig(server="unix:/run/wanrt/health.sock", insecure=True).validated()
    with pytest.raises(ConfigError):
        ClientConfig(server="10.0.0.1:50051", insecure=True).validated()
