"""`wanrt client generate|health|describe`: the command line over server/client.py's Client."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wanrt.engine.cli import add_video_arguments, request_from_args, unset_video_fields
from wanrt.engine.pipeline import Progress
from wanrt.server.client import Client
from wanrt.server.config import DEFAULT_LISTEN, ClientConfig
from wanrt.server.convert import request_to_proto
from wanrt.server.protocol import MP4, RAW_RGB24


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
                                              file=sys.stderr, disable=not sys.stderr.isatty())  # none in logs
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
    for warning in result.warnings:
        print(f"wanrt: warning: {warning}", file=sys.stderr)
    print(f"job {result.job_id}: {result.frames} frames, seed {result.seed}, sha256 {result.sha256}, "
          f"{result.timings['total_s']:.2f} s on the server", file=sys.stderr)
    print(out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Adds `wanrt client` and its commands; returns them, for commands kept elsewhere (server/batch.py)."""
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
    return commands
