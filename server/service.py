"""The wanrt.v1.VideoGeneration servicer: gRPC's transport over the front door (frontdoor.py). It parses messages,
renders responses and maps the front door's outcomes to gRPC status codes, once, in ``grpc_status``.

Handlers take the raw request bytes and parse them themselves: with grpc's own deserializer a message that
does not parse would end as INTERNAL ("Exception deserializing request"), a client error reported as a server
fault. Every call, refused or not, leaves exactly one audit line, written before its status goes out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

import wanrt
from wanrt.engine.request import MAX_PROMPT_BYTES
from wanrt.errors import CancelledError
from wanrt.server.auth import SERVICE, bearer_token, certificate_subject
from wanrt.server.convert import DEFAULTS, FORMAT_ENUMS, parse_message, request_from_proto
from wanrt.server.errors import DrainingError
from wanrt.server.frontdoor import (
    AUDIT_FAILED,
    Ask,
    AuditedCall,
    AuditFailed,
    Caller,
    CallStatus,
    Code,
    FrontDoor,
    rounded_timings,
    status_for,
)
from wanrt.server.jobs import DataEvent, DoneEvent, FailedEvent, Job, ProgressEvent
from wanrt.server.protocol import CHUNK_BYTES, MP4
from wanrt.server.v1 import wanrt_pb2 as pb

_STAGES = {"text": pb.STAGE_TEXT, "denoise": pb.STAGE_DENOISE, "decode": pb.STAGE_DECODE}
_EVENT_POLL_S = 1.0  # how often a handler waiting on its job re-checks that the client is still there


def grpc_status(code: Code) -> grpc.StatusCode:
    """The front door's outcome as a gRPC status code (they share their names)."""
    return grpc.StatusCode[code.name]


def caller_of(context: grpc.ServicerContext, token_id: str | None) -> Caller:
    """The caller of a gRPC call whose token the interceptor checked (``token_id``, None without tokens)."""
    return Caller.identified(api="grpc", peer=context.peer(), certificate_subject=certificate_subject(context),
                             token_id=token_id)


