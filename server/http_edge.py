"""What the HTTP APIs share: reading a body within the size and depth limits, typed parsing of it (pydantic) into
errors that name the field, who the caller is (the front door's rules, read from HTTP), one handler wrapper that
audits and maps failures through the front door, the Starlette application and the uvicorn listener.

The APIs themselves only parse and render: ``http_api.py`` (OpenAI's /v1/videos, /v1/models) and
``dashscope_api.py`` (DashScope's video synthesis and tasks), on one listener (``--http-listen``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from wanrt.errors import InvalidRequestError
from wanrt.server.config import HostPort
from wanrt.server.errors import BodyTooLargeError, ConfigError
from wanrt.server.frontdoor import (
    AUDIT_FAILED,
    AuditedCall,
    AuditFailed,
    Caller,
    CallStatus,
    Code,
    FrontDoor,
    authenticate,
)
from wanrt.server.http_videos import VideoStore

log = logging.getLogger("wanrt.server.http")

# Token permissions: a token that may call Generate may create, watch, fetch and cancel its own videos; one that may
# call DescribeModel may list the models.
TOKEN_METHOD = "Generate"
_STOP_S = 5.0
_MAX_FORM_FIELDS = 32

M = TypeVar("M", bound=BaseModel)


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a refused field that carried an unpaired surrogate is
    rendered as its escape, never crashes the encoder (starlette's JSONResponse encodes to UTF-8)."""

    def render(self, content: Any) -> bytes:  # noqa: ANN401
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


# --- the body -------------------------------------------------------------------------------------------------

