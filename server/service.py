"""The wanrt.v1.VideoGeneration servicer. Errors become gRPC status codes here, in ``status_for``, and only here.

Handlers take the raw request bytes and parse them themselves: with grpc's own deserializer a message that
does not parse would end as INTERNAL ("Exception deserializing request"), a client error reported as a server
fault. Every call, refused or not, leaves exactly one audit line, written before its status goes out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import wanrt
from wanrt.engine.admission import Admission
from wanrt.engine.defaults import ModelDefaults
from wanrt.engine.request import MAX_PROMPT_BYTES, GenerationRequest, Limits
from wanrt.engine.spec import ModelSpec
from wanrt.errors import CancelledError, InsufficientMemoryError, InvalidRequestError
from wanrt.server.audit import AuditLog
from wanrt.server.auth import SERVICE, bearer_token, certificate_subject
from wanrt.server.convert import DEFAULTS, FORMAT_ENUMS, audit_params, parse_message, request_from_proto
from wanrt.server.errors import DrainingError, QueueFullError
from wanrt.server.jobs import DataEvent, DoneEvent, FailedEvent, Job, JobManager, ProgressEvent
from wanrt.server.metrics import Metrics
from wanrt.server.protocol import CHUNK_BYTES, MP4
from wanrt.server.v1 import wanrt_pb2 as pb

log = logging.getLogger("wanrt.server")

_STAGES = {"text": pb.STAGE_TEXT, "denoise": pb.STAGE_DENOISE, "decode": pb.STAGE_DECODE}
_EVENT_POLL_S = 1.0  # how often a handler waiting on its job re-checks that the client is still there


@dataclasses.dataclass(frozen=True)
class CallStatus:
    code: grpc.StatusCode
    message: str  # the status message; for INVALID_ARGUMENT "<field>: <description>"
    field: str | None = None
    description: str | None = None  # INVALID_ARGUMENT: what is wrong with the field (BadRequest)


def status_for(error: BaseException, job_id: str | None = None) -> CallStatus:
    """The one mapping from errors to status codes. Client errors never become UNKNOWN or INTERNAL."""
    if isinstance(error, InvalidRequestError):
        return CallStatus(grpc.StatusCode.INVALID_ARGUMENT, f"{error.field}: {error.message}", error.field,
                          error.message)
    if isinstance(error, QueueFullError):
        return CallStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
    if isinstance(error, InsufficientMemoryError):
        return CallStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
    if isinstance(error, MemoryError):
        return CallStatus(grpc.StatusCode.RESOURCE_EXHAUSTED, "the server ran out of memory for this job")
    if isinstance(error, DrainingError):
        return CallStatus(grpc.StatusCode.UNAVAILABLE, str(error))
    if isinstance(error, CancelledError):
        return CallStatus(grpc.StatusCode.CANCELLED, str(error))
    # A server fault: the message names the job for support, never internals (they go to the server log).
    return CallStatus(grpc.StatusCode.INTERNAL, f"internal error{f' in job {job_id}' if job_id else ''}; "
                                                "the server log has the details")


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the servicer reports about the loaded model."""

    spec: ModelSpec
    limits: Limits
    identity: dict[str, str]
    max_request_bytes: int
    admission: Admission | None = None  # None: requests are not checked against memory (see engine/admission.py)
    defaults: ModelDefaults | None = None  # what unset request fields take (None: wanrt's preview defaults)
    step_cache: float | None = None  # the server's step cache threshold for requests that do not set one


def caller(context: grpc.ServicerContext, token_id: str | None) -> dict[str, Any]:
    """Who is calling, for the audit line: the token's id (checked by the interceptor), else the verified
    client certificate's subject, else anonymous."""
    subject = certificate_subject(context)
    if token_id is not None:
        principal, kind = token_id, "token"
    elif subject is not None:
        principal, kind = subject, "certificate"
    else:
        principal, kind = "anonymous", "none"
    return {"principal": principal, "principal_kind": kind, "certificate_subject": subject, "peer": context.peer()}


