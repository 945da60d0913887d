"""DashScope's video-synthesis API (Alibaba Cloud's way to Wan models) over the front door, so code written for
the cloud, the official ``dashscope`` SDK included, runs against a private wanrt. This module only parses (typed
bodies: ``SynthesisBody``) and renders (DashScope's task object and error shape, ``_CODES``); the checks,
admission, queue, audit line and metrics are the front door's, as for every other API.

    POST /api/v1/services/aigc/video-generation/video-synthesis   create (X-DashScope-Async: enable -> task_id;
                                                                   without it the call waits for the video)
    GET  /api/v1/tasks/{task_id}                                   task_status, video_url when SUCCEEDED
    POST /api/v1/tasks/{task_id}/cancel                            PENDING or RUNNING -> CANCELED
    GET  /api/v1/tasks/{task_id}/video?expires=..&signature=..     the MP4 (video_url points here)

A task is a Generate job of the caller's; other principals are told it is UNKNOWN. Its ``video_url`` is served
by wanrt itself: signed over (task, principal, expiry), valid until the video expires from memory
(``--http-keep-seconds``, at most 24 h as in the cloud) and only for the principal that created it.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wanrt.engine.shapes import WAN_NATIVE_FPS
from wanrt.errors import InvalidRequestError
from wanrt.server.errors import VideoNotFoundError, VideoNotReadyError
from wanrt.server.frontdoor import Ask, AuditedCall, Caller, CallStatus, Code, Duration, FrontDoor
from wanrt.server.http_edge import AsciiJSONResponse, HttpApi, parse_model
from wanrt.server.http_videos import StoredVideo, VideoStore
from wanrt.server.protocol import MP4

API = "dashscope"
SYNTHESIS_PATH = "/api/v1/services/aigc/video-generation/video-synthesis"
MAX_URL_SECONDS = 24 * 3600  # the cloud's video URLs live 24 h; ours at most that, and no longer than the video
_SYNC_POLL_S = 0.05
_SIZE = re.compile(r"^([0-9]{1,5})[*x]([0-9]{1,5})$")
# DashScope's resolution tiers for Wan text-to-video, landscape 16:9 (the cloud's default aspect).
RESOLUTIONS = {"480P": (832, 480), "720P": (1280, 720), "1080P": (1920, 1080)}
_SAMPLING = ("temperature", "top_k", "top_p", "max_tokens", "repetition_penalty", "presence_penalty")

# The one table from outcomes to HTTP statuses and DashScope error codes.
_CODES = {
    Code.INVALID_ARGUMENT: (400, "InvalidParameter"),
    Code.UNAUTHENTICATED: (401, "InvalidApiKey"),
    Code.PERMISSION_DENIED: (403, "AccessDenied"),
    Code.NOT_FOUND: (404, "NotFound"),
    Code.FAILED_PRECONDITION: (400, "UnsupportedOperation"),
    Code.RESOURCE_EXHAUSTED: (429, "Throttling"),
    Code.UNAVAILABLE: (503, "ServiceUnavailable"),
    Code.CANCELLED: (499, "RequestCanceled"),
    Code.DEADLINE_EXCEEDED: (504, "RequestTimeOut"),
    Code.INTERNAL: (500, "InternalError"),
}
_BY_REASON = {"memory": (400, "InvalidParameter"), "body": (413, "RequestTooLarge")}
_TASK_STATUS = {"queued": "PENDING", "in_progress": "RUNNING", "completed": "SUCCEEDED", "failed": "FAILED",
                "cancelled": "CANCELED"}


def dashscope_code(status: CallStatus) -> tuple[int, str]:
    return _BY_REASON.get(status.reason or "") or _CODES.get(status.code, (500, "InternalError"))


class SynthesisInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    negative_prompt: str | None = None
    # The SDK's older switch for prompt rewriting, which it sends as true on every call unless told otherwise:
    # ignored (wanrt never rewrites a prompt; the task reports orig_prompt == actual_prompt).
    extend_prompt: bool | None = None
    function: Literal["video-synthesis"] | None = None  # the SDK names the call here (the path says it too)


class SynthesisParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    size: str | None = None  # "1280*720"
    resolution: str | None = None  # "480P", "720P" (16:9), or an explicit "1280x720"
    duration: float | None = None  # seconds
    frame_rate: int | None = None
    seed: int | None = Field(None, description="-1 or absent: the server chooses one (reported back)")
    prompt_extend: bool | None = None
    watermark: bool | None = None
    guidance_scale: float | None = None
    # wanrt's own: denoising steps, the low-noise expert's guidance (Wan2.2 A14B), schedule, shift, step cache.
    steps: int | None = None
    guidance_scale_2: float | None = None
    schedule: str | None = None
    shift: float | None = None
    step_cache: float | None = None


class SynthesisBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    input: SynthesisInput
    parameters: SynthesisParameters = Field(default_factory=SynthesisParameters)


# What the front door's checks name, as this API's client gave it.
_FIELD_NAMES = {"prompt": "input.prompt", "negative_prompt": "input.negative_prompt", "height": "parameters.size",
                "width": "parameters.size", "frames": "parameters.duration", "fps": "parameters.frame_rate",
                "seed": "parameters.seed", "guidance": "parameters.guidance_scale",
                "guidance_2": "parameters.guidance_scale_2", "steps": "parameters.steps",
                "schedule": "parameters.schedule", "shift": "parameters.shift", "step_cache": "parameters.step_cache"}


def _unknown(field: str) -> str:
    name = field.rsplit(".", 1)[-1]
    if name in _SAMPLING:
        return "means nothing to a diffusion model (it samples noise, not tokens): remove it"
    if field.startswith("input.") or field == "resources":
        return "is not supported: wanrt generates video from a text prompt only"
    if field.startswith("parameters."):
        return f"is not a parameter this server accepts ({', '.join(SynthesisParameters.model_fields)})"
    return "is not a field this server accepts (model, input, parameters)"


def ask_from_body(body: SynthesisBody, door: FrontDoor, client_request_id: str) -> Ask:
    """The engine request a DashScope body asks for. ``frame_rate`` is honoured within the model's frame-rate
    and frame-count limits, and refused beyond them saying what the model makes."""
    if body.model != door.model_name:
        raise InvalidRequestError("model", f"this server serves {door.model_name!r}, not {body.model!r}")
    p, limits = body.parameters, door.limits
    if p.prompt_extend:
        raise InvalidRequestError("parameters.prompt_extend", "must be false: wanrt never rewrites a prompt (the "
                                                              "video is made from the prompt as given)")
    if p.watermark:
        raise InvalidRequestError("parameters.watermark", "must be false: wanrt draws no visible watermark; a "
                                                          "server with provenance on marks every video with C2PA")
    values: dict[str, Any] = {"prompt": body.input.prompt}
    names = dict(_FIELD_NAMES)
    if body.input.negative_prompt is not None:
        values["negative_prompt"] = body.input.negative_prompt
    for name, given in (("seed", p.seed), ("steps", p.steps), ("guidance", p.guidance_scale),
                        ("guidance_2", p.guidance_scale_2), ("schedule", p.schedule), ("shift", p.shift),
                        ("step_cache", p.step_cache)):
        if given is not None:
            values[name] = given
    size = _size(p)
    if size is not None:
        values["width"], values["height"], size_field = size
        names["height"] = names["width"] = size_field
    if p.frame_rate is not None:
        if not 1 <= p.frame_rate <= limits.max_fps:
            raise InvalidRequestError("parameters.frame_rate", f"{p.frame_rate} fps is not a rate this model makes: "
                                      f"1 to {limits.max_fps} frames per second (it was trained at "
                                      f"{WAN_NATIVE_FPS}; other rates play its motion faster or slower)")
        values["fps"] = p.frame_rate
    duration = None if p.duration is None else Duration("parameters.duration", p.duration, "parameters.frame_rate")
    return Ask(door.request_from(values, duration=duration, names=names), MP4, client_request_id,
               "x-client-request-id", names)


def _size(p: SynthesisParameters) -> tuple[int, int, str] | None:
    """(width, height, the field they came from): ``size``, else ``resolution``; None: the model's default."""
    chosen: tuple[int, int, str] | None = None
    if p.size is not None:
        match = _SIZE.match(p.size)
        if not match:
            raise InvalidRequestError("parameters.size", f"must be WIDTH*HEIGHT, e.g. 1280*720; got {p.size!r}")
        chosen = (int(match.group(1)), int(match.group(2)), "parameters.size")
    if p.resolution is not None:
        tier = RESOLUTIONS.get(p.resolution.upper())
        match = _SIZE.match(p.resolution)
        if tier is None and not match:
            raise InvalidRequestError("parameters.resolution", f"must be one of {', '.join(RESOLUTIONS)} or "
                                                               f"WIDTHxHEIGHT; got {p.resolution!r}")
        width, height = tier or (int(match.group(1)), int(match.group(2)))
        if chosen is not None and {(width, height), (height, width)}.isdisjoint({chosen[:2]}):
            raise InvalidRequestError("parameters.resolution", f"{p.resolution} disagrees with size {p.size}")
        if chosen is None:
            chosen = (width, height, "parameters.resolution")
    return chosen


