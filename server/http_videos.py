"""The HTTP API's video jobs: each one a JobManager job (the same queue and workers as gRPC's Generate), followed
by a thread of its own until it ends, its MP4 then kept in memory for the client to fetch, within a time and a
bytes budget. A job belongs to the principal that created it; others are told it does not exist.

The audit line of a job is written when it ends (completed, failed or cancelled), exactly like a gRPC Generate
call's: the same method name, parameters, status, output digest and timings.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from wanrt.errors import CancelledError, WanrtError
from wanrt.server.errors import DrainingError
from wanrt.server.jobs import DataEvent, DoneEvent, FailedEvent, Job, ProgressEvent
from wanrt.server.service import AuditedCall, AuditFailed, CallStatus, rounded_timings, status_for

# Share of the progress bar each stage fills (denoising is where the time goes).
_STAGE_SPAN = {"text": (0, 5), "denoise": (5, 90), "decode": (90, 99)}
_SWEEP_S = 5.0  # how often expired videos are looked for, at most


class VideoNotFoundError(WanrtError):
    """No such video for this caller (another principal's video is reported the same way)."""


class VideoNotReadyError(WanrtError):
    """The video's content was asked for before it completed."""


@dataclasses.dataclass
class StoredVideo:
    """One HTTP job, as GET /v1/videos/{id} reports it."""

    id: str
    owner: str  # the principal that created it
    created_at: int  # unix seconds
    size: str  # "WIDTHxHEIGHT"
    seconds: str  # the clip's duration, frames / fps
    prompt: str  # held in memory for its owner only; the audit log has its hash unless --audit-prompts
    job: Job
    call: AuditedCall
    status: str = "queued"  # queued | in_progress | completed | failed
    progress: int = 0
    completed_at: float | None = None  # unix seconds
    expires_at: float | None = None
    error: dict[str, Any] | None = None
    video: bytes | None = None
    sha256: str | None = None
    c2pa_manifest: bytes | None = None
    fetched: bool = False  # its content was downloaded at least once
    _chunks: list[bytes] = dataclasses.field(default_factory=list)


class VideoStore:
    """Live and finished HTTP jobs. ``keep_seconds`` after it ends a video is removed; beyond ``keep_bytes`` of
    finished videos the oldest go first."""

    def __init__(self, service: Any, *, keep_seconds: float, keep_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.service = service  # wanrt.server.service.VideoGenerationService: audit, metrics, outputs
        self.keep_seconds = keep_seconds
        self.keep_bytes = keep_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._videos: dict[str, StoredVideo] = {}  # insertion order = creation order
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="wanrt-http-sweeper", daemon=True)
        self._sweeper.start()

    def add(self, video: StoredVideo) -> None:
        with self._lock:
            self._videos[video.id] = video
        threading.Thread(target=self._follow, args=(video,), name=f"wanrt-http-{video.id[-8:]}", daemon=True).start()

    def get(self, video_id: str, principal: str) -> StoredVideo:
        self.sweep()
        with self._lock:
            video = self._videos.get(video_id)
        if video is None or video.owner != principal:
            raise VideoNotFoundError(f"no video {video_id!r}")
        return video

    def list(self, principal: str) -> list[StoredVideo]:
        self.sweep()
        with self._lock:
            return [v for v in self._videos.values() if v.owner == principal]

    def delete(self, video_id: str, principal: str) -> StoredVideo:
        """Cancels a queued or running job (its worker is freed at the next step) or forgets a finished one."""
        video = self.get(video_id, principal)
        with self._lock:
            self._videos.pop(video_id, None)
        video.job.cancel("client")
        return video

    def wait_fetched(self, since: float, timeout: float) -> bool:
        """Draining: waits (at most ``timeout`` s) until every job has ended and every video finished since
        ``since`` (unix time) was downloaded once, so a client polling for its video is not cut off by the
        exit. True when none is left waiting."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                waiting = [v for v in self._videos.values() if v.status in ("queued", "in_progress")
                           or (v.status == "completed" and not v.fetched and (v.completed_at or 0) >= since)]
            if not waiting:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    @property
    def stored_bytes(self) -> int:
        with self._lock:
            return sum(len(v.video) for v in self._videos.values() if v.video is not None)

    def close(self) -> None:
        self._stop.set()

    # --- following a job -------------------------------------------------------------------------------

    def _follow(self, video: StoredVideo) -> None:
        job = video.job
        while True:
            event = job.next_event(timeout=None)
            if isinstance(event, ProgressEvent):
                video.status = "in_progress"
                low, high = _STAGE_SPAN.get(event.progress.stage, (0, 99))
                total = max(1, event.progress.total)
                video.progress = max(video.progress, low + (high - low) * event.progress.step // total)
            elif isinstance(event, DataEvent):
                video.status = "in_progress"
                video._chunks.append(event.data)
            elif isinstance(event, DoneEvent):
                self._completed(video, event)
                return
            elif isinstance(event, FailedEvent):
                self._failed(video, event)
                return

    def _completed(self, video: StoredVideo, done: DoneEvent) -> None:
        data = b"".join(video._chunks)
        video._chunks.clear()
        call, job = video.call, video.job
        timings = {**done.timings, "total_s": time.monotonic() - call.received_at}
        try:
            output, data, manifest = self.service.embedded_output(job, done, data)  # the download carries it
            # Recorded before the video can be fetched: no client holds a clip the audit log does not know.
            call.finish(grpc.StatusCode.OK, timings=rounded_timings(timings), identity=self.service.facts.identity,
                        output=output)
        except AuditFailed:
            self._end_failed(video, CallStatus(grpc.StatusCode.INTERNAL, "the audit log could not be written"))
            return
        except Exception as err:  # signing the provenance manifest failed: a server fault, like on gRPC
            self._failed(video, FailedEvent(err, done.timings))
            return
        now = self._clock()
        with self._lock:
            video.video, video.sha256, video.c2pa_manifest = data, output["sha256"], manifest
            video.status, video.progress = "completed", 100
            video.completed_at, video.expires_at = now, now + self.keep_seconds
            self._evict_over_budget_locked()

    def _failed(self, video: StoredVideo, failed: FailedEvent) -> None:
        video._chunks.clear()
        error = failed.error
        if isinstance(error, CancelledError) and video.job.cancel_reason == "shutdown":
            error = DrainingError("the server shut down before the job finished")
        status = status_for(error, video.id)
        video.call.record["timings"] = rounded_timings(failed.timings)
        try:
            video.call.finish(status.code, status)
        except AuditFailed:
            status = CallStatus(grpc.StatusCode.INTERNAL, "the audit log could not be written")
        self._end_failed(video, status)

    def _end_failed(self, video: StoredVideo, status: CallStatus) -> None:
        now = self._clock()
        with self._lock:
            video.status = "failed"
            video.error = {"code": status.code.name.lower(), "message": status.message}
            video.completed_at, video.expires_at = now, now + self.keep_seconds

    # --- retention ---------------------------------------------------------------------------------------

    def _evict_over_budget_locked(self) -> None:
        finished = [v for v in self._videos.values() if v.video is not None]
        total = sum(len(v.video) for v in finished)
        for video in sorted(finished, key=lambda v: v.completed_at or 0):
            if total <= self.keep_bytes:
                break
            total -= len(video.video)
            del self._videos[video.id]

    def sweep(self) -> None:
        """Removes videos (and failed jobs) whose time is up."""
        now = self._clock()
        with self._lock:
            for video_id in [v.id for v in self._videos.values() if v.expires_at is not None and v.expires_at <= now]:
                del self._videos[video_id]

    def _sweep_loop(self) -> None:
        while not self._stop.wait(min(_SWEEP_S, max(0.1, self.keep_seconds / 2))):
            self.sweep()

