"""OpenAI-compatible `/v1/videos` over HTTP, beside gRPC in the same process: Starlette on uvicorn, in a thread
of its own with its own event loop. A video job here is a gRPC Generate job (the same JobManager, request
checks, audit lines and metrics); only the envelope differs. Errors are mapped to OpenAI's error shape in
``http_status_for``, once, on top of the gRPC mapping (service.status_for).

Endpoints: ``POST /v1/videos`` (JSON, multipart or urlencoded form), ``GET /v1/videos`` (the caller's own,
paginated), ``GET /v1/videos/{id}``, ``GET /v1/videos/{id}/content``, ``DELETE /v1/videos/{id}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from wanrt.engine.defaults import ModelDefaults
from wanrt.engine.request import GenerationRequest, Limits
from wanrt.engine.schedules import check_schedule
from wanrt.errors import InsufficientMemoryError, InvalidRequestError, WanrtError
from wanrt.server.auth import TokenStore
from wanrt.server.config import HostPort
from wanrt.server.convert import DEFAULTS, MAX_CLIENT_REQUEST_ID
from wanrt.server.errors import ConfigError, DrainingError
from wanrt.server.http_videos import StoredVideo, VideoNotFoundError, VideoNotReadyError, VideoStore
from wanrt.server.protocol import MP4
from wanrt.server.service import AuditedCall, AuditFailed, CallStatus, VideoGenerationService, status_for

log = logging.getLogger("wanrt.server.http")

# Token permissions: a token that may call Generate may create, watch, fetch and delete its own videos.
TOKEN_METHOD = "Generate"
_INT_FIELDS = ("frames", "steps", "seed", "fps")
_FLOAT_FIELDS = ("guidance", "guidance_2", "shift", "step_cache")
_TEXT_FIELDS = ("prompt", "negative_prompt", "model", "size", "seconds", "schedule")
_FIELDS = _TEXT_FIELDS + _INT_FIELDS + _FLOAT_FIELDS
_SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")
_MAX_LIST = 100
_POLL_AFTER_MS = 500  # the openai SDK's poll helper waits this long between polls (header openai-poll-after-ms)
_STOP_S = 5.0

# The one table from status codes to HTTP statuses and OpenAI error types.
_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (409, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error"),
    grpc.StatusCode.CANCELLED: (499, "invalid_request_error"),
    grpc.StatusCode.INTERNAL: (500, "server_error"),
}


class BodyTooLargeError(WanrtError):
    """The request body is over the server's request size limit: 413."""


def http_status_for(error: BaseException, call_id: str | None = None) -> tuple[CallStatus, int]:
    """(the status the audit log and metrics record, the HTTP status)."""
    if isinstance(error, BodyTooLargeError):
        return CallStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)), 413
    if isinstance(error, VideoNotFoundError):
        return CallStatus(grpc.StatusCode.NOT_FOUND, str(error)), 404
    if isinstance(error, VideoNotReadyError):
        return CallStatus(grpc.StatusCode.FAILED_PRECONDITION, str(error)), 409
    status = status_for(error, call_id)
    if isinstance(error, InsufficientMemoryError):
        # RESOURCE_EXHAUSTED as on gRPC, but not 429: this request will not fit however long the client waits.
        return status, 400
    return status, _HTTP[status.code][0]


def error_response(status: CallStatus, http_status: int) -> JSONResponse:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    kind = _HTTP.get(status.code, (0, "server_error"))[1]
    message = status.description if status.field is not None and status.description else status.message
    body = {"error": {"message": message, "type": kind, "param": status.field, "code": status.code.name.lower()}}
    headers = {"retry-after": "1"} if http_status in (429, 503) else None
    return JSONResponse(body, status_code=http_status, headers=headers)


# --- the request ---------------------------------------------------------------------------------------------

def frames_for_seconds(seconds: float, fps: int, limits: Limits) -> int:
    """The valid frame count (k * frame_multiple + 1) nearest to ``seconds * fps``, at least 1."""
    multiple = limits.frame_multiple
    return max(0, round((seconds * fps - 1) / multiple)) * multiple + 1


@dataclasses.dataclass(frozen=True)
class VideoAsk:
    """A parsed POST /v1/videos body."""

    request: GenerationRequest
    size: str
    seconds_given: str | None  # as the client wrote it, for error messages