class AuditedCall:
    """One call's audit record and metrics, written exactly once, whichever API (gRPC, HTTP) took the call."""

    def __init__(self, service: VideoGenerationService, method: str, who: dict[str, Any],
                 call_id: str | None = None) -> None:
        self.service = service
        self.method = method
        self.received_at = time.monotonic()
        self.id = call_id or uuid.uuid4().hex  # the request id: audit line, job id, server log
        self.record: dict[str, Any] = {"request_id": self.id, "method": method, **who}
        self.written = False

    def finish(self, code: grpc.StatusCode, error: CallStatus | None = None, **fields: Any) -> None:
        if self.written:
            return
        self.written = True
        self.record.update(fields)
        self.record["status"] = code.name
        if error is not None:
            self.record["error"] = {"field": error.field, "message": error.message}
        total = time.monotonic() - self.received_at
        self.record.setdefault("timings", {})["total_s"] = round(total, 6)
        service = self.service
        service.metrics.requests.labels(self.method, code.name).inc()
        if self.method == "Generate":
            service.metrics.request_seconds.labels(code.name).observe(total)
        try:
            service.audit.write(self.record)
        except (OSError, ValueError) as err:
            log.critical("audit log write failed (%s); refusing to serve", err)
            service.on_audit_failure()
            raise AuditFailed() from err


class _Call(AuditedCall):
    """A gRPC call's record; the caller is read from the call's context."""

    def __init__(self, service: VideoGenerationService, method: str, context: grpc.ServicerContext,
                 token_id: str | None = None) -> None:
        super().__init__(service, method, caller(context, token_id))
        self.context = context

    def end_status(self) -> grpc.StatusCode:
        """What the client saw when the call ended without our saying so (it went away or timed out)."""
        remaining = self.context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED


class AuditFailed(Exception):
    """The audit line could not be written: the call must fail (and the server stops serving)."""


