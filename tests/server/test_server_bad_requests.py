"""A table of bad requests: each gets its expected status, names its field, is audited, and the server stays up."""

from __future__ import annotations

import dataclasses
import time

import grpc
import numpy as np
import pytest
from server_testkit import TINY, running_server

from wanrt.engine.request import GenerationRequest
from wanrt.server.client import bad_request_field
from wanrt.server.errors import RemoteError
from wanrt.server.v1 import wanrt_pb2 as pb

GENERATE = "/wanrt.v1.VideoGeneration/Generate"
DESCRIBE = "/wanrt.v1.VideoGeneration/DescribeModel"
INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED


def _ok(**fields: object) -> pb.GenerateRequest:
    """A valid request (1 frame, 16x16, 1 step) with ``fields`` changed."""
    latents = fields.pop("latents", None)
    values = {"prompt": "a turtle", "frames": 1, "height": 16, "width": 16, "steps": 1, "guidance": 1.0, **fields}
    message = pb.GenerateRequest(**values)
    if latents is not None:
        message.latents.CopyFrom(latents)
    return message


def _latents(shape: tuple[int, ...], values: np.ndarray | None = None) -> pb.Latents:
    data = np.zeros(shape, "<f4") if values is None else values.astype("<f4")
    return pb.Latents(shape=list(shape), float32_data=data.tobytes())


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


NAN_LATENTS = np.zeros((1, 16, 1, 2, 2), np.float32)
NAN_LATENTS[0, 3, 0, 1, 1] = np.nan