async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLargeError(f"the request body ({declared} bytes) is over this server's limit of "
                                f"{max_bytes} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise BodyTooLargeError(f"the request body is over this server's limit of {max_bytes} bytes")
    return bytes(raw)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object, or InvalidRequestError naming ``body``: not JSON, not UTF-8, nested past Python's
    recursion limit (json raises RecursionError: a client's body, never a server fault), numbers past int
    parsing's digit limit."""
    try:
        body = json.loads(raw or b"{}")
    except RecursionError:
        raise InvalidRequestError("body", "is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidRequestError("body", f"is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("body", "must be a JSON object")
    return body


async def read_form(request: Request, raw: bytes) -> dict[str, str]:
    """A multipart or urlencoded form, parsed from the bytes already read (and size-checked) by starlette's
    parser; a file where a field belongs is refused naming the field."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=_MAX_FORM_FIELDS)
    except (HTTPException, ValueError) as err:
        raise InvalidRequestError("body", f"is not a valid form: {getattr(err, 'detail', err)}") from None
    body: dict[str, str] = {}
    for key, value in form.multi_items():
        if key in body:
            raise InvalidRequestError(key, "is given more than once")
        if isinstance(value, UploadFile):
            raise InvalidRequestError(key, "must be a field, not a file")
        body[key] = value
    return body


def parse_model(model: type[M], data: dict[str, Any], *, strict: bool,
                unknown: Callable[[str], str] | None = None) -> M:
    """``data`` as ``model``, or InvalidRequestError naming the first bad field (dotted, ``parameters.seed``).
    ``strict``: JSON's types as they are (``true`` is no integer); forms (all text) parse leniently.
    ``unknown(field)`` says why a field the model lacks is refused."""
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as err:
        first = err.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        kind = first["type"]
        if kind == "extra_forbidden":
            message = unknown(field) if unknown else "is not a field this server accepts"
        elif kind == "missing":
            message = "is required"
        elif kind == "finite_number":
            message = "must be a finite number"
        else:
            message = first["msg"][0].lower() + first["msg"][1:]
        raise InvalidRequestError(field, message) from None


# --- who is calling --------------------------------------------------------------------------------------------

def identify(door: FrontDoor, request: Request, api: str, token_method: str = TOKEN_METHOD) -> Caller:
    """The same principal as on gRPC: token id (checked here, with the same store, for ``token_method``), else
    the verified client certificate's subject (in the same RFC 4514 form), else anonymous."""
    subject = request.scope.get("extensions", {}).get("tls", {}).get("client_cert_name")
    host, port = request.client or ("unknown", 0)
    peer = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
    return authenticate(door.tokens, token_method, api=api, peer=peer, certificate_subject=subject,
                        authorization=request.headers.get("authorization"))


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


# --- one API over the front door -------------------------------------------------------------------------------

Work = Callable[[Caller, AuditedCall], Awaitable[Response]]


class HttpApi:
    """Base of the HTTP APIs: ``handle`` runs a handler with its caller and audit record, and renders whatever
    it raises in the API's own error shape (``error_response``), once."""

    api = "http"

    def __init__(self, door: FrontDoor, store: VideoStore, *, max_request_bytes: int) -> None:
        self.door = door
        self.store = store
        self.max_request_bytes = max_request_bytes

    def error_response(self, status: CallStatus, call_id: str | None = None, *,
                       http_status: int | None = None) -> Response:
        """``status`` in this API's error shape (``http_status`` overrides its own table)."""
        raise NotImplementedError

    async def handle(self, request: Request, method: str, work: Work, *, audited: bool = True,
                     call_id: str | None = None, token_method: str = TOKEN_METHOD) -> Response:
        """Authenticates (the token must allow ``token_method``), runs ``work``, maps what it raises; refusals and
        errors are always audited, successes when ``audited`` (polls and listings are not: a client polling every
        second would flood the log)."""
        caller = identify(self.door, request, self.api, token_method)
        call = self.door.open_call(method, caller, call_id)
        try:
            if caller.refusal is not None:
                status = await run_in_threadpool(self.door.refuse, call, caller.refusal)
                return self.error_response(status, call.id)
            response = await work(caller, call)
            if audited and not call.written:
                await run_in_threadpool(call.finish, Code.OK)
            return response
        except AuditFailed:
            return self.error_response(AUDIT_FAILED, call.id)
        except Exception as err:
            if call.written:  # failed after its line was written (rendering): a server fault, logged
                log.error("%s %s failed after it was recorded", method, call.id, exc_info=err)
                return self.error_response(CallStatus(Code.INTERNAL, "internal error"), call.id)
            return self.error_response(await run_in_threadpool(call.fail, err), call.id)

    async def read_json(self, request: Request) -> dict[str, Any]:
        raw = await read_body(request, self.max_request_bytes)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind not in ("application/json", ""):
            raise InvalidRequestError("content-type", f"must be application/json, got {kind!r}")
        return parse_json_object(raw)


# --- the application and its listener ---------------------------------------------------------------------------

def build_app(door: FrontDoor, store: VideoStore, *, max_request_bytes: int, url_secret: bytes) -> Starlette:
    from wanrt.server.dashscope_api import DashScopeApi
    from wanrt.server.http_api import OpenAiApi

    openai_api = OpenAiApi(door, store, max_request_bytes=max_request_bytes)
    dashscope = DashScopeApi(door, store, max_request_bytes=max_request_bytes, url_secret=url_secret)

    async def not_found(request: Request, exc: Exception) -> Response:
        """Starlette's own refusals (unknown path, wrong method) in the shape of the API the path belongs to."""
        assert isinstance(exc, HTTPException)
        code = Code.NOT_FOUND if exc.status_code == 404 else Code.INVALID_ARGUMENT
        api = dashscope if request.url.path.startswith("/api/") else openai_api
        return api.error_response(CallStatus(code, str(exc.detail)), None, http_status=exc.status_code)

    return Starlette(routes=openai_api.routes() + dashscope.routes(), exception_handlers={HTTPException: not_found})


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
    """uvicorn serving the HTTP APIs on its own thread and event loop; gRPC keeps its own thread pool."""

    def __init__(self, server: Any) -> None:  # noqa: ANN401
        """``server``: the WanrtServer whose front door, limits and TLS settings the APIs share."""
        import secrets

        config = server.config
        self.store = VideoStore(server.door, keep_seconds=config.http_keep_seconds, keep_bytes=config.http_keep_bytes)
        # Signs DashScope's video URLs; a restart forgets the videos, so a fresh secret loses nothing.
        app = build_app(server.door, self.store, max_request_bytes=server.max_request_bytes,
                        url_secret=secrets.token_bytes(32))
        self.address = config.http_address
        self._socket = bind_socket(self.address)
        self.port = int(self._socket.getsockname()[1])
        tls = not config.insecure
        uv_config = uvicorn.Config(
            app, http=_CertificateH11Protocol, lifespan="off", log_level="warning", access_log=False,
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
        cannot drop a CA from a live context: removing one takes a restart). Tokens need nothing here: both APIs
        read the front door's store at each call."""
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
