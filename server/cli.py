"""`wanrt serve`, `wanrt client ...` and `wanrt token ...`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

from wanrt.engine.cli import add_memory_budget_argument, add_placement_arguments
from wanrt.engine.loader import BACKENDS
from wanrt.server.config import CPU_MAXIMA, DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN, ServerConfig
from wanrt.trust.cli import add_provenance_arguments, add_trust_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    from wanrt.server import client

    _register_serve(subparsers)
    client.register(subparsers)
    _register_token(subparsers)


def _register_serve(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve wanrt.v1 over gRPC (TLS unless --insecure on loopback)")
    parser.add_argument("--model", type=Path, default=os.environ.get("WANRT_MODEL"),
                        help="artifact folder (onnxruntime) or diffusers Wan folder (torch); default $WANRT_MODEL, "
                             "else the packaged demo model (onnxruntime)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    add_trust_argument(parser)
    parser.add_argument("--require-selinux-type", metavar="TYPE", default=os.environ.get("WANRT_REQUIRE_SELINUX_TYPE"),
                        help="refuse to start unless this process runs under this SELinux type, enforced "
                             "(e.g. wanrt_container_t; default $WANRT_REQUIRE_SELINUX_TYPE)")
    parser.add_argument("--device", dest="devices", action="append", default=None,
                        help="accelerator to run a worker on, repeatable (e.g. --device cuda:0 --device cuda:1); "
                             "default cpu. A GPU that cannot be used stops the server (exit 2); only auto falls "
                             "back to the CPU, logged")
    parser.add_argument("--cfg-parallel", action="store_true",
                        help="pair the devices: each pair runs the cond and uncond halves of a guided step at once")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="gRPC HOST:PORT (default %(default)s)")
    parser.add_argument("--metrics-listen", default=DEFAULT_METRICS_LISTEN,
                        help="Prometheus HOST:PORT (default %(default)s)")
    parser.add_argument("--http-listen", metavar="HOST:PORT",
                        help="also serve the OpenAI-compatible /v1/videos HTTP API here (same TLS, tokens, queue)")
    parser.add_argument("--http-keep-seconds", type=float, default=3600.0,
                        help="how long a finished video stays fetchable over HTTP (default %(default)s)")
    parser.add_argument("--http-keep-bytes", type=int, default=1 << 30,
                        help="most bytes of finished videos held for HTTP clients; oldest go first (default 1 GiB)")
    parser.add_argument("--health-listen", default=None,
                        help="plaintext HOST:PORT serving grpc.health.v1 only (e.g. for kubelet's gRPC probes)")
    parser.add_argument("--health-socket", type=Path, default=None,
                        help="unix socket serving grpc.health.v1 only (the image's HEALTHCHECK dials it)")
    parser.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    parser.add_argument("--client-ca", type=Path, help="CA that signs client certificates: turns on mutual TLS")
    parser.add_argument("--tokens", type=Path, help="bearer-token file (JSON lines of hashes; see `wanrt token`)")
    parser.add_argument("--insecure", action="store_true", help="plaintext; only allowed on a loopback address")
    parser.add_argument("--audit-log", type=Path, required=True, help="JSON-lines audit log, appended")
    parser.add_argument("--audit-prompts", action="store_true",
                        help="keep prompt text in the audit log (default: SHA-256 only)")
    add_provenance_arguments(parser)
    parser.add_argument("--audit-signing-key", type=Path, help="key (`wanrt keygen`) that signs audit checkpoints")
    parser.add_argument("--audit-checkpoint-every", type=int, default=0, metavar="N",
                        help="with --audit-signing-key: a signed checkpoint after every N records")
    parser.add_argument("--queue-size", type=int, default=8, help="jobs waiting beyond the running ones")
    parser.add_argument("--grace-seconds", type=float, default=30.0,
                        help="on SIGTERM, how long jobs may take to finish before they are cancelled")
    for name, what in (("frames", "frames"), ("height", "height"), ("width", "width"), ("steps", "steps")):
        parser.add_argument(f"--max-{name}", type=int,
                            help=f"lower the model's largest {what} (CPU-only default {CPU_MAXIMA[f'max_{name}']})")
    parser.add_argument("--max-request-bytes", type=int, help="largest request message (default: sized for "
                                                               "latents at the largest allowed size)")
    add_memory_budget_argument(parser)
    add_placement_arguments(parser)
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from wanrt.engine.budget import parse_size
    from wanrt.engine.loader import load_pipelines, memory_plans, usable_device
    from wanrt.server.app import WanrtServer
    from wanrt.trust.cli import check_trusted

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # An unusable `--device cuda` stops the server here, one line and exit 2; `auto` is resolved (and logged).
    devices = tuple(usable_device(d, args.backend) for d in args.devices or ("cpu",))
    config = ServerConfig(
        model=args.model or _packaged_model(args.backend), backend=args.backend,
        devices=devices, cfg_parallel=args.cfg_parallel, listen=args.listen,
        metrics_listen=args.metrics_listen,
        tls_cert=args.tls_cert, tls_key=args.tls_key, client_ca=args.client_ca, tokens=args.tokens,
        insecure=args.insecure, audit_log=args.audit_log, audit_prompts=args.audit_prompts,
        audit_checkpoint_every=args.audit_checkpoint_every, audit_signing_key=args.audit_signing_key,
        c2pa_cert=args.c2pa_cert or _env_path("WANRT_C2PA_CERT"), c2pa_key=args.c2pa_key or _env_path("WANRT_C2PA_KEY"),
        queue_size=args.queue_size, grace_seconds=args.grace_seconds, max_frames=args.max_frames,
        max_height=args.max_height, max_width=args.max_width, max_steps=args.max_steps,
        max_request_bytes=args.max_request_bytes, health_listen=args.health_listen,
        health_socket=args.health_socket, http_listen=args.http_listen,
        http_keep_seconds=args.http_keep_seconds, http_keep_bytes=args.http_keep_bytes,
        memory_budget=None if args.memory_budget is None else parse_size("memory_budget", args.memory_budget),
    ).validated()  # before the (slow) model load: a wrong flag fails in a second, not after minutes

    stop = threading.Event()
    signals = []

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    # SIGHUP (log rotation) reopens the audit log once the server exists, on its own thread: the handler runs on
    # the main thread, which must not wait for the audit lock a worker may hold.
    reopen: list = []
    signal.signal(signal.SIGHUP, lambda *_: [threading.Thread(target=f).start() for f in reopen])
    if args.require_selinux_type:
        from wanrt.trust.confinement import require_selinux_type

        require_selinux_type(args.require_selinux_type)
    check_trusted(config.model, args.trust)
    pipelines = load_pipelines(config.model, config.backend, config.devices, cfg_parallel=config.cfg_parallel,
                               residency=args.residency, text_encoder=args.text_encoder)
    for plan in memory_plans(pipelines):  # the plan the server starts with: what build-engines printed, measured
        logging.getLogger("wanrt.server").info("%s", plan)
    if stop.is_set():  # asked to stop while the model was loading: nothing is in flight
        return 0
    server = WanrtServer(config, pipelines)
    reopen.append(server.audit.reopen)
    server.start()
    # One machine-readable line on stdout: scripts and tests learn the bound ports (--listen ...:0).
    limits = server.service.reported_limits
    print(json.dumps({"event": "serving", "grpc": server.address, "grpc_port": server.port,
                      "metrics_port": server.metrics_port, "health_port": server.health_port,
                      "http_port": server.http.port if server.http else None,
                      "memory_budget": server.memory_budget,
                      "limits": {"max_frames": limits.max_frames, "max_height": limits.max_height,
                                 "max_width": limits.max_width, "max_steps": limits.max_steps}}), flush=True)
    while not stop.wait(0.5):
        pass
    # A second signal during the drain cancels the remaining jobs at their next step instead of waiting.
    for s in previous:
        signal.signal(s, lambda *_: server.jobs.cancel_all("shutdown"))
    logging.getLogger("wanrt.server").info("signal %d: draining", signals[0])
    server.drain()
    print(json.dumps({"event": "stopped"}), flush=True)
    return 0


def _env_path(name: str) -> Path | None:
    return Path(os.environ[name]) if os.environ.get(name) else None


def _packaged_model(backend: str) -> Path | None:
    """The demo artifact shipped in wanrt.reef, if this install has it (onnxruntime only)."""
    if backend != "onnxruntime":
        return None
    try:
        from wanrt.reef import default_model_dir
    except ImportError:
        return None
    path = default_model_dir()
    return path if path.is_dir() else None


def _register_token(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("token", help="make or hash bearer tokens for `wanrt serve --tokens`")
    commands = parser.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    new = commands.add_parser("new", help="print a new random token (once) and its tokens-file line")
    new.add_argument("--id", required=True, help="the principal name the audit log records")
    new.add_argument("--methods", nargs="+", default=None, help="allowed methods (default: all)")
    new.add_argument("--append", type=Path, help="append the line to this tokens file (created 0600)")
    new.set_defaults(handler=_token_new)
    hash_ = commands.add_parser("hash", help="SHA-256 of a token read from stdin (what the tokens file holds)")
    hash_.set_defaults(handler=_token_hash)


def _token_new(args: argparse.Namespace) -> int:
    from wanrt.server.auth import _entry, hash_token

    token = secrets.token_urlsafe(32)  # 256 bits: guessing is hopeless, so a plain SHA-256 is enough
    record = {"id": args.id, "sha256": hash_token(token)}
    if args.methods:
        record["methods"] = args.methods
    _entry("--id/--methods", record)  # the same checks the server applies when it loads the file
    line = json.dumps(record)
    if args.append:
        fd = os.open(args.append, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    else:
        print(line, file=sys.stderr)
    print(token)
    return 0


def _token_hash(_args: argparse.Namespace) -> int:
    from wanrt.server.auth import hash_token

    token = sys.stdin.read().strip()
    if not token:
        print("wanrt: error: no token on stdin", file=sys.stderr)
        return 2
    print(hash_token(token))
    return 0
