"""OpenAI's Videos API (``/v1/videos``) and model listing (``/v1/models``) over the front door: this module only
parses (a typed body, ``VideoBody``) and renders (OpenAI's video object and error shape, ``_HTTP``). A video job
here is a Generate job like gRPC's: the same checks, admission, queue, audit line and metrics (frontdoor.py).

Endpoints: ``POST /v1/videos`` (JSON, multipart or urlencoded form), ``GET /v1/videos`` (the caller's own,
paginated), ``GET /v1/videos/{id}``, ``GET /v1/videos/{id}/content``, ``DELETE /v1/videos/{id}``,
``GET /v1/models``.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from wanrt.engine.request import GenerationRequest
from wanrt.errors import InvalidRequestError
from wanrt.server.errors import VideoNotReadyError
from wanrt.server.frontdoor import Ask, AuditedCall, Caller, CallStatus, Code, Duration, FrontDoor
from wanrt.server.http_edge import AsciiJSONResponse, HttpApi, parse_json_object, parse_model, read_body, read_form
from wanrt.server.http_videos import StoredVideo
from wanrt.server.protocol import MP4

API = "openai"
_SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")
_MAX_LIST = 100
_POLL_AFTER_MS = 500  # the openai SDK's poll helper waits this long between polls (header openai-poll-after-ms)
_DEFAULTS = GenerationRequest.defaults()

# The one table from outcomes to HTTP statuses and OpenAI error types.
_HTTP = {
    Code.INVALID_ARGUMENT: (400, "invalid_request_error"),
    Code.UNAUTHENTICATED: (401, "authentication_error"),
    Code.PERMISSION_DENIED: (403, "permission_error"),
    Code.NOT_FOUND: (404, "invalid_request_error"),
    Code.FAILED_PRECONDITION: (409, "invalid_request_error"),
    Code.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    Code.UNAVAILABLE: (503, "server_error"),
    Code.CANCELLED: (499, "invalid_request_error"),
    Code.INTERNAL: (500, "server_error"),
}


def status_code_for(status: CallStatus) -> int:
    """A request over the memory budget is 400 (waiting will not help), a body over the size limit 413, a full
    queue 429 (retry later)."""
    if status.reason == "memory":
        return 400
    if status.reason == "body":
        return 413
    return _HTTP.get(status.code, (500, ""))[0]


class VideoBody(BaseModel):
    """POST /v1/videos: OpenAI's fields, and wanrt's own (``negative_prompt``, ``frames``, ``steps``, ...)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str
    model: str | None = None
    size: str | None = None  # "WIDTHxHEIGHT"
    seconds: float | str | None = None  # OpenAI's SDK sends it as text ("4")
    negative_prompt: str | None = None
    frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    guidance_2: float | None = None
    seed: int | None = Field(None, description="-1: the server chooses one (reported back)")
    fps: int | None = None
    schedule: str | None = None  # "base" or a distilled preset (engine/schedules.py); unset: the model's
    shift: float | None = None
    step_cache: float | None = None  # adaptive step cache threshold; unset: the server's


# What the front door's checks name, as this API's client gave it.
_FIELD_NAMES = {"height": "size", "width": "size"}


def ask_from_body(body: VideoBody, door: FrontDoor, client_request_id: str) -> Ask:
    """The engine request a body asks for (unset fields: the model's defaults), with the names its fields had
    (``size`` for width and height, ``seconds`` for frames when the client gave seconds)."""
    if body.model is not None and body.model != door.model_name:
        raise InvalidRequestError("model", f"this server serves {door.model_name!r}, not {body.model!r}")
    values = {name: value for name, value in body.model_dump(exclude={"model", "size", "seconds"}).items()
              if value is not None}
    names = dict(_FIELD_NAMES)
    if body.size is not None:
        match = _SIZE.match(body.size)
        if not match:
            raise InvalidRequestError("size", f"must be WIDTHxHEIGHT, e.g. {_DEFAULTS.width}x{_DEFAULTS.height}; "
                                              f"got {body.size!r}")
        values["width"], values["height"] = int(match.group(1)), int(match.group(2))
    duration = None
    if body.seconds is not None:
        if body.frames is not None:
            raise InvalidRequestError("seconds", "give seconds or frames, not both")
        duration = Duration("seconds", body.seconds, "fps")
        names["frames"] = "seconds"
    return Ask(door.request_from(values, duration=duration), MP4, client_request_id, "x-client-request-id", names)