# (case id, method, request bytes, expected code, expected field or None)
CASES = [
    ("empty prompt", GENERATE, _ok(prompt=""), INVALID, "prompt"),
    ("blank prompt", GENERATE, _ok(prompt=" \t\n "), INVALID, "prompt"),
    ("100 kB prompt", GENERATE, _ok(prompt="a" * 100_000), INVALID, "prompt"),
    ("5 kB negative prompt", GENERATE, _ok(negative_prompt="b" * 5000), INVALID, "negative_prompt"),
    ("zero frames", GENERATE, _ok(frames=0), INVALID, "frames"),
    ("negative frames", GENERATE, _ok(frames=-5), INVALID, "frames"),
    ("frames not 4k+1", GENERATE, _ok(frames=6), INVALID, "frames"),
    ("frames over limit", GENERATE, _ok(frames=13), INVALID, "frames"),
    ("frames int32 max", GENERATE, _ok(frames=2**31 - 1), INVALID, "frames"),
    ("height under min", GENERATE, _ok(height=8), INVALID, "height"),
    ("height not multiple", GENERATE, _ok(height=40), INVALID, "height"),
    ("width over limit", GENERATE, _ok(width=4096), INVALID, "width"),
    ("negative width", GENERATE, _ok(width=-16), INVALID, "width"),
    ("zero steps", GENERATE, _ok(steps=0), INVALID, "steps"),
    ("steps over limit", GENERATE, _ok(steps=101), INVALID, "steps"),
    ("negative steps", GENERATE, _ok(steps=-1), INVALID, "steps"),
    ("NaN guidance", GENERATE, _ok(guidance=float("nan")), INVALID, "guidance"),
    ("inf guidance", GENERATE, _ok(guidance=float("inf")), INVALID, "guidance"),
    ("negative guidance", GENERATE, _ok(guidance=-1.0), INVALID, "guidance"),
    ("guidance over limit", GENERATE, _ok(guidance=51.0), INVALID, "guidance"),
    ("NaN guidance_2", GENERATE, _ok(guidance_2=float("nan")), INVALID, "guidance_2"),
    ("-inf guidance_2", GENERATE, _ok(guidance_2=float("-inf")), INVALID, "guidance_2"),
    ("negative seed (-1 asks for a random one)", GENERATE, _ok(seed=-2), INVALID, "seed"),
    ("zero fps", GENERATE, _ok(fps=0), INVALID, "fps"),
    ("fps over limit", GENERATE, _ok(fps=1000), INVALID, "fps"),
    ("unknown format", GENERATE, _ok(format=99), INVALID, "format"),
    ("control chars in client id", GENERATE, _ok(client_request_id="a\nb"), INVALID, "client_request_id"),
    ("client id too long", GENERATE, _ok(client_request_id="x" * 129), INVALID, "client_request_id"),
    ("latents wrong shape", GENERATE, _ok(latents=_latents((1, 16, 2, 2, 2))), INVALID, "latents"),
    ("latents 4-d", GENERATE, _ok(latents=_latents((16, 1, 2, 2))), INVALID, "latents"),
    ("latents byte count", GENERATE, _ok(latents=pb.Latents(shape=[1, 16, 1, 2, 2], float32_data=b"\0" * 12)),
     INVALID, "latents"),
    ("latents NaN", GENERATE, _ok(latents=_latents((1, 16, 1, 2, 2), NAN_LATENTS)), INVALID, "latents"),
    ("unknown field", GENERATE, _ok().SerializeToString() + _field(99, 0, _varint(1)), INVALID, "request"),
    ("unknown nested field", GENERATE,
     _ok().SerializeToString() + _field(11, 2, _varint(2) + _field(9, 0, _varint(1))), INVALID, "latents"),
    ("not protobuf", GENERATE, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", INVALID, "request"),
    ("invalid UTF-8 prompt", GENERATE, _field(1, 2, _varint(2) + b"\xff\xfe"), INVALID, "request"),
    ("truncated message", GENERATE, _ok(prompt="a turtle swims").SerializeToString()[:5], INVALID, "request"),
    ("oversized message (2 MiB)", GENERATE, _field(2, 2, _varint(2 << 20) + b"x" * (2 << 20)), EXHAUSTED, None),
    ("describe: unknown field", DESCRIBE, _field(7, 0, _varint(1)), INVALID, "request"),
    ("describe: not protobuf", DESCRIBE, b"\x0a\xff", INVALID, "request"),
]


@pytest.fixture(scope="module")
def served(pipeline, tmp_path_factory):
    with running_server(pipeline, tmp_path_factory.mktemp("bad")) as running:
        yield running


def call_raw(channel: grpc.Channel, method: str, payload: bytes, timeout: float = 10) -> grpc.RpcError | None:
    """Sends bytes as they are (no client-side serialisation); returns the error, or None on success."""
    try:
        if method == GENERATE:
            for _ in channel.unary_stream(method)(payload, timeout=timeout):
                pass
        else:
            channel.unary_unary(method)(payload, timeout=timeout)
    except grpc.RpcError as err:
        return err
    return None


def test_bad_request_table(served):
    assert len(CASES) >= 20
    with grpc.insecure_channel(served.address) as channel:
        for name, method, request, code, field in CASES:
            payload = request if isinstance(request, bytes) else request.SerializeToString()
            started = time.monotonic()
            err = call_raw(channel, method, payload)
            assert err is not None, f"{name}: accepted"
            assert err.code() == code, f"{name}: {err.code()} {err.details()}"
            assert time.monotonic() - started < 2.0, f"{name}: not refused at once"
            if field is not None:
                assert bad_request_field(err)[0] == field, f"{name}: {err.details()}"
                assert err.details().startswith(f"{field}: "), name
    with served.client() as client:
        assert client.health() == "SERVING"
        # ...and still generates.
        assert client.generate(_as_request()).frames == 1
    statuses = [r["status"] for r in served.audit()]
    assert "INTERNAL" not in statuses and "UNKNOWN" not in statuses
    # Every case that reached the servicer left its audit line (oversized messages never get that far).
    assert statuses.count("INVALID_ARGUMENT") == sum(c[3] == INVALID for c in CASES)
    assert served.metric("wanrt_live_jobs") == 0


def test_client_api_raises_invalid_request_error_with_field(served):
    from wanrt.errors import InvalidRequestError

    with served.client() as client, pytest.raises(InvalidRequestError) as info:
        client.generate(_as_request(frames=6))
    assert info.value.field == "frames" and "4k+1" in info.value.message


def test_nan_guidance_is_audited_as_strict_json(served):
    with grpc.insecure_channel(served.address) as channel:
        call_raw(channel, GENERATE, _ok(guidance=float("nan")).SerializeToString())
    line = served.audit_log.read_text().splitlines()[-1]
    assert '"guidance":"nan"' in line and "NaN" not in line


def _as_request(**changes: object) -> GenerationRequest:
    return dataclasses.replace(TINY, **changes)


class FaultyBackendStandIn:
    """Test double for a pipeline whose backend fails mid-job (e.g. an accelerator error). It carries the real
    pipeline's spec and limits; it generates nothing, and nothing here claims it does."""

    def __init__(self, real) -> None:
        self.spec, self.limits, self.identity, self.defaults = real.spec, real.limits, real.identity, real.defaults
        self.warnings = real.warnings

    def generate(self, request, *, on_progress=None, should_stop=None):
        raise RuntimeError("CUDA error: an illegal memory access at 0xdeadbeef in /opt/secret/path.so")
        yield  # a generator, like VideoPipeline.generate


def test_server_faults_are_internal_name_the_job_and_leak_nothing(pipeline, tmp_path):
    with running_server(FaultyBackendStandIn(pipeline), tmp_path) as served, served.client() as client:
        for _ in range(2):  # the worker survives the first failure
            with pytest.raises(RemoteError) as failed:
                client.generate(TINY)
            assert failed.value.code == "INTERNAL"
            record = served.audit()[-1]
            assert record["request_id"] in failed.value.details
            assert "deadbeef" not in failed.value.details and "secret" not in failed.value.details
        assert client.health() == "SERVING"
        assert served.server.jobs.live_jobs == 0