def parse_video_body(body: dict[str, Any], model_name: str, limits: Limits, defaults: ModelDefaults | None = None, *,
                     step_cache: float | None = None) -> VideoAsk:
    """Field by field, strictly: an unknown or mistyped field is a 400 naming it."""
    for key in body:
        if key == "input_reference":
            raise InvalidRequestError("input_reference", "is not supported: wanrt generates from text only")
        if key not in _FIELDS:
            raise InvalidRequestError(key, f"is not a field this server accepts ({', '.join(_FIELDS)})")
    if "prompt" not in body:
        raise InvalidRequestError("prompt", "is required")
    values: dict[str, Any] = {}
    for name in ("prompt", "negative_prompt", "schedule"):
        if name in body:
            values[name] = _text(name, body[name])
    model = body.get("model")
    if model is not None and _text("model", model) != model_name:
        raise InvalidRequestError("model", f"this server serves {model_name!r}, not {model!r}")
    for name in _INT_FIELDS:
        if name in body:
            values[name] = _integer(name, body[name])
    for name in _FLOAT_FIELDS:
        if name in body:
            values[name] = _number(name, body[name])
    size = body.get("size")
    if size is not None:
        match = _SIZE.match(_text("size", size))
        if not match:
            raise InvalidRequestError("size", f"must be WIDTHxHEIGHT, e.g. {DEFAULTS.width}x{DEFAULTS.height}; "
                                              f"got {size!r}")
        values["width"], values["height"] = int(match.group(1)), int(match.group(2))
    if "schedule" in values:
        check_schedule(values["schedule"])
    base = GenerationRequest.defaults() if defaults is None else defaults.request(schedule=values.get("schedule"))
    seconds = body.get("seconds")
    if seconds is not None:
        if "frames" in values:
            raise InvalidRequestError("seconds", "give seconds or frames, not both")
        duration = _number("seconds", seconds)
        if duration <= 0:
            raise InvalidRequestError("seconds", f"must be greater than 0, got {seconds!r}")
        values["frames"] = frames_for_seconds(duration, values.get("fps", base.fps), limits)
    if "guidance" in values and "guidance_2" not in values:
        values["guidance_2"] = None  # follows the guidance given, not the model's pair
    request = dataclasses.replace(base, **{"step_cache": step_cache, **values})
    return VideoAsk(request, f"{request.width}x{request.height}", None if seconds is None else str(seconds))


def _text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(field, f"must be a string, got {type(value).__name__}")
    return value


