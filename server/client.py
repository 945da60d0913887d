"""Python client for wanrt.v1 (the `wanrt client` commands are server/client_cli.py).

    from wanrt.engine.request import GenerationRequest
    from wanrt.server.client import Client

    with Client("gpu-host:50051", ca="ca.pem", token=open("token").read().strip()) as client:
        result = client.generate(GenerationRequest(prompt="a turtle swims", frames=17))
        open("clip.mp4", "wb").write(result.video)

Server errors come back as wanrt's own types: INVALID_ARGUMENT as InvalidRequestError naming the field (as
an in-process generate would raise), anything else as RemoteError carrying the status code name.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from wanrt.engine.pipeline import Progress
from wanrt.engine.request import GenerationRequest
from wanrt.errors import InvalidRequestError, WanrtError
from wanrt.server.config import DEFAULT_LISTEN, ClientConfig
from wanrt.server.convert import request_to_proto
from wanrt.server.errors import IntegrityError, RemoteError
from wanrt.server.protocol import CLIENT_RECEIVE_BYTES, KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS, MP4, RAW_RGB24
from wanrt.server.v1 import wanrt_pb2 as pb
from wanrt.server.v1 import wanrt_pb2_grpc as pb_grpc

_STAGE_NAMES = {pb.STAGE_TEXT: "text", pb.STAGE_DENOISE: "denoise", pb.STAGE_DECODE: "decode"}

CLIENT_OPTIONS = [
    ("grpc.max_receive_message_length", CLIENT_RECEIVE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 0),
]


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    job_id: str
    video: bytes  # empty when the bytes went to a sink
    sha256: str  # checked against the bytes received
    nbytes: int
    format: str  # "mp4" or "raw_rgb24"
    frames: int
    height: int
    width: int
    fps: int
    steps: int
    seed: int
    latents_given: bool
    timings: dict[str, float]
    identity: dict[str, str]
    client_request_id: str
    queue_position: int
    c2pa_manifest: bytes = b""  # the server's C2PA sidecar for these bytes, when it signs provenance
    dit_calls: int = 0  # DiT calls the clip took (a guided step is two) and those the step cache saved
    dit_calls_saved: int = 0
    schedule: str = ""
    # The rest of what made the clip (the MP4's metadata carries the same).
    prompt_sha256: str = ""
    negative_prompt_sha256: str = ""
    guidance: float = 0.0
    guidance_2: float = 0.0
    model: str = ""
    seed_chosen_by_server: bool = False  # the request asked for a random seed (-1); ``seed`` is the one drawn
    warnings: tuple[str, ...] = ()  # what the model did less well than asked (unknown prompt words, odd sizes)


class Client:
    def __init__(self, server: str = DEFAULT_LISTEN, *, insecure: bool = False, ca: Path | None = None,
                 cert: Path | None = None, key: Path | None = None, token: str | None = None,
                 server_name: str | None = None) -> None:
        """TLS unless ``insecure`` (loopback only); ``ca`` None trusts the system roots; cert+key: mutual TLS."""
        ClientConfig(server=server, insecure=insecure, ca=ca, cert=cert, key=key,
                     server_name=server_name).validated()
        options = list(CLIENT_OPTIONS)
        if insecure:
            self._channel = grpc.insecure_channel(server, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=Path(ca).read_bytes() if ca else None,
                private_key=Path(key).read_bytes() if key else None,
                certificate_chain=Path(cert).read_bytes() if cert else None)
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            self._channel = grpc.secure_channel(server, credentials, options=options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._stub = pb_grpc.VideoGenerationStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    @classmethod
    def from_config(cls, config: ClientConfig) -> Client:
        config = config.validated()
        return cls(config.server, insecure=config.insecure, ca=config.ca, cert=config.cert, key=config.key,
                   token=config.read_token(), server_name=config.server_name)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def health(self, service: str = "", *, timeout: float = 5.0) -> str:
        """"SERVING", "NOT_SERVING", ... (grpc.health.v1)."""
        try:
            response = self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout,
                                          metadata=self._metadata)
        except grpc.RpcError as err:
            raise translate_error(err) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def describe(self, *, timeout: float = 30.0) -> pb.ModelInfo:
        try:
            return self._stub.DescribeModel(pb.DescribeModelRequest(), timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise translate_error(err) from None

    def stream(self, request: GenerationRequest | pb.GenerateRequest, *, video_format: str = MP4,
               client_request_id: str = "", timeout: float | None = None) -> Iterator[pb.GenerateResponse]:
        """The raw response stream. Closing the iterator early cancels the call (and the job)."""
        message = request if isinstance(request, pb.GenerateRequest) else request_to_proto(
            request, video_format=video_format, client_request_id=client_request_id)
        call = self._stub.Generate(message, timeout=timeout, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as err:
            raise translate_error(err) from None
        finally:
            call.cancel()  # no-op once the call has ended

    def generate(self, request: GenerationRequest, *, video_format: str = MP4, client_request_id: str = "",
                 timeout: float | None = None, on_progress: Callable[[Progress], None] | None = None,
                 sink: BinaryIO | None = None) -> GenerationResult:
        """Runs one job; the video is returned in ``.video`` or, with ``sink``, written there as it arrives."""
        digest, received, parts = hashlib.sha256(), 0, []
        accepted: pb.Accepted | None = None
        for response in self.stream(request, video_format=video_format, client_request_id=client_request_id,
                                    timeout=timeout):
            kind = response.WhichOneof("event")
            if kind == "accepted":
                accepted = response.accepted
            elif kind == "progress" and on_progress is not None:
                p = response.progress
                on_progress(Progress(_STAGE_NAMES.get(p.stage, "unknown"), p.step, p.total, p.elapsed_s))
            elif kind == "video":
                chunk = response.video
                if chunk.offset != received:
                    raise IntegrityError(f"video chunk at offset {chunk.offset}, expected {received}")
                digest.update(chunk.data)
                received += len(chunk.data)
                if sink is not None:
                    sink.write(chunk.data)
                else:
                    parts.append(chunk.data)
            elif kind == "result":
                return _result(response.result, accepted, digest.hexdigest(), received, b"".join(parts))
        raise IntegrityError("the stream ended without a result")


def _result(r: pb.Result, accepted: pb.Accepted | None, sha256: str, received: int, video: bytes) -> GenerationResult:
    if r.video_sha256 != sha256 or r.video_bytes != received:
        raise IntegrityError(f"received {received} bytes with sha256 {sha256}; the server reported "
                             f"{r.video_bytes} bytes with sha256 {r.video_sha256}")
    fmt = RAW_RGB24 if r.format == pb.VIDEO_FORMAT_RAW_RGB24 else MP4
    t = r.timings
    return GenerationResult(
        job_id=r.job_id, video=video, sha256=sha256, nbytes=received, format=fmt, frames=r.frames,
        height=r.height, width=r.width, fps=r.fps, steps=r.steps, seed=r.seed, latents_given=r.latents_given,
        timings={"queued_s": t.queued_s, "text_s": t.text_s, "denoise_s": t.denoise_s, "decode_s": t.decode_s,
                 "total_s": t.total_s},
        identity=dict(r.identity), client_request_id=r.client_request_id,
        queue_position=accepted.queue_position if accepted else 0, c2pa_manifest=r.c2pa_manifest,
        dit_calls=r.dit_calls, dit_calls_saved=r.dit_calls_saved, schedule=r.schedule,
        prompt_sha256=r.prompt_sha256, negative_prompt_sha256=r.negative_prompt_sha256, guidance=r.guidance,
        guidance_2=r.guidance_2, model=r.model, seed_chosen_by_server=r.seed_chosen_by_server,
        warnings=tuple(r.warnings))


def translate_error(err: grpc.RpcError) -> WanrtError:
    """A failed call as wanrt's typed errors (INVALID_ARGUMENT keeps the field the server named)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field, description = bad_request_field(err)
        if field is not None:
            return InvalidRequestError(field, description or details)
        return InvalidRequestError("request", details)
    if code == grpc.StatusCode.UNAVAILABLE and "WRONG_VERSION_NUMBER" in details:
        # What OpenSSL says when the answer to its hello is no TLS record: the server speaks plaintext.
        return RemoteError(code.name, "the server answered in plaintext, not TLS: if it runs with --insecure (on a "
                                      f"loopback address only), connect with --insecure too ({details})")
    return RemoteError(code.name, details, retryable=_status_detail(err, "RetryInfo") is not None)


def bad_request_field(err: grpc.RpcError) -> tuple[str | None, str | None]:
    """The google.rpc.BadRequest field violation of an INVALID_ARGUMENT status, if the server sent one."""
    bad = _status_detail(err, "BadRequest")
    if bad is not None and bad.field_violations:
        return bad.field_violations[0].field, bad.field_violations[0].description
    return None, None


def _status_detail(err: grpc.RpcError, name: str) -> object | None:
    """The google.rpc detail ``name`` ("BadRequest", "RetryInfo") of a failed call's status, if it came."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    try:
        status = rpc_status.from_call(err)
    except ValueError:
        return None
    kind = getattr(error_details_pb2, name)
    for detail in status.details if status is not None else ():
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            return message
    return None
