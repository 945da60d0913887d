"""The OpenAI-compatible /v1/videos HTTP API, driven by the real `openai` package and by raw HTTP (httpx), on a
real server whose gRPC and HTTP listeners both run on 127.0.0.1 and share one queue, audit log and metrics."""

from __future__ import annotations

import hashlib
import json
import math
import ssl
import threading

import httpx
import openai
import pytest
from server_testkit import LONG, TINY, read_audit, running_server, serve_process, wait_until
from test_server_bad_requests import CASES, GENERATE

from wanrt.engine.request import Limits
from wanrt.engine.shapes import frames_for_seconds
from wanrt.server.auth import hash_token
from wanrt.server.client import Client
from wanrt.server.config import ServerConfig
from wanrt.server.errors import ConfigError
from wanrt.trust.provenance import check_clip

ALICE, BOB, VIEWER = "alice-token-0123456789abcdef", "bob-token-0123456789abcdef", "viewer-token-0123456789abcdef"
# The cheapest real job (TINY) as HTTP body fields.
TINY_BODY = {"prompt": TINY.prompt, "size": "16x16", "frames": 1, "steps": 1, "guidance": 1.0}
LONG_BODY = {"prompt": LONG.prompt, "size": "64x64", "frames": LONG.frames, "steps": LONG.steps,
             "guidance": LONG.guidance}
# The subject is the HTTP layer over the shared queue: one backend (what production serves on) shows it.
SERVER_BACKENDS = ("onnxruntime",)
# The SDK marks its videos API deprecated (OpenAI's Sora service ends); the API shape is what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")
SDK_EXTRA = {"size": "16x16", "frames": 1, "steps": 1, "guidance": 1.0}  # wanrt's own fields, as the SDK's extra_body


def _tokens(tmp_path):
    path = tmp_path / "tokens.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in [
        {"id": "alice", "sha256": hash_token(ALICE)}, {"id": "bob", "sha256": hash_token(BOB)},
        {"id": "viewer", "sha256": hash_token(VIEWER), "methods": ["DescribeModel"]}]))
    return path


@pytest.fixture(scope="module")
def served(pipeline, tmp_path_factory):
    """Plaintext on loopback, tokens for two principals, one worker and no queue (the second job is refused)."""
    tmp = tmp_path_factory.mktemp("http")
    with running_server(pipeline, tmp, tokens=_tokens(tmp), http_listen="127.0.0.1:0", queue_size=0) as running:
        yield running


def base_url(served, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{served.server.http.port}"


def sdk(served, token: str = ALICE) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url(served) + "/v1", api_key=token, max_retries=0, timeout=30)


def raw(served, token: str | None = ALICE) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=base_url(served), headers=headers, timeout=30)


def audit_for(served, request_id: str) -> list[dict]:
    return [r for r in served.audit() if r.get("request_id") == request_id or r.get("video_id") == request_id]


def test_openai_sdk_creates_polls_downloads_and_deletes(served):
    client = sdk(served)
    generated_before = served.metric("wanrt_requests_total", method="Generate", code="OK")
    video = client.videos.create(prompt=TINY.prompt, size="16x16", extra_body=SDK_EXTRA)
    assert video.object == "video" and video.status in ("queued", "in_progress") and video.size == "16x16"
    assert video.model == served.server.door.facts.identity["model"].rsplit("/", 1)[-1]
    video = client.videos.poll(video.id, poll_interval_ms=20)
    assert video.status == "completed" and video.progress == 100 and video.error is None
    assert video.completed_at >= video.created_at and video.expires_at > video.completed_at
    assert video.seconds == "0.06"  # 1 frame at 16 fps

    content = client.videos.download_content(video.id)
    data = content.read()
    assert data[4:8] == b"ftyp"  # an MP4
    # The job is a Generate job like gRPC's: one audit line, the same fields, counted in the same metrics.
    (record,) = [r for r in audit_for(served, video.id) if r["method"] == "Generate"]
    assert record["status"] == "OK" and record["principal"] == "alice" and record["api"] == "openai"
    assert hashlib.sha256(data).hexdigest() == record["output"]["sha256"] == content.response.headers["x-video-sha256"]
    assert record["params"]["frames"] == 1 and record["params"]["prompt_hmac"]
    assert served.metric("wanrt_requests_total", method="Generate", code="OK") == generated_before + 1
    # The download carries its provenance: the signed C2PA manifest is embedded (by default this installation's).
    clip = served.audit_log.with_name(f"{video.id}.mp4")
    clip.write_bytes(data)
    check = check_clip(clip)
    assert check.state == "valid" and check.ai_generated and record["output"]["c2pa"] == "embedded"
    # The same request over gRPC makes the same bytes before signing: the same pipeline, encoder and seed.
    with served.client(token=ALICE) as grpc_client:
        assert grpc_client.generate(TINY).sha256 == record["output"]["unsigned_sha256"]
    download = [r for r in audit_for(served, video.id) if r["method"] == "DownloadVideo"]
    assert download[-1]["output"]["sha256"] == record["output"]["sha256"]

    assert video.id in [v.id for v in client.videos.list()]
    deleted = client.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id and deleted.object == "video.deleted"
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    assert audit_for(served, video.id)[-1]["method"] == "DeleteVideo"