def _integer(field: str, value: object) -> int:
    if isinstance(value, str):  # form fields are text
        try:
            return int(value.strip(), 10)
        except ValueError:
            raise InvalidRequestError(field, f"must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(field, f"must be an integer, got {value!r}")
    return value


def _number(field: str, value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidRequestError(field, f"must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(field, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidRequestError(field, f"must be finite, got {value}")
    return float(value)


def _renamed(error: InvalidRequestError, ask: VideoAsk) -> InvalidRequestError:
    """A check failing on a value the client gave under another name reports that name."""
    request = ask.request
    if error.field == "frames" and ask.seconds_given is not None:
        return InvalidRequestError("seconds", f"{ask.seconds_given} s at {request.fps} fps is {request.frames} "
                                              f"frames, and frames {error.message}")
    if error.field in ("height", "width"):
        return InvalidRequestError("size", f"{error.field} {error.message}")
    return error


def video_object(video: StoredVideo, model_name: str) -> dict[str, Any]:
    """OpenAI's video object (``openai.types.Video``)."""
    def unix(value: float | None) -> int | None:
        return None if value is None else int(value)

    return {"id": video.id, "object": "video", "model": model_name, "status": video.status,
            "progress": video.progress, "created_at": video.created_at, "completed_at": unix(video.completed_at),
            "expires_at": unix(video.expires_at), "size": video.size, "seconds": video.seconds,
            "prompt": video.prompt, "remixed_from_video_id": None, "error": video.error}


# --- who is calling --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Caller:
    who: dict[str, Any]  # the audit line's principal, principal_kind, certificate_subject, peer
    refusal: CallStatus | None  # set: the call is refused (401 or 403)

    @property
    def principal(self) -> str:
        return self.who["principal"]


def identify(request: Request, tokens: TokenStore | None) -> Caller:
    """The same rules as gRPC: token id (checked here), else the verified client certificate's subject."""
    subject = request.scope.get("extensions", {}).get("tls", {}).get("client_cert_name")
    host, port = request.client or ("unknown", 0)
    peer = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
    refusal, token_id = None, None
    if tokens is not None:
        header = request.headers.get("authorization")
        result = tokens.check([("authorization", header)] if header else [], TOKEN_METHOD)
        token_id = result.token_id
        if result.code is not None:
            refusal = CallStatus(result.code, result.message)
    if refusal is not None:
        # Whether a token came, never any digest of it (as gRPC's refusals are recorded).
        who = {"principal": token_id or "unauthenticated", "principal_kind": "token" if token_id else "none",
               "token_presented": bool(request.headers.get("authorization"))}
    elif token_id is not None:
        who = {"principal": token_id, "principal_kind": "token"}
    elif subject is not None:
        who = {"principal": subject, "principal_kind": "certificate"}
    else:
        who = {"principal": "anonymous", "principal_kind": "none"}
    return Caller({**who, "certificate_subject": subject, "peer": peer, "api": "http"}, refusal)


class _CertificateH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus ASGI's TLS extension (``client_cert_name``), which uvicorn does not fill:
    mutual TLS principals need the verified client certificate's subject."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            from cryptography import x509

            subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
            app = self.app

            async def with_tls(scope: dict, receive: Callable, send: Callable) -> None:
                scope.setdefault("extensions", {})["tls"] = {"client_cert_name": subject}
                await app(scope, receive, send)

            self.app = with_tls


# --- the application ------------------------------------------------------------------------------------------

class VideosApi:
    """The Starlette application: handlers for /v1/videos on top of the gRPC servicer's checks and records."""

    def __init__(self, service: VideoGenerationService, store: VideoStore, *, tokens: TokenStore | None,
                 max_request_bytes: int, model_name: str, draining: Callable[[], bool]) -> None:
        self.service = service
        self.store = store
        self.tokens = tokens
        self.max_request_bytes = max_request_bytes
        self.model_name = model_name
        self.draining = draining  # set at once on SIGTERM, before the job queue stops accepting
        routes = [
            Route("/v1/videos", self.create, methods=["POST"]),
            Route("/v1/videos", self.list, methods=["GET"]),
            Route("/v1/videos/{video_id}", self.retrieve, methods=["GET"]),
            Route("/v1/videos/{video_id}", self.delete, methods=["DELETE"]),
            Route("/v1/videos/{video_id}/content", self.content, methods=["GET"]),
        ]
        self.app = Starlette(routes=routes, exception_handlers={HTTPException: self._http_error})

    @staticmethod
    async def _http_error(_request: Request, exc: Exception) -> Response:
        """Starlette's own refusals (unknown path, wrong method) in OpenAI's shape too."""
        assert isinstance(exc, HTTPException)
        code = grpc.StatusCode.NOT_FOUND if exc.status_code == 404 else grpc.StatusCode.INVALID_ARGUMENT
        return error_response(CallStatus(code, str(exc.detail)), exc.status_code)

    async def _handle(self, request: Request, method: str,
                      work: Callable[[Caller, AuditedCall], Awaitable[Response]], *, audited: bool = True) -> Response:
        """Authenticates, runs ``work``, maps what it raises; refusals and errors are always audited, successes
        when ``audited`` (status polls and listings are not: a client polling every second would flood the log)."""
        caller = identify(request, self.tokens)
        # A video's id is its job's id and its audit line's request_id, as on gRPC.
        call = AuditedCall(self.service, method, caller.who, new_video_id() if method == "Generate" else None)
        try:
            if caller.refusal is not None:
                await run_in_threadpool(call.finish, caller.refusal.code, caller.refusal)
                return error_response(caller.refusal, _HTTP[caller.refusal.code][0])
            response = await work(caller, call)
            if audited and not call.written:
                await run_in_threadpool(call.finish, grpc.StatusCode.OK)
            return response
        except AuditFailed:
            return error_response(CallStatus(grpc.StatusCode.INTERNAL, "the audit log could not be written; the "
                                                                       "call was not completed"), 500)
        except Exception as err:
            status, http_status = http_status_for(err, call.id)
            if status.code == grpc.StatusCode.INTERNAL:
                log.error("%s %s failed", method, call.id, exc_info=err)
            try:
                await run_in_threadpool(call.finish, status.code, status)
            except AuditFailed:
                status, http_status = CallStatus(grpc.StatusCode.INTERNAL, "the audit log could not be written"), 500
            return error_response(status, http_status)

    # --- POST /v1/videos ----------------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        async def work(caller: Caller, call: AuditedCall) -> Response:
            client_request_id = request.headers.get("x-client-request-id", "")
            call.record["client_request_id"] = client_request_id or None
            if len(client_request_id) > MAX_CLIENT_REQUEST_ID:
                raise InvalidRequestError("x-client-request-id",
                                          f"must be at most {MAX_CLIENT_REQUEST_ID} printable ASCII characters")
            body = await self._read_body(request)
            facts = self.service.facts
            ask = parse_video_body(body, self.model_name, facts.limits, facts.defaults, step_cache=facts.step_cache)
            try:
                self.service.check_request(ask.request, MP4, call.record)
            except InvalidRequestError as err:
                raise _renamed(err, ask) from None
            if self.draining():
                raise DrainingError("the server is shutting down and accepts no new jobs")
            job = await run_in_threadpool(self.service.jobs.submit, ask.request, MP4,
                                          received_at=call.received_at, job_id=call.id)
            fps = ask.request.fps
            video = StoredVideo(id=call.id, owner=caller.principal, created_at=int(time.time()), size=ask.size,
                                seconds=f"{ask.request.frames / fps:.2f}".rstrip("0").rstrip("."),
                                prompt=ask.request.prompt, job=job, call=call)
            self.store.add(video)  # its audit line is written when the job ends, like a gRPC Generate's
            return JSONResponse(video_object(video, self.model_name))

        # A created job's line is written when it ends (VideoStore), not now: audited=False here.
        return await self._handle(request, "Generate", work, audited=False)

    async def _read_body(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            raise BodyTooLargeError(f"the request body ({declared} bytes) is over this server's limit of "
                                    f"{self.max_request_bytes} bytes")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.max_request_bytes:
                raise BodyTooLargeError(f"the request body is over this server's limit of "
                                        f"{self.max_request_bytes} bytes")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            return await self._form(request, bytes(raw))
        if kind not in ("application/json", ""):
            raise InvalidRequestError("content-type", f"must be application/json or multipart/form-data, "
                                                      f"got {kind!r}")
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as err:
            raise InvalidRequestError("body", f"is not JSON: {err}") from None
        if not isinstance(body, dict):
            raise InvalidRequestError("body", "must be a JSON object")
        return body

    @staticmethod
    async def _form(request: Request, raw: bytes) -> dict[str, Any]:
        """Parses the form from the bytes already read (and size-checked), with starlette's parser."""
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.request", "body": b"", "more_body": False}
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=len(_FIELDS) + 1)
        except (HTTPException, ValueError) as err:
            raise InvalidRequestError("body", f"is not a valid form: {getattr(err, 'detail', err)}") from None
        body: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key in body:
                raise InvalidRequestError(key, "is given more than once")
            body[key] = "<file>" if isinstance(value, UploadFile) else value
        return body

    # --- GET /v1/videos, GET /v1/videos/{id} ------------------------------------------------------------------------

    async def list(self, request: Request) -> Response:
        async def work(caller: Caller, _call: AuditedCall) -> Response:
            query = request.query_params
            order = query.get("order", "desc")
            if order not in ("asc", "desc"):
                raise InvalidRequestError("order", f"must be asc or desc, got {order!r}")
            limit = _integer("limit", query.get("limit", "20"))
            if not 1 <= limit <= _MAX_LIST:
                raise InvalidRequestError("limit", f"must be between 1 and {_MAX_LIST}, got {limit}")
            videos = self.store.list(caller.principal)
            if order == "desc":
                videos.reverse()
            after = query.get("after")
            if after is not None:
                ids = [v.id for v in videos]
                if after not in ids:
                    raise InvalidRequestError("after", f"no video {after!r} in this listing")
                videos = videos[ids.index(after) + 1:]
            page = videos[:limit]
            return JSONResponse({"object": "list", "data": [video_object(v, self.model_name) for v in page],
                                 "first_id": page[0].id if page else None, "last_id": page[-1].id if page else None,
                                 "has_more": len(videos) > len(page)})

        return await self._handle(request, "ListVideos", work, audited=False)

    async def retrieve(self, request: Request) -> Response:
        async def work(caller: Caller, _call: AuditedCall) -> Response:
            video = self.store.get(request.path_params["video_id"], caller.principal)
            return JSONResponse(video_object(video, self.model_name),
                                headers={"openai-poll-after-ms": str(_POLL_AFTER_MS)})

        return await self._handle(request, "RetrieveVideo", work, audited=False)

    # --- GET /v1/videos/{id}/content -----------------------------------------------------------------------------

    async def content(self, request: Request) -> Response:
        async def work(caller: Caller, call: AuditedCall) -> Response:
            video_id = request.path_params["video_id"]
            call.record["video_id"] = video_id
            variant = request.query_params.get("variant", "video")
            if variant not in ("video", "c2pa"):
                raise InvalidRequestError("variant", f"must be video (or c2pa with provenance on), got {variant!r}")
            video = self.store.get(video_id, caller.principal)
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

        return await self._handle(request, "DownloadVideo", work)

    # --- DELETE /v1/videos/{id} -----------------------------------------------------------------------------------

    async def delete(self, request: Request) -> Response:
        async def work(caller: Caller, call: AuditedCall) -> Response:
            video_id = request.path_params["video_id"]
            call.record["video_id"] = video_id
            self.store.delete(video_id, caller.principal)
            return JSONResponse({"id": video_id, "object": "video.deleted", "deleted": True})

        return await self._handle(request, "DeleteVideo", work)


# --- the listener ---------------------------------------------------------------------------------------------

def bind_socket(address: HostPort) -> socket.socket:
    """Bound before the server starts, so a taken port fails `wanrt serve` at once (as gRPC's does)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP; without it
    # a keep-alive client waits out its delayed ACK (40 ms) on every response whose headers and body go apart.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # A restarted server may bind while the last one's connections linger in TIME_WAIT (no SO_REUSEPORT: a
    # second live server on the port must still fail, as gRPC's listener does).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address.host, address.port))
    except OSError as err:
        sock.close()
        raise ConfigError("http_listen", f"cannot listen on {address}: {err.strerror}") from None
    return sock


class HttpListener:
    """uvicorn serving the API on its own thread and event loop; gRPC keeps its own thread pool."""

    def __init__(self, server: Any) -> None:
        """``server``: the WanrtServer whose service, jobs, tokens, limits and TLS settings the API shares."""
        config = server.config
        self.store = VideoStore(server.service, keep_seconds=config.http_keep_seconds,
                                keep_bytes=config.http_keep_bytes)
        api = VideosApi(server.service, self.store, tokens=server.tokens, max_request_bytes=server.max_request_bytes,
                        model_name=model_name(server.service.facts.identity), draining=server.service.draining)
        self.api = api  # its token store is replaced on reload (WanrtServer.reload)
        self.address = config.http_address
        self._socket = bind_socket(self.address)
        self.port = int(self._socket.getsockname()[1])
        tls = not config.insecure
        uv_config = uvicorn.Config(
            api.app, http=_CertificateH11Protocol, lifespan="off", log_level="warning", access_log=False,
            ssl_certfile=config.tls_cert if tls else None, ssl_keyfile=config.tls_key if tls else None,
            ssl_ca_certs=config.client_ca,
            # The same rule as gRPC's mutual TLS: no certificate that CA signed, no handshake.
            ssl_cert_reqs=ssl.CERT_REQUIRED if config.client_ca else ssl.CERT_NONE,
            timeout_graceful_shutdown=_STOP_S, server_header=False)
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="wanrt-http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise ConfigError("http_listen", "the HTTP server did not start (see the log)")

    def reload_tls(self, cert: Path, key: Path, ca: Path | None) -> None:
        """New handshakes use the new certificate; a reloaded client CA is added to the trusted ones (OpenSSL
        cannot drop a CA from a live context: removing one takes a restart)."""
        context = getattr(self._server.config, "ssl", None)  # set by uvicorn when the server loads its config
        if context is not None:
            context.load_cert_chain(str(cert), str(key))
            if ca is not None:
                context.load_verify_locations(cafile=str(ca))

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(_STOP_S + 1)
        self._socket.close()
        self.store.close()


def model_name(identity: dict[str, str]) -> str:
    """The name clients give as ``model``: the served folder's name."""
    path = identity.get("model", "wanrt")
    return path.rstrip("/").rsplit("/", 1)[-1] or "wanrt"


def new_video_id() -> str:
    return f"video_{uuid.uuid4().hex}"
