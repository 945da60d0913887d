"""Jobs: a bounded queue in front of one worker thread per accelerator (each with its own loaded pipeline).

The gRPC handler thread submits a job and reads its events; the worker runs the pipeline and encodes the video.
A job leaves the live count as soon as its worker is done with it (or, if it was still queued, the moment
it is cancelled), before its last event is delivered, so a client that saw its call end sees the count
already down.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from wanrt.engine.pipeline import Progress
from wanrt.engine.request import GenerationRequest
from wanrt.errors import CancelledError
from wanrt.server.errors import DrainingError, QueueFullError
from wanrt.server.metrics import Metrics
from wanrt.server.protocol import MP4, RAW_RGB24

log = logging.getLogger("wanrt.server")


class Pipeline(Protocol):
    """What a worker needs from wanrt.engine.pipeline.VideoPipeline."""

    def generate(self, request: GenerationRequest, *, on_progress: object = None,
                 should_stop: object = None) -> Iterator[np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    progress: Progress


@dataclasses.dataclass(frozen=True)
class DataEvent:
    data: bytes


@dataclasses.dataclass(frozen=True)
class DoneEvent:
    sha256: str
    nbytes: int
    frames: int
    timings: dict[str, float]  # queued_s, text_s, denoise_s, decode_s
    dit_calls: int = 0  # DiT calls the clip took, and those the step cache saved (engine.pipeline.Progress)
    dit_calls_saved: int = 0


@dataclasses.dataclass(frozen=True)
class FailedEvent:
    error: BaseException
    timings: dict[str, float]


Event = ProgressEvent | DataEvent | DoneEvent | FailedEvent


class Job:
    """One generation. ``events`` yields progress and data, then exactly one DoneEvent or FailedEvent."""

    def __init__(self, manager: JobManager, request: GenerationRequest, video_format: str, received_at: float,
                 job_id: str | None = None) -> None:
        self.id = job_id or uuid.uuid4().hex
        self.request = request
        self.format = video_format
        self.received_at = received_at  # time.monotonic() when the call arrived
        self.started_at: float | None = None
        self.position = 0
        self.cancel_reason: str | None = None  # "client" or "shutdown"
        self._manager = manager
        self._cancel = threading.Event()
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._finished = False  # guarded by the manager's lock: the final event goes out exactly once
        self._stage_ends: dict[str, float] = {}  # stage -> elapsed_s when it finished
        self._dit_calls = (0, 0)  # made, saved: from the latest progress

    def cancel(self, reason: str = "client") -> None:
        """Idempotent; a queued job leaves the queue now, a running one stops at its next step boundary."""
        if not self._cancel.is_set():
            self.cancel_reason = reason
            self._cancel.set()
        self._manager._withdraw(self)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def next_event(self, timeout: float | None = None) -> Event | None:
        try:
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def _emit(self, event: Event) -> None:
        self._events.put(event)

    def _timings(self, finished_at: float) -> dict[str, float]:
        if self.started_at is None:
            return {"queued_s": finished_at - self.received_at}
        ends = self._stage_ends
        text = ends.get("text", 0.0)
        denoise = ends.get("denoise", text)
        return {"queued_s": self.started_at - self.received_at, "text_s": text, "denoise_s": denoise - text,
                "decode_s": max(0.0, finished_at - self.started_at - denoise)}


class JobManager:
    def __init__(self, pipelines: Sequence[Pipeline], queue_size: int, metrics: Metrics | None = None,
                 *, encode_mp4: object = None) -> None:
        if not pipelines:
            raise ValueError("at least one pipeline (one per accelerator) is needed")
        from wanrt.engine.video import encode_mp4 as default_encoder

        self.queue_size = queue_size
        self.metrics = metrics or Metrics()
        self._encode_mp4 = encode_mp4 or default_encoder
        self._cond = threading.Condition()
        self._pending: collections.deque[Job] = collections.deque()
        self._running: set[Job] = set()
        self._accepting = True
        self._closed = False
        self._workers = [threading.Thread(target=self._work, args=(p,), name=f"wanrt-worker-{i}", daemon=True)
                         for i, p in enumerate(pipelines)]
        for worker in self._workers:
            worker.start()

    @property
    def workers(self) -> int:
        return len(self._workers)

    @property
    def live_jobs(self) -> int:
        with self._cond:
            return len(self._pending) + len(self._running)

    def submit(self, request: GenerationRequest, video_format: str = MP4, *, received_at: float | None = None,
               job_id: str | None = None) -> Job:
        """Queues a job or raises at once: QueueFullError over the limit, DrainingError when shutting down."""
        job = Job(self, request, video_format, time.monotonic() if received_at is None else received_at, job_id)
        with self._cond:
            if not self._accepting:
                raise DrainingError("the server is shutting down and accepts no new jobs")
            idle = len(self._workers) - len(self._running)
            if len(self._pending) >= self.queue_size + max(0, idle):
                raise QueueFullError(f"all {len(self._workers)} workers are busy and {len(self._pending)} jobs "
                                     f"are queued (limit {self.queue_size}); retry later")
            job.position = len(self._pending)  # jobs ahead of it; running ones are not counted
            self._pending.append(job)
            self._update_gauges()
            self._cond.notify_all()
        return job

    def stop_accepting(self) -> None:
        with self._cond:
            self._accepting = False

    def wait_idle(self, timeout: float) -> bool:
        """True once no job is queued or running; False if that did not happen within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._running:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def cancel_all(self, reason: str = "shutdown") -> None:
        with self._cond:
            jobs = list(self._pending) + list(self._running)
        for job in jobs:
            job.cancel(reason)

    def close(self, timeout: float = 10.0) -> None:
        """Stops the workers after cancelling whatever is left."""
        self.stop_accepting()
        self.cancel_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for worker in self._workers:
            worker.join(timeout)

    # --- internals -------------------------------------------------------------------------------------

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(len(self._pending))
        self.metrics.live_jobs.set(len(self._pending) + len(self._running))
        self.metrics.busy_workers.set(len(self._running))

    def _withdraw(self, job: Job) -> None:
        """A cancelled job that is still queued is removed and finished here; a running one by its worker."""
        with self._cond:
            if job not in self._pending:
                return
            self._pending.remove(job)
            self._update_gauges()
            self._finish_locked(job, FailedEvent(CancelledError("cancelled while queued"),
                                                 job._timings(time.monotonic())))
            self._cond.notify_all()

    def _finish_locked(self, job: Job, event: DoneEvent | FailedEvent) -> None:
        if not job._finished:
            job._finished = True
            job._emit(event)

    def _work(self, pipeline: Pipeline) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                job = self._pending.popleft()
                self._running.add(job)
                self._update_gauges()
            outcome = self._run(pipeline, job)
            with self._cond:
                self._running.discard(job)
                self._update_gauges()
                self._finish_locked(job, outcome)
                self._cond.notify_all()

    def _run(self, pipeline: Pipeline, job: Job) -> DoneEvent | FailedEvent:
        """Runs one job to its final event; any exception becomes a FailedEvent (the worker never dies)."""
        job.started_at = started = time.monotonic()
        self.metrics.queue_wait_seconds.observe(started - job.received_at)
        digest, nbytes, frames = hashlib.sha256(), 0, 0
        last_step = [0.0]

        def on_progress(progress: Progress) -> None:
            if progress.stage in ("denoise", "decode") and progress.step > 0:
                self.metrics.step_seconds.labels(progress.stage).observe(progress.elapsed_s - last_step[0])
            last_step[0] = progress.elapsed_s
            if progress.step == progress.total:
                job._stage_ends[progress.stage] = progress.elapsed_s
            job._dit_calls = (progress.dit_calls, progress.dit_calls_saved)
            job._emit(ProgressEvent(progress))

        try:
            if job.cancelled:
                raise CancelledError("cancelled before start")
            chunks = pipeline.generate(job.request, on_progress=on_progress, should_stop=lambda: job.cancelled)

            def counted(source: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
                nonlocal frames
                for chunk in source:
                    frames += int(chunk.shape[0])
                    yield chunk

            if job.format == RAW_RGB24:
                stream: Iterator[bytes] = (np.ascontiguousarray(c).tobytes() for c in counted(chunks))
            else:
                stream = self._encode_mp4(counted(chunks), job.request.fps)
            for data in stream:
                if data:
                    digest.update(data)
                    nbytes += len(data)
                    job._emit(DataEvent(data))
            return DoneEvent(digest.hexdigest(), nbytes, frames, job._timings(time.monotonic()), *job._dit_calls)
        except Exception as err:  # reported to the caller; the worker must keep serving
            if not isinstance(err, CancelledError):
                log.exception("job %s failed", job.id)
            return FailedEvent(err, job._timings(time.monotonic()))