def test_curl_shapes_json_and_multipart(served):
    """What the README's curl lines send: JSON, and the multipart form OpenAI's own API takes."""
    with raw(served) as http:
        for sent in ({"json": TINY_BODY}, {"files": {k: (None, str(v)) for k, v in TINY_BODY.items()}}):
            created = http.post("/v1/videos", **sent)
            assert created.status_code == 200, created.text
            video_id = created.json()["id"]
            assert wait_until(lambda: http.get(f"/v1/videos/{video_id}").json()["status"] == "completed", 30)  # noqa: B023
            body = http.get(f"/v1/videos/{video_id}/content")
            assert body.headers["content-type"] == "video/mp4"
            assert hashlib.sha256(body.content).hexdigest() == body.headers["x-video-sha256"]
            assert http.delete(f"/v1/videos/{video_id}").json()["deleted"] is True


def test_wanrt_serve_http_listen(tiny_artifact_dir, tmp_path):
    """The command line: `wanrt serve --http-listen` reports its port, serves the SDK and drains on SIGTERM."""
    with serve_process(tiny_artifact_dir, tmp_path, "--backend", "onnxruntime", "--http-listen", "127.0.0.1:0",
                       "--queue-size", "1") as process:
        port = process.ready["http_port"]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
        video = client.videos.create_and_poll(prompt="a", extra_body=SDK_EXTRA, poll_interval_ms=20)
        data = client.videos.download_content(video.id).read()
        process.terminate()
        assert process.process.wait(30) == 0
        assert json.loads(process.process.stdout.read().strip().splitlines()[-1]) == {"event": "stopped"}
    (record,) = [r for r in read_audit(process.audit_log) if r["request_id"] == video.id]
    assert record["output"]["sha256"] == hashlib.sha256(data).hexdigest()


# --- errors ---------------------------------------------------------------------------------------------------

def _http_case(message) -> tuple[dict, dict]:
    """A gRPC GenerateRequest as the HTTP body that asks the same (height/width become ``size``)."""
    body = {field.name: value for field, value in message.ListFields()}
    if "height" in body or "width" in body:
        body["size"] = f"{body.pop('width', 16)}x{body.pop('height', 16)}"
    return body, {"height": "size", "width": "size"}


def _http_equivalents() -> list[tuple[str, dict, str]]:
    """The gRPC bad-request table's cases that HTTP can express (not latents, formats or raw protobuf)."""
    cases = []
    for name, method, request, _code, field in CASES:
        if method != GENERATE or isinstance(request, bytes) or field in ("latents", "format", "client_request_id"):
            continue
        body, renamed = _http_case(request)
        cases.append((name, body, renamed.get(field, field)))
    return cases


HTTP_ONLY = [
    ("unknown field", {**TINY_BODY, "style": "noir"}, "style"),
    ("input_reference", {**TINY_BODY, "input_reference": "x"}, "input_reference"),
    ("no prompt", {"size": "16x16"}, "prompt"),
    ("another model", {**TINY_BODY, "model": "sora-2"}, "model"),
    ("size not WxH", {**TINY_BODY, "size": "16 by 16"}, "size"),
    ("seconds and frames", {**TINY_BODY, "seconds": "4"}, "seconds"),
    ("seconds over the frame limit", {k: v for k, v in TINY_BODY.items() if k != "frames"} | {"seconds": "60"},
     "seconds"),
    ("seconds zero", {k: v for k, v in TINY_BODY.items() if k != "frames"} | {"seconds": 0}, "seconds"),
    ("steps as text", {**TINY_BODY, "steps": "many"}, "steps"),
    ("frames boolean", {**TINY_BODY, "frames": True}, "frames"),
    ("prompt a number", {**TINY_BODY, "prompt": 7}, "prompt"),
]