def video_object(video: StoredVideo, model_name: str) -> dict[str, Any]:
    """OpenAI's video object (``openai.types.Video``), and wanrt's ``settings`` (what made the video)."""
    def unix(value: float | None) -> int | None:
        return None if value is None else int(value)

    return {"id": video.id, "object": "video", "model": model_name, "status": _OPENAI_STATUS[video.status],
            "progress": video.progress, "created_at": video.created_at, "completed_at": unix(video.completed_at),
            "expires_at": unix(video.expires_at), "size": video.size, "seconds": video.seconds,
            "prompt": video.prompt, "remixed_from_video_id": None, "error": video.error,
            "settings": video.job.metadata}


_OPENAI_STATUS = {"queued": "queued", "in_progress": "in_progress", "completed": "completed", "failed": "failed",
                  "cancelled": "failed"}


class OpenAiApi(HttpApi):
    api = API

    def routes(self) -> list[Route]:
        return [
            Route("/v1/videos", self.create, methods=["POST"]),
            Route("/v1/videos", self.list, methods=["GET"]),
            Route("/v1/videos/{video_id}", self.retrieve, methods=["GET"]),
            Route("/v1/videos/{video_id}", self.delete, methods=["DELETE"]),
            Route("/v1/videos/{video_id}/content", self.content, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
        ]

    def error_response(self, status: CallStatus, call_id: str | None = None, *,
                       http_status: int | None = None) -> Response:
        """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
        code = http_status or status_code_for(status)
        kind = _HTTP.get(status.code, (0, "server_error"))[1]
        message = status.description if status.field is not None and status.description else status.message
        body = {"error": {"message": message, "type": kind, "param": status.field, "code": status.code.name.lower()}}
        headers = {"retry-after": "1"} if code in (429, 503) else None
        return AsciiJSONResponse(body, status_code=code, headers=headers)

    # --- POST /v1/videos ---------------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        async def work(caller: Caller, call: AuditedCall) -> Response:
            body = await self._read_video_body(request)
            ask = ask_from_body(body, self.door, request.headers.get("x-client-request-id", ""))
            job = await run_in_threadpool(self.door.admit, call, ask)
            request_ = job.request
            video = StoredVideo(id=call.id, owner=caller.principal, api=API, created_at=int(time.time()),
                                size=f"{request_.width}x{request_.height}",
                                seconds=f"{request_.frames / request_.fps:.2f}".rstrip("0").rstrip("."),
                                prompt=request_.prompt, job=job, call=call)
            self.store.add(video)  # its audit line is written when the job ends, like a gRPC Generate's
            return AsciiJSONResponse(video_object(video, self.door.model_name))

        # A video's id is its job's id and its audit line's request_id, as on gRPC; the line is written when the
        # job ends (VideoStore), not now: audited=False here.
        return await self.handle(request, "Generate", work, audited=False, call_id=f"video_{uuid.uuid4().hex}")

    async def _read_video_body(self, request: Request) -> VideoBody:
        raw = await read_body(request, self.max_request_bytes)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            data: dict[str, Any] = await read_form(request, raw)
            strict = False  # form fields are text
        elif kind in ("application/json", ""):
            data, strict = parse_json_object(raw), True
        else:
            raise InvalidRequestError("content-type", f"must be application/json or multipart/form-data, "
                                                      f"got {kind!r}")
        if "input_reference" in data:
            raise InvalidRequestError("input_reference", "is not supported: wanrt generates from text only")
        return parse_model(VideoBody, data, strict=strict, unknown=lambda field: (
            f"is not a field this server accepts ({', '.join(VideoBody.model_fields)})"))

    # --- GET /v1/videos, GET /v1/videos/{id} ------------------------------------------------------------------------

    async def list(self, request: Request) -> Response:
        async def work(caller: Caller, _call: AuditedCall) -> Response:
            query = request.query_params
            order = query.get("order", "desc")
            if order not in ("asc", "desc"):
                raise InvalidRequestError("order", f"must be asc or desc, got {order!r}")
            limit_text = query.get("limit", "20")
            if not limit_text.isdigit() or not 1 <= int(limit_text) <= _MAX_LIST:
                raise InvalidRequestError("limit", f"must be an integer from 1 to {_MAX_LIST}, got {limit_text!r}")
            limit = int(limit_text)
            videos = self.store.list(caller.principal, API)
            if order == "desc":
                videos.reverse()
            after = query.get("after")
            if after is not None:
                ids = [v.id for v in videos]
                if after not in ids:
                    raise InvalidRequestError("after", f"no video {after!r} in this listing")
                videos = videos[ids.index(after) + 1:]
            page = videos[:limit]
            return AsciiJSONResponse({"object": "list", "data": [video_object(v, self.door.model_name) for v in page],
                                      "first_id": page[0].id if page else None,
                                      "last_id": page[-1].id if page else None, "has_more": len(videos) > len(page)})

        return await self.handle(request, "ListVideos", work, audited=False)

    async def retrieve(self, request: Request) -> Response:
        async def work(caller: Caller, _call: AuditedCall) -> Response:
            video = self.store.get(request.path_params["video_id"], caller.principal, API)
            return AsciiJSONResponse(video_object(video, self.door.model_name),
                                     headers={"openai-poll-after-ms": str(_POLL_AFTER_MS)})

        return await self.handle(request, "RetrieveVideo", work, audited=False)

    # --- GET /v1/videos/{id}/content -----------------------------------------------------------------------------

    async def content(self, request: Request) -> Response:
        async def work(caller: Caller, call: AuditedCall) -> Response:
            video_id = request.path_params["video_id"]
            call.record["video_id"] = video_id
            variant = request.query_params.get("variant", "video")
            if variant not in ("video", "c2pa"):
                raise InvalidRequestError("variant", f"must be video (or c2pa with provenance on), got {variant!r}")
            video = self.store.get(video_id, caller.principal, API)
            if video.status != "completed" or video.video is None:
                raise VideoNotReadyError(f"video {video_id} is {video.status}, not completed")
            call.record["output"] = {"sha256": video.sha256, "bytes": len(video.video), "format": MP4}
            if variant == "c2pa":
                if video.c2pa_manifest is None:
                    raise InvalidRequestError("variant", "this server signs no C2PA manifest (--no-provenance)")
                return Response(video.c2pa_manifest, media_type="application/c2pa")
            video.fetched = True
            return Response(video.video, media_type="video/mp4", headers={
                "x-video-sha256": video.sha256, "content-disposition": f'attachment; filename="{video_id}.mp4"'})

        return await self.handle(request, "DownloadVideo", work)

    # --- DELETE /v1/videos/{id} -----------------------------------------------------------------------------------

    async def delete(self, request: Request) -> Response:
        async def work(caller: Caller, call: AuditedCall) -> Response:
            video_id = request.path_params["video_id"]
            call.record["video_id"] = video_id
            self.store.delete(video_id, caller.principal, API)
            return AsciiJSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})

        return await self.handle(request, "DeleteVideo", work)

    # --- GET /v1/models --------------------------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        async def work(_caller: Caller, _call: AuditedCall) -> Response:
            card = self.door.model_card()
            return AsciiJSONResponse({"object": "list", "data": [
                {"object": "model", "created": int(self.door.started_at), "owned_by": "wanrt", **card}]})

        return await self.handle(request, "DescribeModel", work, audited=False, token_method="DescribeModel")
