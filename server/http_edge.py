"""What the HTTP APIs share: reading a body within the size and depth limits, typed parsing of it (pydantic) into
errors that name the field, who the caller is (the front door's rules, read from HTTP), one handler wrapper that
audits and maps failures through the front door; the Starlette application
and the uvicorn listener are http_listener.py.

The APIs themselves only parse and render: ``http_api.py`` (OpenAI's /v1/videos, /v1/models) and
``dashscope_api.py`` (DashScope's video synthesis and tasks), on one listener (``--http-listen``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from wanrt.errors import InvalidRequestError
from wanrt.server.errors import BodyTooLargeError
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