def test_bad_request_table_over_http(served):
    cases = _http_equivalents() + HTTP_ONLY
    assert len(cases) >= 30
    with raw(served) as http:
        for name, body, field in cases:
            # Python's json writes NaN/Infinity, as many clients do; the server reads them and refuses them.
            response = http.post("/v1/videos", content=json.dumps(body), headers={"content-type": "application/json"})
            assert response.status_code == 400, f"{name}: {response.status_code} {response.text}"
            error = response.json()["error"]
            assert error["param"] == field and error["type"] == "invalid_request_error", f"{name}: {error}"
            assert error["code"] == "invalid_argument" and error["message"], name
        # Multipart fields are text: the same checks apply after conversion.
        form = http.post("/v1/videos", files={k: (None, str(v)) for k, v in {**TINY_BODY, "steps": 0}.items()})
        assert form.status_code == 400 and form.json()["error"]["param"] == "steps"
        not_json = http.post("/v1/videos", content=b"{prompt", headers={"content-type": "application/json"})
        assert not_json.status_code == 400 and not_json.json()["error"]["param"] == "body"
        too_big = http.post("/v1/videos", json={"prompt": "a" * (served.server.max_request_bytes + 1)})
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "resource_exhausted"
        assert http.get("/v1/videos/video_nope").status_code == 404
        assert http.get("/v1/nothing").json()["error"]["type"] == "invalid_request_error"
        assert http.get("/v1/videos", params={"limit": 0}).json()["error"]["param"] == "limit"
    statuses = [r["status"] for r in served.audit()]
    assert "INTERNAL" not in statuses and "UNKNOWN" not in statuses
    assert served.metric("wanrt_live_jobs") == 0


def test_tokens_401_and_403_are_audited(served):
    for token, status in ((None, 401), ("not-a-token", 401), (VIEWER, 403)):
        with raw(served, token) as http:
            response = http.post("/v1/videos", json=TINY_BODY)
        assert response.status_code == status, response.text
        record = served.audit()[-1]
        assert record["status"] == ("UNAUTHENTICATED" if status == 401 else "PERMISSION_DENIED")
        assert record["token_presented"] is (token is not None) and record["method"] == "Generate"
        assert token is None or token not in json.dumps(record)  # never the secret
    with pytest.raises(openai.AuthenticationError):
        sdk(served, "wrong").videos.list()
    with pytest.raises(openai.PermissionDeniedError):
        sdk(served, VIEWER).videos.create(prompt="a", extra_body=SDK_EXTRA)


def test_models_lists_the_served_model_for_describe_tokens(served):
    with raw(served, VIEWER) as http:  # a token that may only describe the model may list it
        (model,) = http.get("/v1/models").json()["data"]
    limits = served.server.door.reported_limits
    assert model["id"] == served.server.door.model_name and model["object"] == "model"
    assert model["limits"]["max_frames"] == limits.max_frames and model["limits"]["max_height"] == limits.max_height
    assert model["identity"] == served.server.door.facts.identity
    own = served.server.door.facts.defaults.request()  # the model's defaults, not wanrt's preview ones
    # The tiny model's size and steps happen to equal wanrt's preview defaults; its schedule, shift and guidance
    # pair come only from its manifest (the preview defaults leave them unset), so they tell the two apart.
    fields = ("frames", "height", "width", "steps", "guidance", "guidance_2", "shift", "schedule", "fps")
    assert None not in (own.schedule, own.shift, own.guidance_2)
    assert {k: model["defaults"][k] for k in fields} == {k: getattr(own, k) for k in fields}
    assert [m.id for m in sdk(served).models.list().data] == [model["id"]]  # OpenAI's own client reads it
    with raw(served, "not-a-token") as http:
        assert http.get("/v1/models").status_code == 401


