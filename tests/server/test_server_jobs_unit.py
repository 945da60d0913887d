"""Unit tests of the job queue alone. ``StepClockStandIn`` is a test double that only counts steps (no model,
no frames worth the name): these tests claim nothing about generation, only about queueing and cancellation.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from wanrt.engine.pipeline import Progress
from wanrt.engine.request import GenerationRequest
from wanrt.errors import CancelledError
from wanrt.server.errors import DrainingError, QueueFullError
from wanrt.server.jobs import DataEvent, DoneEvent, FailedEvent, JobManager, ProgressEvent


class StepClockStandIn:
    """Runs ``request.steps`` steps of ``step_s`` seconds each, honouring should_stop like VideoPipeline."""

    def __init__(self, step_s: float = 0.01, fail_on: str | None = None) -> None:
        self.step_s = step_s
        self.fail_on = fail_on
        self.steps_run = 0

    def generate(self, request, *, on_progress=None, should_stop=None):
        if request.prompt == self.fail_on:
            raise RuntimeError("simulated backend fault")
        for step in range(1, request.steps + 1):
            time.sleep(self.step_s)
            self.steps_run += 1
            if should_stop and should_stop():
                raise CancelledError(f"cancelled at {step}")
            if on_progress:
                on_progress(Progress("denoise", step, request.steps, step * self.step_s))
        yield np.zeros((1, 2, 2, 3), np.uint8)


def raw_bytes(chunks, fps, metadata=None):  # stands in for the MP4 encoder: the queue does not care about the container
    for chunk in chunks:
        yield chunk.tobytes()


def request(steps: int = 3, prompt: str = "p") -> GenerationRequest:
    return GenerationRequest(prompt=prompt, steps=steps)


def final(job, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = job.next_event(0.05)
        if isinstance(event, DoneEvent | FailedEvent):
            return event
    raise AssertionError("no final event")


@pytest.fixture
def make():
    managers = []

    def factory(*pipelines, queue_size: int = 1) -> JobManager:
        manager = JobManager(list(pipelines), queue_size, encode_mp4=raw_bytes)
        managers.append(manager)
        return manager

    yield factory
    for manager in managers:
        manager.close()


def test_events_in_order_and_live_count_back_to_zero(make):
    manager = make(StepClockStandIn())
    job = manager.submit(request(steps=3))
    events = []
    while not events or not isinstance(events[-1], DoneEvent | FailedEvent):
        event = job.next_event(5)
        assert event is not None
        events.append(event)
    assert [type(e) for e in events] == [ProgressEvent] * 3 + [DataEvent, DoneEvent]
    assert events[-1].nbytes == 12 and events[-1].frames == 1
    assert manager.live_jobs == 0  # already down when the final event is delivered


def test_queue_limit_and_positions(make):
    manager = make(StepClockStandIn(step_s=0.05), queue_size=2)
    running = manager.submit(request(steps=100))
    time.sleep(0.1)  # the worker has taken it
    first, second = manager.submit(request()), manager.submit(request())
    assert (running.position, first.position, second.position) == (0, 0, 1)
    with pytest.raises(QueueFullError):
        manager.submit(request())
    second.cancel()
    assert isinstance(final(second).error, CancelledError)
    assert manager.live_jobs == 2
    manager.submit(request()).cancel()  # the freed slot is usable
    running.cancel()
    first.cancel()
    assert manager.wait_idle(2)


def test_cancel_running_job_stops_at_the_next_step(make):
    stand_in = StepClockStandIn(step_s=0.02)
    manager = make(stand_in)
    job = manager.submit(request(steps=1000))
    assert isinstance(job.next_event(2), ProgressEvent)
    job.cancel()
    assert isinstance(final(job).error, CancelledError)
    assert stand_in.steps_run < 10
    assert manager.live_jobs == 0


def test_a_failing_job_does_not_kill_the_worker(make):
    manager = make(StepClockStandIn(fail_on="boom"))
    assert isinstance(final(manager.submit(request(prompt="boom"))).error, RuntimeError)
    assert isinstance(final(manager.submit(request())), DoneEvent)


def test_one_worker_per_pipeline_runs_jobs_in_parallel(make):
    manager = make(StepClockStandIn(step_s=0.05), StepClockStandIn(step_s=0.05), queue_size=0)
    started = time.monotonic()
    jobs = [manager.submit(request(steps=6)), manager.submit(request(steps=6))]
    with pytest.raises(QueueFullError):  # queue_size 0: only as many jobs as workers
        manager.submit(request())
    assert all(isinstance(final(j), DoneEvent) for j in jobs)
    assert time.monotonic() - started < 0.3 * 2 * 0.9  # faster than one after the other


def test_draining_refuses_new_jobs_and_waits(make):
    manager = make(StepClockStandIn(step_s=0.01))
    job = manager.submit(request(steps=10))
    manager.stop_accepting()
    with pytest.raises(DrainingError):
        manager.submit(request())
    assert manager.wait_idle(5)
    assert isinstance(final(job), DoneEvent)


def test_concurrent_cancels_and_submits_leave_nothing_behind(make):
    manager = make(StepClockStandIn(step_s=0.001), queue_size=4)

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(30):
            try:
                job = manager.submit(request(steps=int(rng.integers(1, 5))))
            except QueueFullError:
                continue
            if rng.random() < 0.5:
                job.cancel()
            final(job)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert manager.wait_idle(5) and manager.live_jobs == 0