def _time(value: float | None) -> str | None:
    """DashScope's timestamps ("2025-09-29 14:18:52.331"), in UTC."""
    if value is None:
        return None
    moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


class DashScopeApi(HttpApi):
    api = API

    def __init__(self, door: FrontDoor, store: VideoStore, *, max_request_bytes: int, url_secret: bytes) -> None:
        super().__init__(door, store, max_request_bytes=max_request_bytes)
        self._secret = url_secret

    def routes(self) -> list[Route]:
        return [
            Route(SYNTHESIS_PATH, self.create, methods=["POST"]),
            Route("/api/v1/tasks/{task_id}", self.query, methods=["GET"]),
            Route("/api/v1/tasks/{task_id}/cancel", self.cancel, methods=["POST"]),
            Route("/api/v1/tasks/{task_id}/video", self.video, methods=["GET"]),
        ]

    def error_response(self, status: CallStatus, call_id: str | None = None, *,
                       http_status: int | None = None) -> Response:
        """DashScope's error shape: {"request_id", "code", "message"}; the message names the field."""
        code, name = dashscope_code(status)
        body = {"request_id": call_id or uuid.uuid4().hex, "code": name, "message": status.message}
        headers = {"retry-after": "1"} if (http_status or code) in (429, 503) else None
        return AsciiJSONResponse(body, status_code=http_status or code, headers=headers)

    # --- create ------------------------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        mode = request.headers.get("x-dashscope-async")

        async def work(caller: Caller, call: AuditedCall) -> Response:
            if mode is not None and mode.lower() != "enable":
                raise InvalidRequestError("X-DashScope-Async", f"must be enable (or absent: the call then waits for "
                                                               f"the video), got {mode!r}")
            body = parse_model(SynthesisBody, await self.read_json(request), strict=True, unknown=_unknown)
            ask = ask_from_body(body, self.door, request.headers.get("x-client-request-id", ""))
            job = await run_in_threadpool(self.door.admit, call, ask)
            made = job.request
            video = StoredVideo(id=call.id, owner=caller.principal, api=API, created_at=int(time.time()),
                                size=f"{made.width}*{made.height}", seconds=f"{made.frames / made.fps:.3g}",
                                prompt=made.prompt, job=job, call=call)
            self.store.add(video)  # its audit line is written when the job ends
            if mode is not None:
                return AsciiJSONResponse({"request_id": uuid.uuid4().hex,
                                          "output": {"task_id": video.id, "task_status": "PENDING"}})
            return await self._wait(request, video, caller)

        return await self.handle(request, "Generate", work, audited=False, call_id=str(uuid.uuid4()))

    async def _wait(self, request: Request, video: StoredVideo, caller: Caller) -> Response:
        """The synchronous form: the answer is the finished task; a client that hangs up cancels its job."""
        while video.status in ("queued", "in_progress"):
            if await request.is_disconnected():
                self.store.cancel(video.id, caller.principal, API)
                break
            await asyncio.sleep(_SYNC_POLL_S)
        while video.status in ("queued", "in_progress"):  # cancelled: it ends at its next step
            await asyncio.sleep(_SYNC_POLL_S)
        return AsciiJSONResponse(self._task(request, video, caller))

    # --- tasks ------------------------------------------------------------------------------------------------

    async def query(self, request: Request) -> Response:
        async def work(caller: Caller, _call: AuditedCall) -> Response:
            task_id = request.path_params["task_id"]
            try:
                video = self.store.get(task_id, caller.principal, API)
            except VideoNotFoundError:  # unknown, expired or another principal's: what the cloud says
                return AsciiJSONResponse({"request_id": uuid.uuid4().hex,
                                          "output": {"task_id": task_id, "task_status": "UNKNOWN"}})
            return AsciiJSONResponse(self._task(request, video, caller))

        return await self.handle(request, "GetTask", work, audited=False)

    async def cancel(self, request: Request) -> Response:
        async def work(caller: Caller, call: AuditedCall) -> Response:
            task_id = request.path_params["task_id"]
            call.record["video_id"] = task_id
            video = self.store.get(task_id, caller.principal, API)
            if video.status not in ("queued", "in_progress"):
                raise VideoNotReadyError(f"task {task_id} is {_TASK_STATUS[video.status]}: only PENDING or RUNNING "
                                         "tasks can be canceled")
            self.store.cancel(task_id, caller.principal, API)
            return AsciiJSONResponse({"request_id": call.id})

        return await self.handle(request, "CancelTask", work)

    def _task(self, request: Request, video: StoredVideo, caller: Caller) -> dict[str, Any]:
        status = _TASK_STATUS[video.status]
        settings = video.job.metadata or {}
        output: dict[str, Any] = {
            "task_id": video.id, "task_status": status, "submit_time": _time(video.created_at),
            "scheduled_time": _time(video.started_at), "end_time": _time(video.completed_at),
            "orig_prompt": video.prompt, "actual_prompt": video.prompt, "seed": settings.get("seed"),
            "settings": settings}
        answer: dict[str, Any] = {"request_id": uuid.uuid4().hex, "output": output}
        if status == "SUCCEEDED":
            output["video_url"] = self._video_url(request, video, caller)
            answer["usage"] = {"video_count": 1, "video_duration": float(video.seconds), "video_ratio": video.size}
        elif status in ("FAILED", "CANCELED") and video.error is not None:
            failed = CallStatus(Code[video.error["code"].upper()], video.error["message"])
            output["code"], output["message"] = dashscope_code(failed)[1], failed.message
        return answer

    # --- the video URL ---------------------------------------------------------------------------------------------

    def _signature(self, task_id: str, principal: str, expires: int) -> str:
        message = f"{task_id}\n{principal}\n{expires}".encode("utf-8", "backslashreplace")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _video_url(self, request: Request, video: StoredVideo, caller: Caller) -> str:
        expires = int(min(video.expires_at or time.time(), time.time() + MAX_URL_SECONDS))
        signature = self._signature(video.id, caller.principal, expires)
        base = str(request.base_url).rstrip("/")
        return f"{base}/api/v1/tasks/{video.id}/video?expires={expires}&signature={signature}"

    async def video(self, request: Request) -> Response:
        async def work(caller: Caller, call: AuditedCall) -> Response:
            task_id = request.path_params["task_id"]
            call.record["video_id"] = task_id
            query = request.query_params
            expires, signature = query.get("expires", ""), query.get("signature", "")
            # Bound to its caller: the URL was signed for the principal that created the task, and only that
            # principal's credentials (token or certificate, as on every call) can fetch it.
            good = expires.isdigit() and hmac.compare_digest(
                signature.encode(), self._signature(task_id, caller.principal, int(expires)).encode())
            if not good:
                raise VideoNotFoundError(f"no video for task {task_id!r} at this URL for this caller")
            if int(expires) < time.time():
                raise VideoNotFoundError(f"the URL of task {task_id}'s video expired")
            video = self.store.get(task_id, caller.principal, API)
            if video.status != "completed" or video.video is None:
                raise VideoNotReadyError(f"task {task_id} is {_TASK_STATUS[video.status]}, not SUCCEEDED")
            call.record["output"] = {"sha256": video.sha256, "bytes": len(video.video), "format": MP4}
            video.fetched = True
            return Response(video.video, media_type="video/mp4", headers={
                "x-video-sha256": video.sha256, "content-disposition": f'attachment; filename="{task_id}.mp4"'})

        return await self.handle(request, "DownloadVideo", work)