def test_queue_full_429_and_delete_cancels_the_running_job(served):
    alice = sdk(served)
    running = alice.videos.create(prompt=LONG.prompt, size="64x64",
                                  extra_body={"frames": LONG.frames, "steps": LONG.steps})
    assert wait_until(lambda: alice.videos.retrieve(running.id).status == "in_progress", 30)
    assert served.metric("wanrt_busy_workers") == 1
    with pytest.raises(openai.RateLimitError) as refused:  # one worker, no queue
        alice.videos.create(prompt="a", extra_body=SDK_EXTRA)
    assert refused.value.response.headers["retry-after"] == "1"
    assert refused.value.body["code"] == "resource_exhausted"
    with pytest.raises(openai.ConflictError):  # no content before it is done
        alice.videos.download_content(running.id)

    alice.videos.delete(running.id)
    assert wait_until(lambda: served.metric("wanrt_busy_workers") == 0, 10)  # freed at the next step
    (record,) = [r for r in audit_for(served, running.id) if r["method"] == "Generate"]
    assert record["status"] == "CANCELLED"
    # ... and the worker takes the next job at once.
    assert alice.videos.create_and_poll(prompt="a", extra_body=SDK_EXTRA, poll_interval_ms=20).status == "completed"


def test_a_principal_sees_and_deletes_only_its_own_videos(served):
    alice, bob = sdk(served, ALICE), sdk(served, BOB)
    video = alice.videos.create_and_poll(prompt="a", extra_body=SDK_EXTRA, poll_interval_ms=20)
    for attempt in (lambda: bob.videos.retrieve(video.id), lambda: bob.videos.download_content(video.id),
                    lambda: bob.videos.delete(video.id)):
        with pytest.raises(openai.NotFoundError):  # not 403: another's video is not known to exist
            attempt()
    assert video.id not in [v.id for v in bob.videos.list()]
    assert alice.videos.retrieve(video.id).status == "completed"
    assert alice.videos.delete(video.id).deleted


def test_list_is_paginated_newest_first(served):
    alice = sdk(served)
    ids = [alice.videos.create_and_poll(prompt="a", extra_body=SDK_EXTRA, poll_interval_ms=20).id for _ in range(3)]
    first = alice.videos.list(limit=2)
    assert [v.id for v in first.data] == ids[::-1][:2] and first.has_more
    assert [v.id for v in alice.videos.list(limit=2, order="asc", after=ids[0]).data] == ids[1:]
    assert [v.id for v in alice.videos.list(limit=2).iter_pages().__next__().data] == ids[::-1][:2]
    for video_id in ids:
        alice.videos.delete(video_id)


# --- retention, draining ------------------------------------------------------------------------------------

def test_finished_videos_expire_and_respect_the_bytes_budget(pipeline, tmp_path):
    with running_server(pipeline, tmp_path, http_listen="127.0.0.1:0", http_keep_seconds=1.0,
                        http_keep_bytes=1) as served, raw(served, None) as http:
        first = http.post("/v1/videos", json=TINY_BODY).json()["id"]
        assert wait_until(lambda: http.get(f"/v1/videos/{first}").status_code == 404, 20)
        # Over the bytes budget, a video finished is removed at once; the job itself succeeded (audited OK).
        assert [r["status"] for r in audit_for(served, first)] == ["OK"]
        assert served.server.http.store.stored_bytes == 0
    with running_server(pipeline, tmp_path, http_listen="127.0.0.1:0", http_keep_seconds=0.5) as served, \
            raw(served, None) as http:
        video_id = http.post("/v1/videos", json=TINY_BODY).json()["id"]
        assert wait_until(lambda: http.get(f"/v1/videos/{video_id}").json().get("status") == "completed", 20)
        assert wait_until(lambda: http.get(f"/v1/videos/{video_id}").status_code == 404, 10)


def test_draining_answers_503_and_lets_running_jobs_be_fetched(pipeline, tmp_path):
    with running_server(pipeline, tmp_path, http_listen="127.0.0.1:0") as served, raw(served, None) as http:
        running = http.post("/v1/videos", json=LONG_BODY).json()["id"]
        assert wait_until(lambda: http.get(f"/v1/videos/{running}").json()["status"] == "in_progress", 30)
        drain = threading.Thread(target=served.server.drain, kwargs={"grace_seconds": 60})
        drain.start()
        assert wait_until(lambda: served.server._draining.is_set(), 5)
        refused = http.post("/v1/videos", json=TINY_BODY)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
        assert refused.headers["retry-after"] == "1"
        # The running job finishes, and its client can still watch and fetch it before the server exits.
        assert wait_until(lambda: http.get(f"/v1/videos/{running}").json().get("status") == "completed", 60)
        assert http.get(f"/v1/videos/{running}/content").status_code == 200
        drain.join(30)
        assert not drain.is_alive()
    assert [r["status"] for r in audit_for(served, running) if r["method"] == "Generate"] == ["OK"]