class VideoGenerationService:
    """The handlers take the caller's ``token_id`` from the token interceptor (auth.TokenInterceptor), which
    checked it; without tokens configured there is no interceptor and no token id."""

    def __init__(self, jobs: JobManager, facts: ModelFacts, audit: AuditLog, metrics: Metrics, *,
                 keep_prompt_text: bool = False, prompt_key: bytes,
                 draining: Callable[[], bool] = lambda: False,
                 on_audit_failure: Callable[[], None] = lambda: None, provenance: object | None = None) -> None:
        self.jobs = jobs
        self.facts = facts
        self.audit = audit
        self.metrics = metrics
        self.keep_prompt_text = keep_prompt_text
        self.prompt_key = prompt_key  # prompts are audited as HMACs under it (server/convert.py)
        self.draining = draining
        self.on_audit_failure = on_audit_failure
        self.provenance = provenance  # a wanrt.trust.provenance.ProvenanceKey: results carry a C2PA sidecar
        # Limits lowered to what the memory budget can hold at all; requests are validated against the model's
        # limits and larger ones refused by admission, so the refusal is RESOURCE_EXHAUSTED naming what fits.
        self.reported_limits = facts.limits if facts.admission is None else facts.admission.lowered(facts.limits)
        self._info = self._model_info()
        self._open_calls = 0  # Generate handlers still running (drain waits for their last messages)
        self._calls_cond = threading.Condition()

    def wait_calls_done(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._calls_cond:
            while self._open_calls:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._calls_cond.wait(remaining)
            return True

    def _call_opened(self, delta: int) -> None:
        with self._calls_cond:
            self._open_calls += delta
            self._calls_cond.notify_all()

    def handler(self) -> grpc.GenericRpcHandler:
        # request_deserializer=None: handlers get raw bytes and parse them themselves (see module docstring).
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Generate": grpc.unary_stream_rpc_method_handler(
                self.generate, response_serializer=pb.GenerateResponse.SerializeToString),
            "DescribeModel": grpc.unary_unary_rpc_method_handler(
                self.describe_model, response_serializer=pb.ModelInfo.SerializeToString),
        })

    # --- who is calling --------------------------------------------------------------------------------

    def audit_denied(self, method: str, context: grpc.ServicerContext, code: grpc.StatusCode, message: str,
                     token_id: str | None) -> None:
        """The token interceptor's refusals are audited like every other call."""
        call = _Call(self, method, context)
        # Whether a token came, never any digest of it: a mistyped secret must not become guessable offline.
        call.record.update(principal=token_id or "unauthenticated", principal_kind="token" if token_id else "none",
                           token_presented=bearer_token(context.invocation_metadata()) is not None)
        try:
            call.finish(code, CallStatus(code, message))
        except AuditFailed:
            pass  # the call is refused anyway

    # --- DescribeModel -----------------------------------------------------------------------------------

    def describe_model(self, raw: bytes, context: grpc.ServicerContext, token_id: str | None = None) -> pb.ModelInfo:
        call = _Call(self, "DescribeModel", context, token_id)
        try:
            parse_message(raw, pb.DescribeModelRequest)
            if self.draining():
                raise DrainingError("the server is shutting down")
            call.finish(grpc.StatusCode.OK, identity=self.facts.identity)
            return self._info
        except Exception as err:
            self._end_with_error(call, err)

    def _model_info(self) -> pb.ModelInfo:
        facts, limits, spec = self.facts, self.reported_limits, self.facts.spec
        base = DEFAULTS if facts.defaults is None else facts.defaults.request()
        return pb.ModelInfo(
            identity=facts.identity,
            limits=pb.Limits(max_frames=limits.max_frames, frame_multiple=limits.frame_multiple,
                             min_size=limits.min_size, max_height=limits.max_height, max_width=limits.max_width,
                             size_multiple=limits.size_multiple, max_steps=limits.max_steps,
                             max_guidance=limits.max_guidance, max_fps=limits.max_fps,
                             max_prompt_bytes=MAX_PROMPT_BYTES, max_request_bytes=facts.max_request_bytes),
            defaults=pb.Defaults(frames=base.frames, height=base.height, width=base.width, steps=base.steps,
                                 guidance=base.guidance, seed=base.seed, fps=base.fps,
                                 guidance_2=base.effective_guidance_2, schedule=base.schedule or "",
                                 shift=base.shift or 0.0),
            experts=list(spec.experts), boundary_ratio=spec.boundary_ratio or 0.0,
            latent_channels=spec.latent_channels, vae_scale_temporal=spec.vae_scale_temporal,
            vae_scale_spatial=spec.vae_scale_spatial, workers=self.jobs.workers, queue_size=self.jobs.queue_size,
            server_version=wanrt.__version__,
        )

    # --- Generate ----------------------------------------------------------------------------------------

    def generate(self, raw: bytes, context: grpc.ServicerContext,
                 token_id: str | None = None) -> Iterator[pb.GenerateResponse]:
        call = _Call(self, "Generate", context, token_id)
        job: Job | None = None
        self._call_opened(+1)
        try:
            request, video_format, client_request_id = self._parse_generate(raw, call)
            job = self.jobs.submit(request, video_format, received_at=call.received_at, job_id=call.id)
            # A cancel or deadline must reach a queued job too, which sends nothing we could fail to yield.
            if not context.add_callback(lambda: job.cancel("client")):
                job.cancel("client")  # the call ended before the callback could be registered
            yield pb.GenerateResponse(accepted=pb.Accepted(job_id=job.id, queue_position=job.position))
            yield from self._stream_job(call, job, client_request_id)
        except Exception as err:
            self._end_with_error(call, err)
        finally:
            if job is not None and not call.written:
                job.cancel("client")  # the client went away while we were sending: free the worker
            if not call.written:
                try:
                    call.finish(call.end_status())
                except AuditFailed:
                    pass
            self._call_opened(-1)

    def _parse_generate(self, raw: bytes, call: _Call) -> tuple[GenerationRequest, str, str]:
        message = parse_message(raw, pb.GenerateRequest)
        call.record["client_request_id"] = message.client_request_id or None
        request, video_format = request_from_proto(message, self.facts.defaults, step_cache=self.facts.step_cache)
        self.check_request(request, video_format, call.record)
        return request, video_format, message.client_request_id

    def check_request(self, request: GenerationRequest, video_format: str, record: dict[str, Any]) -> None:
        """Every check a job passes before it is queued, for either API; ``record`` (the audit line) gets the
        request's parameters first, so that a refusal is recorded with what was asked."""
        record["params"] = audit_params(request, video_format, keep_text=self.keep_prompt_text,
                                        prompt_key=self.prompt_key)
        request.validate(self.facts.limits)
        if getattr(self.provenance, "origin", None) == "operator" and video_format != MP4:
            raise InvalidRequestError("format", "this server marks every video with C2PA provenance, which raw "
                                                "frames cannot carry: ask for MP4")
        if request.latents is not None:
            spec = self.facts.spec
            expected = request.latent_shape(spec.latent_channels, spec.vae_scale_temporal, spec.vae_scale_spatial)
            if tuple(request.latents.shape) != expected:
                raise InvalidRequestError("latents", f"shape {list(request.latents.shape)} does not match "
                                                     f"frames/height/width: expected {list(expected)}")
        admission = self.facts.admission
        if admission is not None:  # before the job is queued: a refusal costs nothing and is audited
            estimate = admission.estimator.estimate(request)
            record["memory"] = {"estimate_bytes": estimate.total, "budget_bytes": admission.budget.bytes}
            admission.check(request)

    def _stream_job(self, call: _Call, job: Job, client_request_id: str) -> Iterator[pb.GenerateResponse]:
        context, offset = call.context, 0
        video: list[bytes] = []  # kept only to sign the C2PA sidecar over exactly what was streamed
        while True:
            event = job.next_event(timeout=_EVENT_POLL_S)
            if event is None:
                if not context.is_active():
                    job.cancel("client")
                    return  # finally in generate() records the status the client saw
                continue
            if isinstance(event, ProgressEvent):
                p = event.progress
                yield pb.GenerateResponse(progress=pb.Progress(stage=_STAGES.get(p.stage, pb.STAGE_UNSPECIFIED),
                                                               step=p.step, total=p.total, elapsed_s=p.elapsed_s))
            elif isinstance(event, DataEvent):
                for start in range(0, len(event.data), CHUNK_BYTES):
                    piece = event.data[start:start + CHUNK_BYTES]
                    yield pb.GenerateResponse(video=pb.VideoChunk(offset=offset, data=piece))
                    if self.provenance is not None:
                        video.append(piece)
                    offset += len(piece)
            elif isinstance(event, DoneEvent):
                yield self._result(call, job, event, client_request_id, b"".join(video))
                return
            elif isinstance(event, FailedEvent):
                call.record["timings"] = rounded_timings(event.timings)
                error = event.error
                if isinstance(error, CancelledError):
                    if job.cancel_reason == "shutdown":
                        error = DrainingError("the server shut down before the job finished")
                    elif not context.is_active():
                        call.finish(call.end_status(), status_for(error))
                        return
                self._abort(call, status_for(error, job.id))

    def _result(self, call: _Call, job: Job, done: DoneEvent, client_request_id: str,
                video: bytes) -> pb.GenerateResponse:
        request = job.request
        timings = {**done.timings, "total_s": time.monotonic() - call.received_at}
        result = pb.GenerateResponse(result=pb.Result(
            job_id=job.id, video_sha256=done.sha256, video_bytes=done.nbytes, format=FORMAT_ENUMS[job.format],
            frames=done.frames, height=request.height, width=request.width, fps=request.fps, steps=request.steps,
            seed=request.seed, latents_given=request.latents is not None, timings=pb.Timings(**timings),
            identity=self.facts.identity, client_request_id=client_request_id, dit_calls=done.dit_calls,
            dit_calls_saved=done.dit_calls_saved, schedule=request.schedule or "", shift=request.shift or 0.0,
            step_cache=request.step_cache or 0.0,
        ))
        output, manifest = self.job_output(job, done, video)
        if manifest is not None:
            result.result.c2pa_manifest = manifest
        # Recorded before the Result leaves: a client never holds a clip the audit log does not know.
        call.finish(grpc.StatusCode.OK, timings=rounded_timings(timings), identity=self.facts.identity, output=output)
        return result

    def job_output(self, job: Job, done: DoneEvent, video: bytes) -> tuple[dict[str, Any], bytes | None]:
        """A finished job's audit ``output`` and, when provenance is on, its signed C2PA sidecar manifest."""
        output = {"sha256": done.sha256, "bytes": done.nbytes, "format": job.format, "frames": done.frames,
                  "dit_calls": done.dit_calls, "dit_calls_saved": done.dit_calls_saved}
        if self.provenance is None or job.format != MP4:
            output["provenance"] = "off" if self.provenance is None else "none (raw frames)"
            return output, None
        manifest = self._provenance(video, job.id)
        output.update(provenance=self.provenance.origin, c2pa="sidecar",
                      c2pa_manifest_sha256=hashlib.sha256(manifest).hexdigest())
        return output, manifest

    def embedded_output(self, job: Job, done: DoneEvent, video: bytes) -> tuple[dict[str, Any], bytes, bytes | None]:
        """For a complete MP4 (the HTTP API's downloads): the audit ``output``, the file with its signed manifest
        embedded, and the manifest store; the video unchanged when provenance is off."""
        if self.provenance is None:
            return self.job_output(job, done, video)[0], video, None
        from wanrt import __version__
        from wanrt.trust.provenance import embed_bytes, manifest_definition

        definition = manifest_definition(self.facts.identity, job.id, wanrt_version=__version__,
                                         title=f"{job.id}.mp4")
        signed, manifest = embed_bytes(video, self.provenance, definition)
        return {"sha256": hashlib.sha256(signed).hexdigest(), "bytes": len(signed), "format": job.format,
                "frames": done.frames, "dit_calls": done.dit_calls, "dit_calls_saved": done.dit_calls_saved,
                "unsigned_sha256": done.sha256, "provenance": self.provenance.origin,
                "c2pa": "embedded", "c2pa_manifest_sha256": hashlib.sha256(manifest).hexdigest()}, signed, manifest

    def _provenance(self, video: bytes, request_id: str) -> bytes:
        from wanrt import __version__
        from wanrt.trust.provenance import manifest_definition, sidecar

        definition = manifest_definition(self.facts.identity, request_id, wanrt_version=__version__)
        return sidecar(video, self.provenance, definition)

    # --- ending calls with an error --------------------------------------------------------------------

    def _end_with_error(self, call: _Call, error: Exception) -> None:
        """The last stop of every handler: whatever escaped becomes a mapped status, never UNKNOWN."""
        if isinstance(error, AuditFailed):
            self._abort_internal(call.context)
        if call.written:
            raise error  # our own abort (grpc ends calls by raising from context.abort): let it through
        status = status_for(error, call.id)
        if status.code == grpc.StatusCode.INTERNAL:
            log.error("%s %s failed", call.method, call.id, exc_info=error)
        self._abort(call, status)

    def _abort(self, call: _Call, status: CallStatus) -> None:
        """Audits, then ends the call with ``status`` (INVALID_ARGUMENT carries a google.rpc.BadRequest)."""
        try:
            call.finish(status.code, status)
        except AuditFailed:
            self._abort_internal(call.context)
        details = []
        if status.field is not None:
            bad = error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=status.field, description=status.description or "")])
            packed = any_pb2.Any()
            packed.Pack(bad)
            details.append(packed)
        call.context.abort_with_status(rpc_status.to_status(
            status_pb2.Status(code=status.code.value[0], message=status.message, details=details)))

    @staticmethod
    def _abort_internal(context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.INTERNAL, "the audit log could not be written; the call was not completed")


def rounded_timings(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 6) for k, v in timings.items()}
