"""A real server on 127.0.0.1 with the tiny Wan2.2 model: a clip arrives, decodes, and every digest agrees."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

import grpc
import numpy as np
import pytest
from server_testkit import TINY, running_server

from wanrt.engine.request import clip_settings
from wanrt.engine.video import encode_mp4, read_mp4_frames, read_mp4_metadata
from wanrt.server.errors import RemoteError
from wanrt.server.v1 import wanrt_pb2 as pb


@pytest.fixture(scope="module")
def served(pipeline, tmp_path_factory):
    with running_server(pipeline, tmp_path_factory.mktemp("generate")) as running:
        yield running


def test_clip_arrives_decodes_and_digests_agree(served, pipeline):
    request = dataclasses.replace(TINY, frames=5, height=32, width=48, steps=2, guidance=3.0, seed=7)
    progress = []
    with served.client() as client:
        result = client.generate(request, on_progress=progress.append, client_request_id="case-42")

    frames = read_mp4_frames(result.video)  # PyAV
    assert frames.shape == (5, 32, 48, 3)
    assert frames.std() > 1.0, "a real clip, not a blank one"
    digest = hashlib.sha256(result.video).hexdigest()
    assert digest == result.sha256
    record = [r for r in served.audit() if r["request_id"] == result.job_id]
    assert len(record) == 1 and record[0]["status"] == "OK"
    assert record[0]["output"]["sha256"] == digest == result.sha256
    assert record[0]["client_request_id"] == "case-42" == result.client_request_id
    assert record[0]["identity"] == pipeline.identity == result.identity
    key = served.server.door.prompt_key
    assert record[0]["params"]["prompt_hmac"] == hmac.new(key, request.prompt.encode(), "sha256").hexdigest()
    assert hashlib.sha256(request.prompt.encode()).hexdigest() not in served.audit_log.read_text()  # not guessable
    assert request.prompt not in served.audit_log.read_text()  # prompts are hashed by default
    assert (result.frames, result.height, result.width, result.fps, result.seed) == (5, 32, 48, 16, 7)
    assert set(result.timings) >= {"queued_s", "text_s", "denoise_s", "decode_s", "total_s"}
    # Progress: text, then every denoising step, then every latent frame decoded, in order.
    stages = [(p.stage, p.step) for p in progress]
    assert stages[:2] == [("text", 0), ("text", 1)]
    assert [s for s in stages if s[0] == "denoise"] == [("denoise", 1), ("denoise", 2)]
    assert [s for s in stages if s[0] == "decode"] == [("decode", 1), ("decode", 2)]

    # The same request in-process gives the very same bytes: the server adds transport, nothing else.
    # The MP4 carries what made it: the request as sent, with what the server filled from the model's defaults.
    settings = read_mp4_metadata(result.video)
    sent = clip_settings(request, pipeline.identity, pipeline.warnings(request))
    assert {k: v for k, v in settings.items() if k not in ("schedule", "shift")} == \
        {k: v for k, v in sent.items() if k not in ("schedule", "shift")}
    assert settings["schedule"] == (result.schedule or None)  # the schedule the server filled in, if any
    local = b"".join(encode_mp4(pipeline.generate(request), request.fps, metadata=settings))
    assert hashlib.sha256(local).hexdigest() == result.sha256
    assert result.prompt_sha256 == hashlib.sha256(request.prompt.encode()).hexdigest()
    assert result.guidance == request.guidance and result.guidance_2 == request.effective_guidance_2
    assert result.model == pipeline.identity["model"].rsplit("/", 1)[-1] and not result.seed_chosen_by_server
    drawn = client_generate_random_seed(served, request)
    assert drawn.seed_chosen_by_server and drawn.seed == read_mp4_metadata(drawn.video)["seed"] >= 0


def test_raw_frames_equal_in_process_generation(served, pipeline):
    request = dataclasses.replace(TINY, frames=5, height=32, width=32, steps=2, seed=3)
    with served.client() as client:
        result = client.generate(request, video_format="raw_rgb24")
    frames = np.frombuffer(result.video, np.uint8).reshape(result.frames, 32, 32, 3)
    local = np.concatenate(list(pipeline.generate(request)))
    np.testing.assert_array_equal(frames, local)
    assert served.audit()[-1]["output"]["sha256"] == hashlib.sha256(result.video).hexdigest()


def test_video_streams_in_chunks_as_decoded(served):
    """Video bytes arrive interleaved with decode progress, not all at the end."""
    request = dataclasses.replace(TINY, frames=9, height=16, width=16)
    kinds = []
    with served.client() as client:
        for response in client.stream(request):
            kind = response.WhichOneof("event")
            if kind == "progress":
                kind = f"progress:{pb.Stage.Name(response.progress.stage)}"
            kinds.append(kind)
    assert kinds[0] == "accepted" and kinds[-1] == "result"
    first_video = kinds.index("video")
    last_decode = max(i for i, k in enumerate(kinds) if k == "progress:STAGE_DECODE")
    assert first_video < last_decode, kinds
    assert sum(k == "video" for k in kinds) >= 3


def test_describe_model_reports_limits_and_identity(served, pipeline):
    with served.client() as client:
        info = client.describe()
    assert dict(info.identity) == pipeline.identity
    assert (info.limits.max_frames, info.limits.max_height, info.limits.max_steps) == (9, 64, 100)
    assert info.limits.frame_multiple == 4 and info.limits.size_multiple == 16
    assert list(info.experts) == ["transformer", "transformer_2"]
    assert info.workers == 1 and info.latent_channels == 16
    assert info.limits.max_request_bytes >= 1 << 20
    assert served.audit()[-1]["method"] == "DescribeModel"


def test_health_and_reflection(served):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with served.client() as client:
        assert client.health() == "SERVING"
        assert client.health("wanrt.v1.VideoGeneration") == "SERVING"
    with grpc.insecure_channel(served.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                   timeout=5))
        names = {s.name for s in responses[0].list_services_response.service}
        assert {"wanrt.v1.VideoGeneration", "grpc.health.v1.Health"} <= names
        files = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="wanrt.v1.VideoGeneration")]), timeout=5))
        assert files[0].file_descriptor_response.file_descriptor_proto


def test_metrics_count_requests_and_steps(served):
    before = served.metric("wanrt_requests_total", method="Generate", code="OK")
    steps_before = served.metric("wanrt_step_seconds_count", stage="denoise")
    with served.client() as client:
        client.generate(dataclasses.replace(TINY, steps=3))
    assert served.metric("wanrt_requests_total", method="Generate", code="OK") == before + 1
    assert served.metric("wanrt_step_seconds_count", stage="denoise") == steps_before + 3
    assert served.metric("wanrt_request_seconds_count", code="OK") >= 1
    assert served.metric("wanrt_live_jobs") == 0 and served.metric("wanrt_queue_depth") == 0


def test_without_an_audit_trail_the_server_fails_closed(pipeline, tmp_path):
    """An audit write that fails ends the call as INTERNAL (no result delivered) and health goes NOT_SERVING."""
    with running_server(pipeline, tmp_path) as served, served.client() as client:
        served.server.audit._file.close()  # the log's file descriptor is gone (e.g. the volume went away)
        with pytest.raises(RemoteError) as failed:
            client.generate(TINY)
        assert failed.value.code == "INTERNAL" and "audit" in failed.value.details
        assert client.health() == "NOT_SERVING"
        assert served.metric("wanrt_live_jobs") == 0


def test_onnxruntime_backend_serves_the_exported_artifact(tiny_artifact_dir, tmp_path):
    """The serving default: an exported artifact run by onnxruntime, same bytes as in-process."""
    from wanrt.engine.loader import load_pipeline

    ort_pipeline = load_pipeline(tiny_artifact_dir, "onnxruntime")
    request = dataclasses.replace(TINY, frames=5, height=32, width=32, steps=2, seed=5)
    with running_server(ort_pipeline, tmp_path) as running, running.client() as client:
        result = client.generate(request)
    assert read_mp4_frames(result.video).shape == (5, 32, 32, 3)
    assert result.identity["backend"] == "onnxruntime"
    assert result.identity["manifest_sha256"] == ort_pipeline.identity["manifest_sha256"]
    local = b"".join(encode_mp4(ort_pipeline.generate(request), request.fps,
                               metadata=read_mp4_metadata(result.video)))  # what the server filled in included
    assert hashlib.sha256(local).hexdigest() == result.sha256 == hashlib.sha256(result.video).hexdigest()


def client_generate_random_seed(served, request):
    """The same request with seed -1: the server draws one and reports it."""
    with served.client() as client:
        return client.generate(dataclasses.replace(request, seed=-1))


def test_prompt_words_the_model_lacks_come_back_as_warnings(served, pipeline):
    import secrets

    word = "zq" + secrets.token_hex(4)  # no vocabulary has it
    print("unknown word", word)
    request = dataclasses.replace(TINY, prompt=f"{TINY.prompt} {word}", seed=3)
    with served.client() as client:
        result = client.generate(request)
    assert pipeline.tokenizer.unknown_words(request.prompt) == [word]
    assert result.warnings == tuple(pipeline.warnings(request))  # the same words as `wanrt generate` says
    assert [w for w in result.warnings if repr(word) in w and "vocabulary lacks" in w], result.warnings
    assert read_mp4_metadata(result.video)["warnings"] == list(result.warnings)  # the clip says so too
    with served.client() as client:
        known = client.generate(dataclasses.replace(TINY, seed=3))
    assert not [w for w in known.warnings if "vocabulary" in w], known.warnings  # a known prompt: no word named