# --- transport security ---------------------------------------------------------------------------------------

def test_tls_mtls_and_tokens_as_on_grpc(pipeline, certs, tmp_path):
    with running_server(pipeline, tmp_path, http_listen="127.0.0.1:0", tls_cert=certs.server_cert,
                        tls_key=certs.server_key, client_ca=certs.ca) as served:
        url = base_url(served, "https")
        trusted = ssl.create_default_context(cafile=str(certs.ca))
        with pytest.raises(httpx.TransportError):  # plaintext to a TLS listener
            httpx.get(base_url(served) + "/v1/videos", timeout=5)
        with pytest.raises(httpx.TransportError):  # no client certificate: no handshake
            httpx.get(url + "/v1/videos", verify=trusted, timeout=5)
        rogue = ssl.create_default_context(cafile=str(certs.ca))
        rogue.load_cert_chain(certs.rogue_client_cert, certs.rogue_client_key)
        with pytest.raises(httpx.TransportError):  # a certificate the client CA did not sign
            httpx.get(url + "/v1/videos", verify=rogue, timeout=5)
        mutual = ssl.create_default_context(cafile=str(certs.ca))
        mutual.load_cert_chain(certs.client_cert, certs.client_key)
        with httpx.Client(base_url=url, verify=mutual, timeout=30) as http:
            video_id = http.post("/v1/videos", json=TINY_BODY).json()["id"]
            assert wait_until(lambda: http.get(f"/v1/videos/{video_id}").json()["status"] == "completed", 30)
        with Client(served.address, ca=certs.ca, cert=certs.client_cert, key=certs.client_key) as grpc_client:
            grpc_client.generate(TINY)
        http_record = [r for r in audit_for(served, video_id) if r["method"] == "Generate"][0]
        grpc_record = served.audit()[-1]
        # One principal, whichever API it calls through.
        assert http_record["principal"] == grpc_record["principal"] == grpc_record["certificate_subject"]
        assert http_record["principal_kind"] == "certificate"


def test_config_applies_grpc_transport_rules_to_http(tmp_path):
    base = {"model": None, "insecure": True, "audit_log": tmp_path / "a.jsonl"}
    with pytest.raises(ConfigError) as info:
        ServerConfig(**base, http_listen="0.0.0.0:8080").validated(model_required=False)
    assert info.value.field == "insecure"
    with pytest.raises(ConfigError) as info:
        ServerConfig(**base, listen="127.0.0.1:9000", http_listen="127.0.0.1:9000").validated(model_required=False)
    assert info.value.field == "http_listen"
    with pytest.raises(ConfigError) as info:
        ServerConfig(**base, http_listen="127.0.0.1:0", http_keep_seconds=math.nan).validated(model_required=False)
    assert info.value.field == "http_keep_seconds"


@pytest.mark.parametrize(("seconds", "fps", "frames"), [(4, 16, 65), (1, 16, 17), (0.01, 16, 1), (5, 24, 121)])
def test_seconds_map_to_the_nearest_valid_frame_count(seconds, fps, frames):
    assert frames_for_seconds(seconds, fps, Limits().frame_multiple) == frames
    assert (frames - 1) % Limits().frame_multiple == 0



def test_memory_admission_refusal_is_400_not_429(pipeline, tmp_path):
    """A request over the memory budget will not fit however long the client waits: 400, not a retryable 429."""
    with running_server(pipeline, tmp_path, http_listen="127.0.0.1:0", memory_budget=1 << 20) as served, \
            raw(served, None) as http:
        refused = http.post("/v1/videos", json=TINY_BODY)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "resource_exhausted"
        record = served.audit()[-1]
        assert record["status"] == "RESOURCE_EXHAUSTED" and record["memory"]["budget_bytes"] == 1 << 20
