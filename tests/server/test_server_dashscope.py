"""DashScope's video-synthesis API, driven by Alibaba Cloud's own `dashscope` SDK (base URL pointed at a real local
server) and by the raw HTTP a blog's sample client sends, on the same listener as OpenAI's /v1/videos, with the
same tokens, queue, audit log and memory admission."""

from __future__ import annotations

import hashlib
import json
import shutil

import dashscope
import pytest
import requests
from dashscope import VideoSynthesis
from server_testkit import TINY, make_certs, read_audit, running_server, serve_process, wait_until

from wanrt.engine.video import read_mp4_metadata
from wanrt.server.auth import hash_token
from wanrt.server.errors import RemoteError

ALICE, BOB = "alice-token-0123456789abcdef", "bob-token-0123456789abcdef"
SERVER_BACKENDS = ("onnxruntime",)  # the subject is the API over the shared front door: one backend shows it
# The cheapest real job (TINY: 1 frame, 16x16, 1 step, no guidance) as DashScope parameters.
TINY_PARAMETERS = {"size": "16*16", "duration": 0.05, "steps": 1, "guidance_scale": 1.0}
LONG_PARAMETERS = {"size": "64*64", "duration": 0.5, "steps": 100, "guidance_scale": 4.0}  # seconds of work
SYNTHESIS = "/api/v1/services/aigc/video-generation/video-synthesis"


