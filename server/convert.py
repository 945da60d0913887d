"""wanrt.v1 messages <-> engine objects, shared by the server and the client so both read the API alike."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from wanrt.engine.defaults import ModelDefaults
from wanrt.engine.request import GenerationRequest
from wanrt.engine.schedules import check_schedule
from wanrt.errors import InvalidRequestError
from wanrt.server.protocol import MP4, RAW_RGB24
from wanrt.server.v1 import wanrt_pb2 as pb

M = TypeVar("M", bound=Message)

FORMAT_NAMES = {pb.VIDEO_FORMAT_UNSPECIFIED: MP4, pb.VIDEO_FORMAT_MP4: MP4, pb.VIDEO_FORMAT_RAW_RGB24: RAW_RGB24}
FORMAT_ENUMS = {MP4: pb.VIDEO_FORMAT_MP4, RAW_RGB24: pb.VIDEO_FORMAT_RAW_RGB24}
MAX_CLIENT_REQUEST_ID = 128
DEFAULTS = GenerationRequest.defaults()  # the engine's defaults apply to unset optional fields


def parse_message(raw: bytes, cls: type[M]) -> M:
    """Parses client bytes strictly: undecodable bytes or unknown fields are the client's error."""
    message = cls()
    try:
        message.ParseFromString(raw)
    except Exception:  # DecodeError, invalid UTF-8, recursion limits: all mean bad input
        raise InvalidRequestError("request", f"is not a valid {cls.DESCRIPTOR.full_name} message") from None
    _reject_unknown_fields(message, "")
    return message


def _reject_unknown_fields(message: Message, prefix: str) -> None:
    unknown = UnknownFieldSet(message)
    if len(unknown):
        numbers = sorted({field.field_number for field in unknown})
        raise InvalidRequestError(prefix.rstrip(".") or "request",
                                  f"unknown field number(s) {numbers} in {message.DESCRIPTOR.full_name}: "
                                  "this server does not implement them")
    for field, value in message.ListFields():
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            values = value if field.is_repeated else [value]
            for item in values:
                _reject_unknown_fields(item, f"{prefix}{field.name}.")


def request_from_proto(message: pb.GenerateRequest, defaults: ModelDefaults | None = None, *,
                       step_cache: float | None = None) -> tuple[GenerationRequest, str]:
    """-> (engine request, video format). Unset fields take the model's ``defaults`` (those of the schedule the
    message names, if another), the step cache the server's ``step_cache``. Range checks are left to
    GenerationRequest.validate."""
    if message.format not in FORMAT_NAMES:
        raise InvalidRequestError("format", f"unknown VideoFormat {message.format}")
    _check_client_request_id(message.client_request_id)
    schedule = message.schedule if message.HasField("schedule") else None
    if schedule is not None:
        check_schedule(schedule)
    base = DEFAULTS if defaults is None else defaults.request(schedule=schedule)
    base = dataclasses.replace(base, step_cache=step_cache)

    def opt(name: str) -> Any:
        return getattr(message, name) if message.HasField(name) else getattr(base, name)

    # guidance_2 unset follows the guidance the caller set; with neither set, the model's pair.
    guidance_2 = opt("guidance_2") if message.HasField("guidance_2") or not message.HasField("guidance") else None
    request = dataclasses.replace(
        base, prompt=message.prompt, negative_prompt=message.negative_prompt, frames=opt("frames"),
        height=opt("height"), width=opt("width"), steps=opt("steps"), guidance=opt("guidance"),
        guidance_2=guidance_2, seed=opt("seed"), fps=opt("fps"), schedule=opt("schedule"),
        shift=opt("shift"), step_cache=opt("step_cache"),
        latents=_latents(message.latents) if message.HasField("latents") else None,
    )
    return request, FORMAT_NAMES[message.format]


def _check_client_request_id(value: str) -> None:
    if len(value) > MAX_CLIENT_REQUEST_ID or not all(" " <= c <= "~" for c in value):
        raise InvalidRequestError("client_request_id",
                                  f"must be at most {MAX_CLIENT_REQUEST_ID} printable ASCII characters")


def _latents(message: pb.Latents) -> np.ndarray:
    shape = tuple(message.shape)
    if len(shape) != 5 or min(shape) < 1:
        raise InvalidRequestError("latents", f"shape must have 5 positive dimensions, got {list(shape)}")
    count = math.prod(shape)
    if count * 4 != len(message.float32_data):
        raise InvalidRequestError("latents", f"float32_data holds {len(message.float32_data)} bytes; shape "
                                             f"{list(shape)} needs {count * 4}")
    return np.frombuffer(message.float32_data, dtype="<f4").reshape(shape)


def request_to_proto(request: GenerationRequest, *, video_format: str = MP4,
                     client_request_id: str = "") -> pb.GenerateRequest:
    message = pb.GenerateRequest(
        prompt=request.prompt, negative_prompt=request.negative_prompt, frames=request.frames,
        height=request.height, width=request.width, steps=request.steps, guidance=request.guidance,
        seed=request.seed, fps=request.fps, format=FORMAT_ENUMS[video_format], client_request_id=client_request_id,
    )
    for name in ("guidance_2", "schedule", "shift", "step_cache"):
        if getattr(request, name) is not None:
            setattr(message, name, getattr(request, name))
    if request.latents is not None:
        latents = np.ascontiguousarray(request.latents, dtype="<f4")
        message.latents.shape.extend(latents.shape)
        message.latents.float32_data = latents.tobytes()
    return message


def prompt_hmac(text: str, key: bytes) -> str:
    """HMAC-SHA256 of a prompt under the server's audit key: equal prompts match across the log, but a guessed
    prompt cannot be confirmed from the log without the key (a plain sha256 could be)."""
    return hmac.new(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def audit_params(request: GenerationRequest, video_format: str, *, keep_text: bool,
                 prompt_key: bytes) -> dict[str, Any]:
    """The request as the audit log records it: prompts as HMACs, their text only if the operator chose to keep
    it (--audit-prompts)."""
    params = {k: v for k, v in dataclasses.asdict(dataclasses.replace(request, latents=None)).items()
              if k not in ("prompt", "negative_prompt", "latents")}
    params["format"] = video_format
    for name in ("prompt", "negative_prompt"):
        text = getattr(request, name)
        params[f"{name}_hmac"] = prompt_hmac(text, prompt_key)
        if keep_text:
            params[name] = text
    if request.latents is not None:
        params["latents_sha256"] = hashlib.sha256(np.ascontiguousarray(request.latents).tobytes()).hexdigest()
        params["latents_shape"] = list(request.latents.shape)
    return params