class VideoGenerationService:
    """The handlers take the caller's ``token_id`` from the token interceptor (auth.TokenInterceptor), which
    checked it; without tokens configured there is no interceptor and no token id."""

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
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

    def audit_denied(self, method: str, context: grpc.ServicerContext, code: grpc.StatusCode, message: str,
                     token_id: str | None) -> None:
        """The token interceptor's refusals are audited like every other call."""
        caller = caller_of(context, None)
        refusal = CallStatus(Code[code.name], message)
        # Whether a token came, never any digest of it: a mistyped secret must not become guessable offline.
        caller = Caller(token_id or "unauthenticated", "token" if token_id else "none", caller.certificate_subject,
                        caller.peer, "grpc", refusal,
                        token_presented=bearer_token(context.invocation_metadata()) is not None)
        self.door.refuse(self.door.open_call(method, caller), refusal)

    # --- DescribeModel -----------------------------------------------------------------------------------

    def describe_model(self, raw: bytes, context: grpc.ServicerContext, token_id: str | None = None) -> pb.ModelInfo:
        call = self.door.open_call("DescribeModel", caller_of(context, token_id))
        try:
            parse_message(raw, pb.DescribeModelRequest)
            self.door.check_open()
            call.finish(Code.OK, identity=self.door.facts.identity)
            return self._info
        except Exception as err:
            self._end_with_error(call, context, err)

    def _model_info(self) -> pb.ModelInfo:
        door = self.door
        facts, limits, spec = door.facts, door.reported_limits, door.facts.spec
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
            vae_scale_spatial=spec.vae_scale_spatial, workers=door.jobs.workers, queue_size=door.jobs.queue_size,
            server_version=wanrt.__version__,
        )

    # --- Generate ----------------------------------------------------------------------------------------

    def generate(self, raw: bytes, context: grpc.ServicerContext,
                 token_id: str | None = None) -> Iterator[pb.GenerateResponse]:
        call = self.door.open_call("Generate", caller_of(context, token_id))
        job: Job | None = None
        self._call_opened(+1)
        try:
            message = parse_message(raw, pb.GenerateRequest)
            facts = self.door.facts
            request, video_format = request_from_proto(message, facts.defaults, step_cache=facts.step_cache)
            job = self.door.admit(call, Ask(request, video_format, message.client_request_id))
            # A cancel or deadline must reach a queued job too, which sends nothing we could fail to yield.
            if not context.add_callback(lambda: job.cancel("client")):
                job.cancel("client")  # the call ended before the callback could be registered
            yield pb.GenerateResponse(accepted=pb.Accepted(job_id=job.id, queue_position=job.position))
            yield from self._stream_job(call, context, job, message.client_request_id)
        except Exception as err:
            self._end_with_error(call, context, err)
        finally:
            if job is not None and not call.written:
                job.cancel("client")  # the client went away while we were sending: free the worker
            if not call.written:
                try:
                    call.finish(_end_status(context))
                except AuditFailed:
                    pass
            self._call_opened(-1)

    def _stream_job(self, call: AuditedCall, context: grpc.ServicerContext, job: Job,
                    client_request_id: str) -> Iterator[pb.GenerateResponse]:
        offset = 0
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
                    if self.door.provenance is not None and job.format == MP4:
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
                        call.finish(_end_status(context), status_for(error))
                        return
                _abort_with(context, call.fail(error))

    def _result(self, call: AuditedCall, job: Job, done: DoneEvent, client_request_id: str,
                video: bytes) -> pb.GenerateResponse:
        request, settings = job.request, job.metadata or {}
        timings = {**done.timings, "total_s": time.monotonic() - call.received_at}
        result = pb.GenerateResponse(result=pb.Result(
            job_id=job.id, video_sha256=done.sha256, video_bytes=done.nbytes, format=FORMAT_ENUMS[job.format],
            frames=done.frames, height=request.height, width=request.width, fps=request.fps, steps=request.steps,
            seed=request.seed, latents_given=request.latents is not None, timings=pb.Timings(**timings),
            identity=self.door.facts.identity, client_request_id=client_request_id, dit_calls=done.dit_calls,
            dit_calls_saved=done.dit_calls_saved, schedule=request.schedule or "", shift=request.shift or 0.0,
            step_cache=request.step_cache or 0.0,
            prompt_sha256=settings.get("prompt_sha256", ""),
            negative_prompt_sha256=settings.get("negative_prompt_sha256", ""), guidance=request.guidance,
            guidance_2=request.effective_guidance_2, model=self.door.model_name,
            seed_chosen_by_server=bool(call.record.get("params", {}).get("seed_chosen_by_server")),
            warnings=settings.get("warnings", []),
        ))
        output, manifest = self.door.job_output(job, done, video)
        if manifest is not None:
            result.result.c2pa_manifest = manifest
        # Recorded before the Result leaves: a client never holds a clip the audit log does not know.
        call.finish(Code.OK, timings=rounded_timings(timings), identity=self.door.facts.identity, output=output)
        return result

    # --- ending calls with an error --------------------------------------------------------------------

    def _end_with_error(self, call: AuditedCall, context: grpc.ServicerContext, error: Exception) -> None:
        """The last stop of every handler: whatever escaped becomes a mapped status, never UNKNOWN."""
        if isinstance(error, AuditFailed):
            _abort_with(context, AUDIT_FAILED)
        if call.written:
            raise error  # our own abort (grpc ends calls by raising from context.abort): let it through
        _abort_with(context, call.fail(error))


def _abort_with(context: grpc.ServicerContext, status: CallStatus) -> None:
    """INVALID_ARGUMENT carries a google.rpc.BadRequest naming the field; a full queue a google.rpc.RetryInfo
    (retry later: the request itself is fine), which other RESOURCE_EXHAUSTED refusals lack."""
    details = []
    if status.field is not None:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=status.field, description=status.description or "")]))
    if status.reason == "queue":
        details.append(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)))
    packed = []
    for detail in details:
        packed.append(any_pb2.Any())
        packed[-1].Pack(detail)
    details = packed
    code = grpc_status(status.code)
    context.abort_with_status(rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=status.message, details=details)))


def _end_status(context: grpc.ServicerContext) -> Code:
    """What the client saw when the call ended without our saying so (it went away or timed out)."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return Code.DEADLINE_EXCEEDED
    return Code.CANCELLED
