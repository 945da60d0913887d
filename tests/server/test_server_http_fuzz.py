"""Every parse or conversion failure on the HTTP APIs is a 400 naming the field, never a 500: the bodies that
crashed the server once (a float past any clip, JSON nested 100,000 deep, an unpaired surrogate, control
characters and a 1000-character request id), then hypothesis-made bodies at both APIs of a real loopback server.
Requests that happen to be valid are cancelled once accepted."""

from __future__ import annotations

import json
import random
import socket

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_testkit import running_server, wait_until

SERVER_BACKENDS = ("onnxruntime",)  # the server is the subject: production's backend is enough
OPENAI, DASHSCOPE = "/v1/videos", "/api/v1/services/aigc/video-generation/video-synthesis"
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
ALLOWED = {200, 400, 404, 413, 429}


@pytest.fixture(scope="module")
def served(pipeline, tmp_path_factory):
    with running_server(pipeline, tmp_path_factory.mktemp("httpfuzz"), http_listen="127.0.0.1:0",
                        queue_size=1) as running:
        running.base = f"http://127.0.0.1:{running.server.http.port}"
        running.model = running.server.door.model_name
        with httpx.Client(base_url=running.base, timeout=30) as http:
            running.http = http
            yield running
            assert wait_until(lambda: running.server.jobs.live_jobs == 0, 30)
        statuses = {r["status"] for r in running.audit()}
        assert "INTERNAL" not in statuses and "UNKNOWN" not in statuses, statuses


def post(served, path: str, content: bytes, headers: dict | None = None) -> httpx.Response:
    response = served.http.post(path, content=content, headers={"content-type": "application/json",
                                                                **(headers or {})})
    assert response.status_code in ALLOWED, (response.status_code, response.text, content[:200])
    if response.status_code == 200:  # valid by chance: free the worker for the next one
        body = response.json()
        if path == OPENAI:
            served.http.delete(f"{OPENAI}/{body['id']}")
        else:
            served.http.post(f"/api/v1/tasks/{body['output']['task_id']}/cancel")
    return response


def param(response: httpx.Response, path: str) -> str | None:
    body = response.json()
    if path == OPENAI:
        return body["error"]["param"]
    return body["message"].split(": ", 1)[0]


def dashscope_body(served, **parameters) -> dict:
    return {"model": served.model, "input": {"prompt": "a turtle"},
            "parameters": {"size": "16*16", "duration": 0.05, "steps": 1, **parameters}}


def test_the_bodies_that_crashed_the_server(served):
    deep = b'{"prompt": "a", "size": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases = [
        (OPENAI, json.dumps({"prompt": "a", "seconds": 1e308}), "seconds"),
        (OPENAI, json.dumps({"prompt": "a", "seconds": "1e308"}), "seconds"),
        (OPENAI, json.dumps({"prompt": "a", "seconds": 4, "fps": 10**40}), "fps"),
        (OPENAI, deep, "body"),
        (OPENAI, b'{"prompt": "\\ud800"}', "prompt"),
        (OPENAI, b'{"prompt": "a", "negative_prompt": "x\\udfff"}', "negative_prompt"),
        (OPENAI, b'{"prompt": "a", "\\ud800": 1}', None),  # an unknown key that is not valid Unicode
        (OPENAI, json.dumps({"prompt": "a", "frames": 10**400 // 10**380}), "frames"),
        (OPENAI, b'{"prompt": "a", "steps": 1' + b"0" * 5000 + b"}", "body"),  # past int parsing's digit limit
        (DASHSCOPE, json.dumps(dashscope_body(served, duration=1e308)), "parameters.duration"),
        (DASHSCOPE, json.dumps(dashscope_body(served, guidance_scale=-1e308)), "parameters.guidance_scale"),
        (DASHSCOPE, deep.replace(b'"prompt": "a", "size"', b'"model": "m", "input"'), "body"),
        (DASHSCOPE, json.dumps(dashscope_body(served, seed=2**80)), "parameters.seed"),
        (DASHSCOPE, b'{"model": "' + served.model.encode() + b'", "input": {"prompt": "\\ud800"}}', "input.prompt"),
    ]
    for path, content, field in cases:
        content = content if isinstance(content, bytes) else content.encode()
        response = post(served, path, content)
        assert response.status_code == 400, (path, content[:80], response.text)
        if field is not None:
            assert param(response, path) == field, (content[:80], response.text)
    assert served.http.get("/v1/models").status_code == 200


def test_request_ids_with_control_characters_or_too_long(served):
    body = json.dumps({"prompt": "a", "size": "16x16", "frames": 1, "steps": 1}).encode()
    long_id = "r" * 1000
    for value in ("tab\there", "caf\xe9".encode("latin-1"), long_id):  # bytes: sent as they are (obs-text)
        response = post(served, OPENAI, body, {"x-client-request-id": value})
        assert response.status_code == 400 and param(response, OPENAI) == "x-client-request-id", response.text
        record = served.audit()[-1]
        assert record["status"] == "INVALID_ARGUMENT" and record["client_request_id"] is None
        assert record["client_request_id_refused"]["length"] == len(value)  # (latin-1: one character a byte)
    assert long_id not in served.audit_log.read_text()  # a refused id is recorded by length and digest only
    # A control character h11 itself refuses never reaches the application: the connection gets a 400.
    host, port = "127.0.0.1", served.server.http.port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /v1/videos HTTP/1.1\r\nHost: x\r\nX-Client-Request-Id: a\x01b\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert sock.recv(100).startswith(b"HTTP/1.1 400")


# --- random bodies ------------------------------------------------------------------------------------------------

KEYS = ["prompt", "negative_prompt", "model", "size", "seconds", "frames", "steps", "guidance", "guidance_2", "seed",
        "fps", "input", "parameters", "duration", "frame_rate", "resolution", "temperature", "prompt_extend"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                    st.sampled_from(["16x16", "16*16", "480P", "a turtle", "1e308", "-1", ""]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8),
                                                                       inner, max_size=5)), max_leaves=12)
bodies = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), values, max_size=8)


@FUZZ
@given(body=bodies, dashscope=st.booleans())
def test_fuzz_json_bodies(served, body, dashscope):
    if dashscope and random.Random(len(body)).random() < 0.5:  # often a well-formed envelope around the noise
        body = {"model": served.model, "input": {"prompt": "a turtle"}, "parameters": body}
    post(served, DASHSCOPE if dashscope else OPENAI, json.dumps(body).encode())


@FUZZ
@given(raw=st.binary(max_size=400), dashscope=st.booleans(),
       kind=st.sampled_from(["application/json", "multipart/form-data; boundary=x",
                             "application/x-www-form-urlencoded", "text/plain", ""]))
def test_fuzz_raw_bodies(served, raw, dashscope, kind):
    post(served, DASHSCOPE if dashscope else OPENAI, raw, {"content-type": kind})
