"""Python client for wanrt.v1 and the `wanrt client` commands.

    from wanrt.engine.request import GenerationRequest
    from wanrt.server.client import Client

    with Client("gpu-host:50051", ca="ca.pem", token=open("token").read().strip()) as client:
        result = client.generate(GenerationRequest(prompt="a turtle swims", frames=17))
        open("clip.mp4", "wb").write(result.video)

Server errors come back as wanrt's own types: INVALID_ARGUMENT as InvalidRequestError naming the field (as
an in-process generate would raise), anything else as RemoteError carrying the status code name.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
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
        dit_calls=r.dit_calls, dit_calls_saved=r.dit_calls_saved, schedule=r.schedule)


def translate_error(err: grpc.RpcError) -> WanrtError:
    """A failed call as wanrt's typed errors (INVALID_ARGUMENT keeps the field the server named)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field, description = bad_request_field(err)
        if field is not None:
            return InvalidRequestError(field, description or details)
        return InvalidRequestError("request", details)
    return RemoteError(code.name, details)


def bad_request_field(err: grpc.RpcError) -> tuple[str | None, str | None]:
    """The google.rpc.BadRequest field violation of an INVALID_ARGUMENT status, if the server sent one."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    try:
        status = rpc_status.from_call(err)
    except ValueError:
        return None, None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                return bad.field_violations[0].field, bad.field_violations[0].description
    return None, None


# --- `wanrt client ...` ------------------------------------------------------------------------------------

def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=DEFAULT_LISTEN,
                        help="HOST:PORT or unix:/PATH (default %(default)s)")
    parser.add_argument("--insecure", action="store_true", help="plaintext, to a loopback address only")
    parser.add_argument("--ca", type=Path, help="CA certificate(s) to verify the server (default: system roots)")
    parser.add_argument("--cert", type=Path, help="client certificate (mutual TLS)")
    parser.add_argument("--key", type=Path, help="client private key (mutual TLS)")
    parser.add_argument("--server-name", help="TLS name to verify instead of the host in --server")
    parser.add_argument("--token-file", type=Path, help="file holding the bearer token")


def connect(args: argparse.Namespace) -> Client:
    return Client.from_config(ClientConfig(server=args.server, insecure=args.insecure, ca=args.ca, cert=args.cert,
                                           key=args.key, token_file=args.token_file,
                                           server_name=args.server_name))


def cmd_health(args: argparse.Namespace) -> int:
    with connect(args) as client:
        status = client.health(args.service, timeout=args.timeout)
    print(status)
    return 0 if status == "SERVING" else 1


def cmd_describe(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with connect(args) as client:
        info = client.describe(timeout=args.timeout)
    print(json_format.MessageToJson(info, always_print_fields_with_no_presence=True))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wanrt.engine.cli import request_from_args, unset_video_fields

    request = request_from_args(args)
    out: Path = args.out
    raw = out.suffix.lower() == ".npy"  # raw frames over the wire: the .npy holds exactly what was generated
    bars: dict[str, tqdm] = {}

    def show(progress: Progress) -> None:
        if args.quiet:
            return
        bar = bars.get(progress.stage)
        if bar is None:
            bar = bars[progress.stage] = tqdm(total=progress.total, desc=progress.stage, unit="step",
                                              file=sys.stderr)
        bar.update(progress.step - bar.n)

    message = request_to_proto(request, video_format=RAW_RGB24 if raw else MP4,
                               client_request_id=args.client_request_id)
    for name in unset_video_fields(args):  # the server fills them with its model's defaults
        message.ClearField(name)
    partial = out.with_name(f".{out.name}.partial")  # a failed call leaves no partial clip behind
    try:
        with connect(args) as client, open(partial, "wb") as sink:
            result = client.generate(message, video_format=RAW_RGB24 if raw else MP4, timeout=args.timeout,
                                     client_request_id=args.client_request_id, on_progress=show,
                                     sink=None if raw else sink)
            if raw:
                import numpy as np

                frames = np.frombuffer(result.video, np.uint8).reshape(result.frames, result.height,
                                                                      result.width, 3)
                np.save(sink, frames)
        partial.replace(out)
        if result.c2pa_manifest:  # C2PA's sidecar naming: the asset's name with .c2pa
            out.with_name(out.name + ".c2pa").write_bytes(result.c2pa_manifest)
    finally:
        for bar in bars.values():
            bar.close()
        partial.unlink(missing_ok=True)
    print(f"job {result.job_id}: {result.frames} frames, sha256 {result.sha256}, "
          f"{result.timings['total_s']:.2f} s on the server", file=sys.stderr)
    print(out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from wanrt.engine.cli import add_video_arguments

    parser = subparsers.add_parser("client", help="talk to a `wanrt serve` server")
    commands = parser.add_subparsers(dest="client_command", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="generate a clip on the server (same options as generate)")
    add_connection_arguments(generate)
    add_video_arguments(generate)
    generate.add_argument("--timeout", type=float, default=None, help="deadline in seconds (cancels the job)")
    generate.add_argument("--client-request-id", default="", help="your id for this request (audit log)")
    generate.add_argument("--quiet", action="store_true", help="no progress bars")
    generate.set_defaults(handler=cmd_generate)

    health = commands.add_parser("health", help="exit 0 when the server is SERVING (grpc.health.v1)")
    add_connection_arguments(health)
    health.add_argument("--service", default="", help="service to check (default: the whole server)")
    health.add_argument("--timeout", type=float, default=5.0)
    health.set_defaults(handler=cmd_health)

    describe = commands.add_parser("describe", help="print the loaded model and its limits as JSON")
    add_connection_arguments(describe)
    describe.add_argument("--timeout", type=float, default=30.0)
    describe.set_defaults(handler=cmd_describe)