@pytest.fixture(scope="module")
def served(pipeline, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashscope")
    tokens = tmp / "tokens.jsonl"
    tokens.write_text("".join(json.dumps({"id": name, "sha256": hash_token(token)}) + "\n"
                              for name, token in (("alice", ALICE), ("bob", BOB))))
    with running_server(pipeline, tmp, tokens=tokens, http_listen="127.0.0.1:0", queue_size=1) as running:
        running.base = f"http://127.0.0.1:{running.server.http.port}"
        running.model = running.server.door.model_name
        yield running


@pytest.fixture(autouse=True)
def _sdk_base_url(request):
    """The SDK's base URL is a module global: each test that uses the shared server points it there."""
    if "served" in request.fixturenames:
        served = request.getfixturevalue("served")
        dashscope.base_http_api_url = served.base + "/api/v1"


def _sdk_create(served, key=ALICE, **parameters):
    return VideoSynthesis.async_call(model=served.model, prompt=TINY.prompt, api_key=key,
                                     **{**TINY_PARAMETERS, **parameters})


def test_sdk_creates_waits_fetches_and_downloads(served):
    created = _sdk_create(served, seed=-1, negative_prompt="murky")
    assert created.status_code == 200, created
    assert created.output.task_status == "PENDING" and created.output.task_id
    done = VideoSynthesis.wait(created, api_key=ALICE)
    assert done.status_code == 200 and done.output.task_status == "SUCCEEDED", done
    fetched = VideoSynthesis.fetch(created.output.task_id, api_key=ALICE)
    assert fetched.output.task_status == "SUCCEEDED" and fetched.output.video_url == done.output.video_url
    assert done.output.orig_prompt == done.output.actual_prompt == TINY.prompt  # no prompt rewriting
    assert done.usage.video_count == 1 and done.usage.video_ratio == "16*16"
    seed = done.output.seed
    assert isinstance(seed, int) and 0 <= seed < 2**63  # -1 asked the server to choose; it says which

    url = done.output.video_url
    video = requests.get(url, headers={"Authorization": f"Bearer {ALICE}"}, timeout=30)
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    settings = read_mp4_metadata(video.content)  # the MP4 carries what made it, as the task reported it
    assert settings == done.output.settings and settings["seed"] == seed and settings["size"] == "16x16"
    assert settings["prompt_sha256"] == hashlib.sha256(TINY.prompt.encode()).hexdigest()

    (record,) = [r for r in served.audit() if r["request_id"] == created.output.task_id and r["method"] == "Generate"]
    assert record["api"] == "dashscope" and record["principal"] == "alice" and record["status"] == "OK"
    assert record["output"]["sha256"] == hashlib.sha256(video.content).hexdigest()
    assert record["params"]["seed"] == seed and record["params"]["seed_chosen_by_server"] is True
    download = served.audit()[-1]
    assert download["method"] == "DownloadVideo" and download["video_id"] == created.output.task_id


def test_video_url_is_bound_to_its_caller_and_signed(served):
    done = VideoSynthesis.call(model=served.model, prompt=TINY.prompt, api_key=ALICE, **TINY_PARAMETERS)
    url = done.output.video_url
    assert requests.get(url, headers={"Authorization": f"Bearer {ALICE}"}, timeout=30).status_code == 200
    stolen = requests.get(url, headers={"Authorization": f"Bearer {BOB}"}, timeout=30)
    assert stolen.status_code == 404 and stolen.json()["code"] == "NotFound"  # another principal: nothing there
    assert requests.get(url, timeout=30).status_code == 401  # no credentials
    forged = url.replace("expires=", "expires=9").replace("signature=", "signature=0")
    assert requests.get(forged, headers={"Authorization": f"Bearer {ALICE}"}, timeout=30).status_code == 404
    # Another principal does not learn that the task exists.
    assert VideoSynthesis.fetch(done.output.task_id, api_key=BOB).output.task_status == "UNKNOWN"


def test_sdk_cancel(served):
    created = _sdk_create(served, **LONG_PARAMETERS)
    task = created.output.task_id
    assert wait_until(lambda: VideoSynthesis.fetch(task, api_key=ALICE).output.task_status == "RUNNING", 30)
    cancelled = VideoSynthesis.cancel(task, api_key=ALICE)
    assert cancelled.status_code == 200, cancelled
    assert wait_until(lambda: VideoSynthesis.fetch(task, api_key=ALICE).output.task_status == "CANCELED", 20)
    assert wait_until(lambda: served.metric("wanrt_busy_workers") == 0, 10)  # the worker was freed
    again = VideoSynthesis.cancel(task, api_key=ALICE)
    assert again.status_code == 400 and again.code == "UnsupportedOperation"
    (record,) = [r for r in served.audit() if r["request_id"] == task and r["method"] == "Generate"]
    assert record["status"] == "CANCELLED"


@pytest.mark.parametrize(("parameters", "field", "words"), [
    ({"temperature": 0.7}, "parameters.temperature", "diffusion model"),
    ({"top_k": 5}, "parameters.top_k", "diffusion model"),
    ({"prompt_extend": True}, "parameters.prompt_extend", "never rewrites"),
    ({"watermark": True}, "parameters.watermark", "C2PA"),
    ({"frame_rate": 240}, "parameters.frame_rate", "trained at 16"),
    ({"duration": 60}, "parameters.duration", "at most"),
    ({"size": "17*16"}, "parameters.size", "multiple of 16"),
    ({"size": "big"}, "parameters.size", "WIDTH*HEIGHT"),
    ({"resolution": "4K"}, "parameters.resolution", "480P"),
    ({"guidance_scale": 1e308}, "parameters.guidance_scale", "between"),
    ({"seed": -5}, "parameters.seed", "between"),
    ({"style": "noir"}, "parameters.style", "not a parameter"),
])
def test_sdk_errors_name_the_field(served, parameters, field, words):
    refused = _sdk_create(served, **parameters)
    assert refused.status_code == 400 and refused.code == "InvalidParameter", refused
    assert refused.message.startswith(f"{field}: ") and words in refused.message, refused.message
    assert served.audit()[-1]["status"] == "INVALID_ARGUMENT"


def test_sdk_auth_model_and_sync_errors(served):
    assert _sdk_create(served, key="wrong").status_code == 401
    assert _sdk_create(served, key="wrong").code == "InvalidApiKey"
    other = VideoSynthesis.async_call(model="wan2.2-t2v-plus", prompt="a", api_key=ALICE, **TINY_PARAMETERS)
    assert other.status_code == 400 and other.message.startswith("model: ")
    empty = VideoSynthesis.async_call(model=served.model, prompt=" ", api_key=ALICE, **TINY_PARAMETERS)
    assert empty.message.startswith("input.prompt: ")
    with requests.post(served.base + SYNTHESIS, headers={"Authorization": f"Bearer {ALICE}",
                                                        "X-DashScope-Async": "maybe"},
                       json={"model": served.model, "input": {"prompt": "a"}}, timeout=30) as bad_mode:
        assert bad_mode.status_code == 400 and bad_mode.json()["message"].startswith("X-DashScope-Async: ")
    statuses = {r["status"] for r in served.audit()}
    assert "INTERNAL" not in statuses


def test_queue_full_is_throttling(served):
    running = _sdk_create(served, **LONG_PARAMETERS).output.task_id
    queued = _sdk_create(served, **LONG_PARAMETERS).output.task_id  # queue_size=1
    refused = _sdk_create(served, **LONG_PARAMETERS)
    assert refused.status_code == 429 and refused.code == "Throttling"
    for task in (queued, running):
        VideoSynthesis.cancel(task, api_key=ALICE)
    assert wait_until(lambda: served.server.jobs.live_jobs == 0, 20)


def test_memory_admission_applies_to_dashscope(pipeline, tmp_path):
    """A request over the memory budget is refused before it is queued, in DashScope's shape (it will never fit:
    InvalidParameter, not Throttling), and audited as on every API."""
    with running_server(pipeline, tmp_path, http_listen="127.0.0.1:0", memory_budget=1 << 20) as running:
        dashscope.base_http_api_url = f"http://127.0.0.1:{running.server.http.port}/api/v1"
        refused = VideoSynthesis.async_call(model=running.server.door.model_name, prompt=TINY.prompt, api_key="-",
                                            **TINY_PARAMETERS)
        assert refused.status_code == 400 and refused.code == "InvalidParameter", refused
        assert "memory budget" in refused.message
        record = running.audit()[-1]
        assert record["status"] == "RESOURCE_EXHAUSTED" and record["api"] == "dashscope"
        assert record["memory"]["budget_bytes"] == 1 << 20


# --- the blog's sample client ------------------------------------------------------------------------------------

def article_client(url: str, api_key: str, model: str, parameters: dict) -> tuple[int, dict, bytes | None]:
    """The sample client of the article that sold Wan2.2-T2V-A14B "through an API": one JSON POST with model,
    input and parameters, the video URL read from the answer. Only the URL and the model name differ from it."""
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    data = {"model": model, "input": {"prompt": "a school of glowing jellyfish drifts past a hydrothermal vent, "
                                                "bubbles rising"}, "parameters": parameters}
    response = requests.post(url, headers=headers, data=json.dumps(data), timeout=600)
    result = response.json()
    if response.status_code != 200:
        return response.status_code, result, None
    video_url = result["output"]["video_url"]
    return response.status_code, result, requests.get(video_url, headers=headers, timeout=60).content


ARTICLE_PARAMETERS = {"resolution": "1280x720", "duration": 10, "frame_rate": 24, "guidance_scale": 7.5}


def test_article_body_is_answered_with_what_fits(served):
    """The article's body as it is: 10 s at 24 fps is 241 frames, beyond every Wan model's frame limit in wanrt
    (129; the test server's is 9): refused in DashScope's shape, naming the field and what fits."""
    status, result, _ = article_client(served.base + SYNTHESIS, ALICE, served.model, ARTICLE_PARAMETERS)
    assert status == 400 and result["code"] == "InvalidParameter"
    assert result["message"].startswith("parameters.duration: gives 241 frames at 24 fps"), result
    assert "at most 0.333 s at 24 fps" in result["message"]


def test_article_client_gets_a_video_where_the_shape_fits(served):
    """The same client, synchronous (no X-DashScope-Async: the call waits for the video), with the article's
    parameters at a shape this CPU test server makes."""
    fitting = {"resolution": "32x16", "duration": 0.2, "frame_rate": 24, "guidance_scale": 7.5, "steps": 2}
    status, result, video = article_client(served.base + SYNTHESIS, ALICE, served.model, fitting)
    assert status == 200 and result["output"]["task_status"] == "SUCCEEDED", result
    assert video[4:8] == b"ftyp"
    settings = read_mp4_metadata(video)
    assert (settings["width"], settings["height"], settings["fps"], settings["frames"]) == (32, 16, 24, 5)
    assert settings["guidance"] == 7.5 and result["output"]["settings"] == settings


def test_wanrt_serve_speaks_dashscope_beside_openai(tiny_artifact_dir, tmp_path):
    """The command line: `wanrt serve --http-listen` serves the SDK; the same listener serves /v1/models."""
    with serve_process(tiny_artifact_dir, tmp_path, "--backend", "onnxruntime", "--http-listen",
                       "127.0.0.1:0") as process:
        base = f"http://127.0.0.1:{process.ready['http_port']}"
        (model,) = requests.get(base + "/v1/models", timeout=30).json()["data"]
        assert model["object"] == "model" and model["limits"]["max_frames"] == 9
        dashscope.base_http_api_url = base + "/api/v1"
        done = VideoSynthesis.call(model=model["id"], prompt="a turtle", api_key="-", **TINY_PARAMETERS)
        assert done.output.task_status == "SUCCEEDED", done
        data = requests.get(done.output.video_url, timeout=30).content
        process.terminate()
        assert process.process.wait(30) == 0
    (record,) = [r for r in read_audit(process.audit_log) if r["request_id"] == done.output.task_id]
    assert record["output"]["sha256"] == hashlib.sha256(data).hexdigest() and record["api"] == "dashscope"


def test_reload_and_stop_admission_reach_every_api(pipeline, tmp_path):
    """SIGHUP's new certificate and rotated token, and preStop's stop of admission, act at the one front door and
    listener: DashScope, OpenAI-HTTP and gRPC see the same swap and the same refusal, each in its own shape, while
    a task admitted before both runs on and is fetched by the same token id's new token."""
    first, second = make_certs(tmp_path / "ca1"), make_certs(tmp_path / "ca2")
    live = tmp_path / "live"
    live.mkdir()
    cert, key, tokens = live / "tls.crt", live / "tls.key", tmp_path / "tokens.jsonl"
    shutil.copy(first.server_cert, cert)
    shutil.copy(first.server_key, key)
    old, new = "old-token-0123456789abcdef", "new-token-0123456789abcdef"
    tokens.write_text(json.dumps({"id": "batch", "sha256": hash_token(old)}) + "\n")
    with running_server(pipeline, tmp_path, tls_cert=cert, tls_key=key, tokens=tokens,
                        http_listen="127.0.0.1:0") as served:
        base = f"https://127.0.0.1:{served.server.http.port}"

        def http(method: str, path: str, token: str, ca, **kwargs) -> requests.Response:
            return requests.request(method, base + path, headers={"Authorization": f"Bearer {token}",
                                                                  "X-DashScope-Async": "enable"},
                                    verify=str(ca), timeout=30, **kwargs)

        def create(token: str, ca, parameters: dict) -> requests.Response:
            body = {"model": served.server.door.model_name, "input": {"prompt": TINY.prompt},
                    "parameters": parameters}
            return http("POST", SYNTHESIS, token, ca, json=body)

        def status(token: str) -> str:
            return http("GET", f"/api/v1/tasks/{task}", token, second.ca).json()["output"]["task_status"]

        task = create(old, first.ca, LONG_PARAMETERS).json()["output"]["task_id"]
        assert wait_until(lambda: http("GET", f"/api/v1/tasks/{task}", old, first.ca).json()["output"]
                          ["task_status"] == "RUNNING", 30)

        # Rotation without overlap and a certificate from another CA, then the reload.
        tokens.write_text(json.dumps({"id": "batch", "sha256": hash_token(new)}) + "\n")
        shutil.copy(second.server_cert, cert)
        shutil.copy(second.server_key, key)
        assert served.server.reload() == {"tls": "changed", "tokens": 1, "errors": []}
        with pytest.raises(requests.exceptions.SSLError):  # the old CA no longer verifies the listener
            http("GET", f"/api/v1/tasks/{task}", new, first.ca)
        refused = http("GET", f"/api/v1/tasks/{task}", old, second.ca)
        assert refused.status_code == 401 and refused.json()["code"] == "InvalidApiKey"
        refused = http("GET", "/v1/models", old, second.ca)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthenticated"
        with served.client(ca=second.ca, token=old) as client, pytest.raises(RemoteError) as grpc_refused:
            client.describe()
        assert grpc_refused.value.code == "UNAUTHENTICATED"
        assert status(new) == "RUNNING"  # the principal is the token id: the new token sees the task

        served.server.stop_admitting()
        refused = create(new, second.ca, TINY_PARAMETERS)
        assert refused.status_code == 503 and refused.json()["code"] == "ServiceUnavailable"
        openai_body = {"prompt": TINY.prompt, "size": "16x16", "frames": 1, "steps": 1, "guidance": 1.0}
        refused = http("POST", "/v1/videos", new, second.ca, json=openai_body)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
        with served.client(ca=second.ca, token=new) as client, pytest.raises(RemoteError) as grpc_refused:
            client.generate(TINY)
        assert grpc_refused.value.code == "UNAVAILABLE"

        assert wait_until(lambda: status(new) == "SUCCEEDED", 120)
        url = http("GET", f"/api/v1/tasks/{task}", new, second.ca).json()["output"]["video_url"]
        video = requests.get(url, headers={"Authorization": f"Bearer {new}"}, verify=str(second.ca), timeout=30)
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    records = [r for r in served.audit() if r["method"] == "Generate"]
    assert [r["status"] for r in records if r["request_id"] == task] == ["OK"]
    assert [r["api"] for r in records if r["status"] == "UNAVAILABLE"] == ["dashscope", "openai", "grpc"]
