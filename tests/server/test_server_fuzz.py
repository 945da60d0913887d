"""Bounded fuzzing: hypothesis-made requests, random and mutated bytes as messages, and garbage on the TCP port.

The server must answer only with allowed codes (never UNKNOWN or INTERNAL), keep SERVING, and end with no live
job. Requests that happen to be valid are cancelled once accepted, which also exercises cancellation.
"""

from __future__ import annotations

import collections
import math
import random
import socket

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_testkit import running_server, wait_until

from wanrt.server.v1 import wanrt_pb2 as pb

GENERATE = "/wanrt.v1.VideoGeneration/Generate"
DESCRIBE = "/wanrt.v1.VideoGeneration/DescribeModel"
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.CANCELLED}
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

pytestmark = pytest.mark.slow
SERVER_BACKENDS = ("onnxruntime",)  # the server is the subject: production's backend is enough

# Status code names each fuzz test saw, by test: the fixture's teardown checks them for whichever tests ran.
seen: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
MIN_CALLS = 150  # each hypothesis test sends FUZZ's max_examples calls


@pytest.fixture(scope="module")
def served(pipeline, tmp_path_factory):
    """The fuzzed server. Its teardown is the summary: whatever selection of this module's tests ran, they left
    the server SERVING with no live job, every answer and audit line was an allowed code, and every fuzz test
    that ran made its calls."""
    seen.clear()  # one summary per server (the fixture runs once per backend)
    with running_server(pipeline, tmp_path_factory.mktemp("fuzz"), queue_size=2) as running:
        with grpc.insecure_channel(running.address) as channel:
            running.channel = channel
            yield running
            with running.client() as client:
                assert client.health() == "SERVING"
            assert wait_until(lambda: running.server.jobs.live_jobs == 0, 10)
            assert running.metric("wanrt_live_jobs") == 0
            statuses = {r["status"] for r in running.audit()}
            assert statuses <= {code.name for code in ALLOWED}, statuses
    print(dict(seen))
    for test, codes in seen.items():
        assert codes.total() >= MIN_CALLS and set(codes) <= {code.name for code in ALLOWED}, (test, codes)
        assert codes["INVALID_ARGUMENT"] > 0, (test, codes)  # the fuzzing reached validation
    if "mutated" in seen:  # lightly mutated valid requests: some still valid, accepted, then cancelled
        assert seen["mutated"]["CANCELLED"] > 0, seen["mutated"]


def send(channel: grpc.Channel, method: str, payload: bytes, test: str) -> grpc.StatusCode:
    """One call; a call the server accepts is cancelled right after its first message. ``test``: who sent it."""
    try:
        if method == DESCRIBE:
            channel.unary_unary(method)(payload, timeout=10)
            code = grpc.StatusCode.OK
        else:
            call = channel.unary_stream(method)(payload, timeout=10)
            first = next(call)
            assert first.startswith(b"\x0a"), "the first message must be Accepted"  # field 1, length-delimited
            call.cancel()
            code = grpc.StatusCode.CANCELLED
    except grpc.RpcError as err:
        code = err.code()
    seen[test][code.name] += 1
    assert code in ALLOWED, f"{code} for {payload[:64]!r}"
    return code


def near(valid: list, wild: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly values around the limits (so some requests are valid), sometimes anything."""
    return st.one_of(st.sampled_from(valid), wild)


int32 = st.integers(-(2**31), 2**31 - 1)
float64 = st.floats(allow_nan=True, allow_infinity=True)

requests = st.builds(
    dict,
    prompt=st.one_of(st.sampled_from(["a turtle", "", " ", "x" * 5000]), st.text(max_size=64)),
    negative_prompt=st.one_of(st.just(""), st.text(max_size=32)),
    frames=st.one_of(st.none(), near([1, 5, 9, 13, 0], int32)),
    height=st.one_of(st.none(), near([16, 32, 64, 17, 80], int32)),
    width=st.one_of(st.none(), near([16, 48, 64, 0], int32)),
    steps=st.one_of(st.none(), near([1, 2, 100, 101], int32)),
    guidance=st.one_of(st.none(), near([0.0, 1.0, 5.0, math.nan, math.inf], float64)),
    guidance_2=st.one_of(st.none(), float64),
    seed=st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    fps=st.one_of(st.none(), near([1, 16, 60, 61], int32)),
    format=st.integers(0, 4),
    client_request_id=st.one_of(st.just(""), st.text(max_size=140)),
    latents=st.one_of(st.none(), st.tuples(st.lists(st.integers(0, 20), max_size=6), st.binary(max_size=256))),
)


@FUZZ
@given(fields=requests)
def test_fuzz_structured_requests(served, fields):
    latents = fields.pop("latents")
    message = pb.GenerateRequest(**{k: v for k, v in fields.items() if v is not None})
    if latents is not None:
        message.latents.shape.extend(latents[0])
        message.latents.float32_data = latents[1]
    send(served.channel, GENERATE, message.SerializeToString(), "structured")


@FUZZ
@given(payload=st.binary(max_size=600), describe=st.booleans())
def test_fuzz_random_bytes(served, payload, describe):
    send(served.channel, DESCRIBE if describe else GENERATE, payload, "random_bytes")


@FUZZ
@given(seed=st.integers(0, 2**32 - 1))
def test_fuzz_mutated_valid_requests(served, seed):
    rng = random.Random(seed)
    data = bytearray(pb.GenerateRequest(prompt="a turtle swims", frames=1, height=16, width=16, steps=1,
                                        guidance=1.0, seed=5, client_request_id="fuzz").SerializeToString())
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(("flip", "insert", "delete", "truncate"))
        position = rng.randrange(len(data)) if data else 0
        if op == "flip" and data:
            data[position] ^= 1 << rng.randrange(8)
        elif op == "insert":
            data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == "delete" and data:
            del data[position]
        elif op == "truncate":
            del data[position:]
    send(served.channel, GENERATE, bytes(data), "mutated")


def test_garbage_on_the_tcp_port(served):
    """Not HTTP/2 at all, HTTP/1.1, and an HTTP/2 preface followed by junk: each connection is dropped."""
    host, port = served.address.rsplit(":", 1)
    rng = random.Random(1)
    payloads = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096))) for _ in range(20)]
    payloads += [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 200]
    for payload in payloads:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(payload)
            try:
                sock.recv(4096)
            except (TimeoutError, ConnectionError):
                pass

