"""The front door every API calls: who the caller is, the checks a request passes (limits computed once), memory
admission, submitting the job, what a failure means (``status_for``) and the one audit line per call. It knows no
transport: gRPC (service.py), OpenAI's /v1/videos (http_api.py) and DashScope (dashscope_api.py) parse their
envelope into an ``Ask``, call ``admit``, and render what comes back in their own shape; each maps ``Code`` to its
own status once, at its edge.

The way a request travels: transport parses -> FrontDoor.open_call (caller, audit record) -> FrontDoor.admit
(checks, admission, JobManager.submit) -> the job's events -> the transport renders them -> AuditedCall.finish.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from wanrt.engine.admission import Admission
from wanrt.engine.defaults import ModelDefaults
from wanrt.engine.request import MAX_PROMPT_BYTES, GenerationRequest, Limits, clip_settings, model_name
from wanrt.engine.schedules import check_schedule
from wanrt.engine.shapes import frames_for_seconds
from wanrt.engine.spec import ModelSpec
from wanrt.errors import CancelledError, InsufficientMemoryError, InvalidRequestError
from wanrt.server.audit import AuditLog
from wanrt.server.auth import TokenStore
from wanrt.server.errors import (
    BodyTooLargeError,
    DrainingError,
    QueueFullError,
    VideoNotFoundError,
    VideoNotReadyError,
)
from wanrt.server.jobs import DoneEvent, Job, JobManager
from wanrt.server.metrics import Metrics
from wanrt.server.protocol import MP4
from wanrt.server.request_log import log_request

log = logging.getLogger("wanrt.server")

MAX_CLIENT_REQUEST_ID = 128
_MAX_FIELD_CHARS = 64  # a refused field name or message is recorded and sent back at most this long (or
_MAX_MESSAGE_CHARS = 400  # _MAX_MESSAGE_CHARS): a 1 MB unknown key must not become a 1 MB audit line


class Code(enum.Enum):
    """A call's outcome, named as gRPC names status codes (the audit log and metrics record these names); each
    transport maps it to its own status once (service.py: grpc.StatusCode, the HTTP APIs: their status tables)."""

    OK = "OK"
    CANCELLED = "CANCELLED"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL = "INTERNAL"
    UNAUTHENTICATED = "UNAUTHENTICATED"


@dataclasses.dataclass(frozen=True)
class CallStatus:
    code: Code
    message: str  # for INVALID_ARGUMENT "<field>: <description>"
    field: str | None = None
    description: str | None = None  # INVALID_ARGUMENT: what is wrong with the field
    # Why RESOURCE_EXHAUSTED: "queue" (full, retry later), "memory" (the request will never fit), "body" (over the
    # request size limit). Transports whose statuses tell these apart (HTTP: 429, 400, 413) read it.
    reason: str | None = None


def status_for(error: BaseException, job_id: str | None = None) -> CallStatus:
    """The one mapping from errors to outcomes. Client errors never become INTERNAL."""
    if isinstance(error, InvalidRequestError):
        field, message = clipped(error.field, _MAX_FIELD_CHARS), clipped(error.message, _MAX_MESSAGE_CHARS)
        return CallStatus(Code.INVALID_ARGUMENT, f"{field}: {message}", field, message)
    if isinstance(error, QueueFullError):
        return CallStatus(Code.RESOURCE_EXHAUSTED, str(error), reason="queue")
    if isinstance(error, BodyTooLargeError):
        return CallStatus(Code.RESOURCE_EXHAUSTED, str(error), reason="body")
    if isinstance(error, InsufficientMemoryError):
        return CallStatus(Code.RESOURCE_EXHAUSTED, str(error), reason="memory")
    if isinstance(error, MemoryError):
        return CallStatus(Code.RESOURCE_EXHAUSTED, "the server ran out of memory for this job", reason="memory")
    if isinstance(error, DrainingError):
        return CallStatus(Code.UNAVAILABLE, str(error))
    if isinstance(error, CancelledError):
        return CallStatus(Code.CANCELLED, str(error))
    if isinstance(error, VideoNotFoundError):
        return CallStatus(Code.NOT_FOUND, clipped(str(error), _MAX_MESSAGE_CHARS))
    if isinstance(error, VideoNotReadyError):
        return CallStatus(Code.FAILED_PRECONDITION, str(error))
    # A server fault: the message names the job for support, never internals (they go to the server log).
    return CallStatus(Code.INTERNAL, f"internal error{f' in job {job_id}' if job_id else ''}; "
                                     "the server log has the details")


def clipped(text: str, most: int) -> str:
    """``text`` as it may be recorded and sent back: at most ``most`` characters, and valid Unicode (an
    unpaired surrogate a client sent is escaped, never echoed)."""
    text = text if len(text) <= most else f"{text[:most]}... ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


# --- who is calling --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Caller:
    """Who made a call, the same on every API: the token's id, else the verified client certificate's subject,
    else anonymous. ``refusal`` is set when the credentials do not allow the call (UNAUTHENTICATED,
    PERMISSION_DENIED)."""

    principal: str
    kind: str  # "token", "certificate", "none"
    certificate_subject: str | None
    peer: str
    api: str  # "grpc", "openai", "dashscope"
    refusal: CallStatus | None = None
    token_presented: bool | None = None  # recorded for refusals only: whether a token came, never a digest

    @classmethod
    def identified(cls, *, api: str, peer: str, certificate_subject: str | None, token_id: str | None) -> Caller:
        """A caller whose token (if any) was already checked (gRPC's interceptor)."""
        if token_id is not None:
            return cls(token_id, "token", certificate_subject, peer, api)
        if certificate_subject is not None:
            return cls(certificate_subject, "certificate", certificate_subject, peer, api)
        return cls("anonymous", "none", certificate_subject, peer, api)

    def audit_fields(self) -> dict[str, Any]:
        fields = {"principal": self.principal, "principal_kind": self.kind,
                  "certificate_subject": self.certificate_subject, "peer": self.peer, "api": self.api}
        if self.token_presented is not None:
            fields["token_presented"] = self.token_presented
        return fields


def authenticate(tokens: TokenStore | None, method: str, *, api: str, peer: str, certificate_subject: str | None,
                 authorization: str | None) -> Caller:
    """Checks an HTTP call's bearer token with the same store and rules as gRPC's interceptor."""
    if tokens is None:
        return Caller.identified(api=api, peer=peer, certificate_subject=certificate_subject, token_id=None)
    result = tokens.check([("authorization", authorization)] if authorization else [], method)
    if result.code is not None:
        refusal = CallStatus(Code[result.code.name], result.message)
        return Caller(result.token_id or "unauthenticated", "token" if result.token_id else "none",
                      certificate_subject, peer, api, refusal, token_presented=bool(authorization))
    return Caller.identified(api=api, peer=peer, certificate_subject=certificate_subject, token_id=result.token_id)


# --- one call's record ------------------------------------------------------------------------------------------

class AuditFailed(Exception):
    """The audit line could not be written: the call must fail (and the server stops serving)."""


class AuditedCall:
    """One call's audit record and metrics, written exactly once, whichever API took the call."""

    def __init__(self, door: FrontDoor, method: str, caller: Caller, call_id: str | None = None) -> None:
        self.door = door
        self.method = method
        self.caller = caller
        self.received_at = time.monotonic()
        self.id = call_id or uuid.uuid4().hex  # the request id: audit line, job id, server log
        self.record: dict[str, Any] = {"request_id": self.id, "method": method, **caller.audit_fields()}
        self.written = False

    def finish(self, code: Code, error: CallStatus | None = None, **fields: Any) -> None:
        """Writes the line; raises AuditFailed when it could not be written (the call must then fail)."""
        if self.written:
            return
        self.written = True
        self.record.update(fields)
        self.record["status"] = code.name
        if error is not None:
            self.record["error"] = {"field": error.field, "message": error.message}
        total = time.monotonic() - self.received_at
        self.record.setdefault("timings", {})["total_s"] = round(total, 6)
        door = self.door
        door.metrics.requests.labels(self.method, code.name).inc()
        if self.method == "Generate":
            door.metrics.request_seconds.labels(code.name).observe(total)
        try:
            door.audit.write(self.record)
        except (OSError, ValueError) as err:
            log.critical("audit log write failed (%s); refusing to serve", err)
            door.on_audit_failure()
            raise AuditFailed() from err
        log_request(self.record)

    def fail(self, error: BaseException) -> CallStatus:
        """Ends the call with ``error``'s outcome (logged when it is a server fault) and returns that outcome;
        INTERNAL when the audit line cannot be written."""
        status = status_for(error, self.id) if not isinstance(error, AuditFailed) else AUDIT_FAILED
        if status.code == Code.INTERNAL and not isinstance(error, AuditFailed):
            log.error("%s %s failed", self.method, self.id, exc_info=error)
        try:
            self.finish(status.code, status)
        except AuditFailed:
            return AUDIT_FAILED
        return status


AUDIT_FAILED = CallStatus(Code.INTERNAL, "the audit log could not be written; the call was not completed")


# --- what a transport asks for -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Ask:
    """A generation request as a transport parsed it. ``request.seed`` may be RANDOM_SEED (-1): the front door
    chooses one and reports it back."""

    request: GenerationRequest
    video_format: str = MP4
    client_request_id: str = ""
    client_request_id_field: str = "client_request_id"  # what the transport calls it (HTTP: a header)
    # Engine field -> the name the client gave it, for refusals ({"height": "size"}; "frames" -> "seconds"
    # when the client gave a duration).
    field_names: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Duration:
    """A clip's length as an HTTP client gives it (seconds, as a number or text), made a frame count at the
    request's frame rate; ``field``/``fps_field`` name the two in refusals."""

    field: str
    seconds: float | str
    fps_field: str


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the front door knows about the loaded model."""

    spec: ModelSpec
    limits: Limits
    identity: dict[str, str]
    max_request_bytes: int
    admission: Admission | None = None  # None: requests are not checked against memory (see engine/admission.py)
    defaults: ModelDefaults | None = None  # what unset request fields take (None: wanrt's preview defaults)
    step_cache: float | None = None  # the server's step cache threshold for requests that do not set one
    # What the model will quietly do less well for a request (VideoPipeline.warnings): returned on every API.
    warnings: Callable[[GenerationRequest], list[str]] | None = None


class FrontDoor:
    """Shared by every API of one server."""

    def __init__(self, jobs: JobManager, facts: ModelFacts, audit: AuditLog, metrics: Metrics, *,
                 prompt_key: bytes, tokens: TokenStore | None = None, keep_prompt_text: bool = False,
                 draining: Callable[[], bool] = lambda: False,
                 on_audit_failure: Callable[[], None] = lambda: None, provenance: object | None = None) -> None:
        self.jobs = jobs
        self.facts = facts
        self.audit = audit
        self.metrics = metrics
        self.tokens = tokens
        self.keep_prompt_text = keep_prompt_text
        self.prompt_key = prompt_key  # prompts are audited as HMACs under it (audit_params below)
        self.draining = draining  # set on SIGUSR1 (stop admitting) and SIGTERM: no new job is admitted
        self.on_audit_failure = on_audit_failure
        # A wanrt.trust.provenance.ProvenanceKey (the operator's or this installation's, its ``origin`` says which):
        # MP4 results carry a signed C2PA manifest, a sidecar on gRPC, embedded in HTTP downloads. None: off.
        self.provenance = provenance
        self.limits = facts.limits  # requests are checked against these (the model's, tightened by --max-*)
        # ... and the limits clients are told, lowered to what the memory budget can hold at all: a request within
        # the model's limits but over the budget is refused by admission, RESOURCE_EXHAUSTED naming what fits.
        self.reported_limits = facts.limits if facts.admission is None else facts.admission.lowered(facts.limits)
        self.model_name = model_name(facts.identity)
        self.started_at = time.time()

    # --- calls ---------------------------------------------------------------------------------------------

    def open_call(self, method: str, caller: Caller, call_id: str | None = None) -> AuditedCall:
        return AuditedCall(self, method, caller, call_id)

    def refuse(self, call: AuditedCall, status: CallStatus) -> CallStatus:
        """Records a refusal decided at the edge (credentials); INTERNAL if the record cannot be written."""
        try:
            call.finish(status.code, status)
        except AuditFailed:
            return AUDIT_FAILED
        return status

    def use_tokens(self, tokens: TokenStore) -> None:
        """A reloaded token file (SIGHUP): calls that start from now on, on every API, are checked against it. One
        reference swap: a call sees the old store or the new one, never a mix; admitted calls are not checked again."""
        self.tokens = tokens

    def check_open(self) -> None:
        if self.draining():
            raise DrainingError("the server is shutting down and accepts no new jobs")

    # --- a generation -------------------------------------------------------------------------------------------

    def request_from(self, values: dict[str, Any], *, duration: Duration | None = None,
                     names: dict[str, str] | None = None) -> GenerationRequest:
        """The request a transport's given fields ask for: the rest from the model's defaults (those of the
        schedule named), the step cache from the server's setting (``serve --step-cache``)."""
        try:
            schedule = values.get("schedule")
            if schedule is not None:
                check_schedule(schedule)
            facts = self.facts
            base = GenerationRequest.defaults() if facts.defaults is None else facts.defaults.request(
                schedule=schedule)
            values = dict(values)
            if duration is not None:
                values["frames"] = frames_from_seconds(duration.field, duration.seconds,
                                                       values.get("fps", base.fps), duration.fps_field)
            if "guidance" in values and "guidance_2" not in values:
                values["guidance_2"] = None  # follows the guidance given, not the model's pair
            return dataclasses.replace(base, **{"step_cache": facts.step_cache, **values})
        except InvalidRequestError as err:
            names = names or {}
            if err.field in names:
                raise InvalidRequestError(names[err.field], err.message) from None
            raise

    def admit(self, call: AuditedCall, ask: Ask) -> Job:
        """Every check a job passes, then the queue: raises the typed error of the first check that fails. The
        audit record gets the request's parameters first, so a refusal is recorded with what was asked."""
        check_client_request_id(ask.client_request_id, call.record, ask.client_request_id_field)
        request = ask.request.with_seed_chosen()
        record = call.record
        record["params"] = audit_params(request, ask.video_format, keep_text=self.keep_prompt_text,
                                        prompt_key=self.prompt_key)
        if request.seed != ask.request.seed:
            record["params"]["seed_chosen_by_server"] = True
        try:
            self._check(request, ask.video_format)
        except InvalidRequestError as err:
            raise renamed(err, ask.field_names, request, self.limits) from None
        admission = self.facts.admission
        if admission is not None:  # before the job is queued: a refusal costs nothing and is audited
            estimate = admission.estimator.estimate(request)
            record["memory"] = {"estimate_bytes": estimate.total, "budget_bytes": admission.budget.bytes}
            admission.check(request)
        self.check_open()
        return self.jobs.submit(request, ask.video_format, received_at=call.received_at, job_id=call.id,
                                metadata=self.settings(request))

    def _check(self, request: GenerationRequest, video_format: str) -> None:
        request.validate(self.limits)
        # Only an operator's own key makes provenance a promise about every video; under the installation's
        # default key raw frames are still served, audited as carrying none.
        if getattr(self.provenance, "origin", None) == "operator" and video_format != MP4:
            raise InvalidRequestError("format", "this server marks every video with C2PA provenance, which raw "
                                                "frames cannot carry: ask for MP4")
        if request.latents is not None:
            spec = self.facts.spec
            expected = request.latent_shape(spec.latent_channels, spec.vae_scale_temporal, spec.vae_scale_spatial)
            if tuple(request.latents.shape) != expected:
                raise InvalidRequestError("latents", f"shape {list(request.latents.shape)} does not match "
                                                     f"frames/height/width: expected {list(expected)}")

    def settings(self, request: GenerationRequest) -> dict[str, Any]:
        """What made a video (the seed the server chose included), returned with it and written into its MP4."""
        warnings = self.facts.warnings(request) if self.facts.warnings is not None else []
        return clip_settings(request, self.facts.identity, warnings)

    def job_output(self, job: Job, done: DoneEvent, video: bytes) -> tuple[dict[str, Any], bytes | None]:
        """A finished job's audit ``output`` and, for an MP4 when provenance is on, its signed C2PA sidecar
        manifest (gRPC streams the video as made, so the manifest travels beside it)."""
        output = self._output(job, done, done.sha256, done.nbytes)
        if self.provenance is None or job.format != MP4:
            output["provenance"] = "off" if self.provenance is None else "none (raw frames)"
            return output, None
        from wanrt import __version__
        from wanrt.trust.provenance import manifest_definition, sidecar

        definition = manifest_definition(self.facts.identity, job.id, wanrt_version=__version__)
        manifest = sidecar(video, self.provenance, definition)
        output.update(provenance=self.provenance.origin, c2pa="sidecar",
                      c2pa_manifest_sha256=hashlib.sha256(manifest).hexdigest())
        return output, manifest

    def embedded_output(self, job: Job, done: DoneEvent, video: bytes) -> tuple[dict[str, Any], bytes, bytes | None]:
        """For a complete MP4 kept for download (OpenAI's /v1/videos, DashScope's video URL): the audit
        ``output``, the file with its signed manifest embedded, and the manifest store; the video unchanged when
        provenance is off. The audit's ``sha256`` is the file's as downloaded, ``unsigned_sha256`` the video's as
        the pipeline made it (what gRPC returns for the same request)."""
        if self.provenance is None or job.format != MP4:
            return self.job_output(job, done, video)[0], video, None
        from wanrt import __version__
        from wanrt.trust.provenance import embed_bytes, manifest_definition

        definition = manifest_definition(self.facts.identity, job.id, wanrt_version=__version__,
                                         title=f"{job.id}.mp4")
        signed, manifest = embed_bytes(video, self.provenance, definition)
        output = self._output(job, done, hashlib.sha256(signed).hexdigest(), len(signed))
        output.update(unsigned_sha256=done.sha256, provenance=self.provenance.origin, c2pa="embedded",
                      c2pa_manifest_sha256=hashlib.sha256(manifest).hexdigest())
        return output, signed, manifest

    @staticmethod
    def _output(job: Job, done: DoneEvent, sha256: str, nbytes: int) -> dict[str, Any]:
        return {"sha256": sha256, "bytes": nbytes, "format": job.format, "frames": done.frames,
                "dit_calls": done.dit_calls, "dit_calls_saved": done.dit_calls_saved}

    def model_card(self) -> dict[str, Any]:
        """The served model as the listing APIs describe it (limits as reported, and the model's own defaults: what
        a request's unset fields take, as DescribeModel reports them)."""
        limits, spec = self.reported_limits, self.facts.spec
        defaults = self.facts.defaults.request() if self.facts.defaults else GenerationRequest.defaults()
        return {
            "id": self.model_name, "identity": dict(self.facts.identity), "experts": list(spec.experts),
            "limits": {**dataclasses.asdict(limits), "max_prompt_bytes": MAX_PROMPT_BYTES,
                       "max_request_bytes": self.facts.max_request_bytes},
            "defaults": {name: getattr(defaults, name) for name in
                         ("frames", "height", "width", "steps", "guidance", "guidance_2", "shift", "schedule",
                          "fps")},
        }


def frames_from_seconds(field: str, seconds: float | str, fps: int, fps_field: str) -> int:
    """A duration (a number or text) as the nearest valid frame count; absurd ones are refused here, before the
    arithmetic can overflow (1e308 s)."""
    try:
        length = float(seconds)
    except ValueError:
        raise InvalidRequestError(field, f"must be a number, got {seconds!r}") from None
    if not math.isfinite(length) or length <= 0:
        raise InvalidRequestError(field, f"must be a finite number greater than 0, got {seconds!r}")
    if not 1 <= fps <= 1000:
        raise InvalidRequestError(fps_field, f"must be between 1 and 1000 frames per second, got {fps}")
    if length > 3600:
        raise InvalidRequestError(field, f"{seconds} s is longer than any clip this server makes")
    return frames_for_seconds(length, fps)


def renamed(error: InvalidRequestError, names: dict[str, str], request: GenerationRequest,
            limits: Limits) -> InvalidRequestError:
    """A check that failed on an engine field, reported under the name the client gave it."""
    given = names.get(error.field, error.field)
    if given == error.field:
        return error
    if error.field == "frames":  # the client gave a duration: say what it became and what fits
        longest = (limits.max_frames - 1) / request.fps if request.fps > 0 else 0
        return InvalidRequestError(given, f"gives {request.frames} frames at {request.fps} fps, and frames "
                                          f"{error.message} (at most {longest:.3g} s at {request.fps} fps)")
    return InvalidRequestError(given, f"{error.field} {error.message}")


def check_client_request_id(value: str, record: dict[str, Any], field: str = "client_request_id") -> None:
    """Records the client's own id for a call (``client_request_id``), as gRPC and HTTP both take it: at most
    128 printable ASCII characters. A refused one is recorded by length and digest, never in full."""
    ok = len(value) <= MAX_CLIENT_REQUEST_ID and all(" " <= c <= "~" for c in value)
    record["client_request_id"] = (value or None) if ok else None
    if not ok:
        record["client_request_id_refused"] = {
            "length": len(value), "sha256": hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()}
        raise InvalidRequestError(field, f"must be at most {MAX_CLIENT_REQUEST_ID} printable ASCII characters")


def rounded_timings(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in timings.items()}


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
