"""Queue limit, cancellation, deadlines and draining, on a real server running the tiny model."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from server_testkit import LONG, MEDIUM, TINY, health_status, running_server, wait_until

from wanrt.server.convert import request_to_proto
from wanrt.server.v1 import wanrt_pb2 as pb
from wanrt.server.v1 import wanrt_pb2_grpc as pb_grpc


def start(channel: grpc.Channel, request=LONG, **kwargs):
    """Starts a Generate call and returns (call, Accepted)."""
    call = pb_grpc.VideoGenerationStub(channel).Generate(request_to_proto(request), **kwargs)
    first = next(call)
    assert first.WhichOneof("event") == "accepted"
    return call, first.accepted


def wait_for_progress(call, stage: int = pb.STAGE_DENOISE) -> pb.Progress:
    for response in call:
        if response.WhichOneof("event") == "progress" and response.progress.stage == stage:
            return response.progress
    raise AssertionError("the call ended before the stage began")


def finish(call) -> grpc.StatusCode:
    try:
        for _ in call:
            pass
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def audit_for(served, job_id: str) -> dict:
    assert wait_until(lambda: any(r["request_id"] == job_id for r in served.audit()), 5)
    return next(r for r in served.audit() if r["request_id"] == job_id)


@pytest.fixture
def served(pipeline, tmp_path):
    with running_server(pipeline, tmp_path, queue_size=1) as running:
        yield running


def test_queue_limit_refuses_at_once_and_cancel_frees_everything(served):
    with grpc.insecure_channel(served.address) as channel:
        running, accepted_a = start(channel)
        wait_for_progress(running)
        queued, accepted_b = start(channel)
        assert accepted_b.queue_position == 0  # next in line; the running job is not counted
        assert served.server.jobs.live_jobs == 2

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            start(channel)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - started < 1.0, "over the limit must be refused at once, not queued"

        queued.cancel()  # a queued job leaves the queue at once
        assert wait_until(lambda: served.server.jobs.live_jobs == 1, 2)
        running.cancel()
        assert wait_until(lambda: served.server.jobs.live_jobs == 0, 2)
    assert served.metric("wanrt_live_jobs") == 0 and served.metric("wanrt_queue_depth") == 0
    assert audit_for(served, accepted_a.job_id)["status"] == "CANCELLED"
    assert audit_for(served, accepted_b.job_id)["status"] == "CANCELLED"
    assert "RESOURCE_EXHAUSTED" in {r["status"] for r in served.audit()}
    with served.client() as client:  # the worker is free again
        assert client.generate(TINY).frames == 1


def test_client_cancel_stops_the_job_at_the_next_step(served):
    steps_before = served.metric("wanrt_step_seconds_count", stage="denoise")
    with grpc.insecure_channel(served.address) as channel:
        call, accepted = start(channel)
        wait_for_progress(call)
        cancelled_at = time.monotonic()
        call.cancel()
        assert finish(call) == grpc.StatusCode.CANCELLED
        assert wait_until(lambda: served.server.jobs.live_jobs == 0, 2)
        stopped_after = time.monotonic() - cancelled_at
    steps_run = served.metric("wanrt_step_seconds_count", stage="denoise") - steps_before
    assert steps_run < LONG.steps / 2, f"{steps_run} of {LONG.steps} steps ran after the cancel"
    assert stopped_after < 1.5
    record = audit_for(served, accepted.job_id)
    assert record["status"] == "CANCELLED" and "output" not in record


def test_deadline_stops_the_job(served):
    full = LONG.steps + 3  # denoising steps and latent frames decoded, were it to run to the end
    with grpc.insecure_channel(served.address) as channel:
        # The deadline is a quarter of what the whole job takes on this backend and machine (the onnxruntime
        # backend runs LONG in a fraction of the torch backend's time).
        began = time.monotonic()
        assert finish(start(channel)[0]) == grpc.StatusCode.OK
        deadline = max(0.05, (time.monotonic() - began) / 4)
        steps_before = served.metric("wanrt_step_seconds_count")
        call, accepted = start(channel, timeout=deadline)
        assert finish(call) == grpc.StatusCode.DEADLINE_EXCEEDED
        expired = time.monotonic()
    assert wait_until(lambda: served.server.jobs.live_jobs == 0, 2)
    assert time.monotonic() - expired < 1.0
    assert served.metric("wanrt_step_seconds_count") - steps_before < full
    record = audit_for(served, accepted.job_id)
    assert record["status"] == "DEADLINE_EXCEEDED" and "output" not in record


def test_deadline_while_queued_removes_the_job(served):
    with grpc.insecure_channel(served.address) as channel:
        running, _ = start(channel)
        wait_for_progress(running)
        queued, accepted = start(channel, timeout=0.3)
        assert finish(queued) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert wait_until(lambda: served.server.jobs.live_jobs == 1, 2)
        running.cancel()
    assert wait_until(lambda: served.server.jobs.live_jobs == 0, 2)
    assert audit_for(served, accepted.job_id)["status"] == "DEADLINE_EXCEEDED"


def test_drain_refuses_new_calls_and_lets_jobs_finish(pipeline, tmp_path):
    with running_server(pipeline, tmp_path, queue_size=2) as served, \
            grpc.insecure_channel(served.address) as channel:
        running, _ = start(channel, LONG)
        wait_for_progress(running)  # ~100 steps still to go: the drain below begins while both jobs are live
        queued, _ = start(channel, MEDIUM)
        assert served.server.jobs.live_jobs == 2
        drained = []
        drainer = threading.Thread(target=lambda: drained.append(served.server.drain(30.0)))
        drainer.start()
        assert wait_until(lambda: health_status(served.address) == "NOT_SERVING", 1.0)
        assert health_status(served.address, "wanrt.v1.VideoGeneration") == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as refused:
            start(channel, TINY)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # Both in-flight jobs (running and queued) complete with their results.
        assert finish(running) == grpc.StatusCode.OK
        assert finish(queued) == grpc.StatusCode.OK
        drainer.join(30)
        assert drained == [True]
        assert served.server.jobs.live_jobs == 0
    assert [r["status"] for r in served.audit() if r["method"] == "Generate"].count("OK") == 2


def test_drain_cancels_jobs_that_outlive_the_grace(pipeline, tmp_path):
    with running_server(pipeline, tmp_path) as served, grpc.insecure_channel(served.address) as channel:
        call, accepted = start(channel)
        wait_for_progress(call)
        started = time.monotonic()
        assert served.server.drain(0.1) is False
        assert time.monotonic() - started < 5
        assert finish(call) == grpc.StatusCode.UNAVAILABLE
        assert served.server.jobs.live_jobs == 0
    assert audit_for(served, accepted.job_id)["status"] == "UNAVAILABLE"
