"""`wanrt serve`, `wanrt client ...` and `wanrt token ...`."""

from __future__ import annotations

import argparse
import dataclasses
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
from wanrt.server import request_log
from wanrt.server.config import CPU_MAXIMA, DEFAULT_LISTEN, DEFAULT_METRICS_LISTEN, ServerConfig
from wanrt.trust.cli import add_provenance_arguments, add_trust_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    from wanrt.server import batch, client_cli

    _register_serve(subparsers)
    batch.register(client_cli.register(subparsers), client_cli.add_connection_arguments)
    _register_token(subparsers)
    _register_stop_admission(subparsers)


def _register_serve(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve wanrt.v1 over gRPC (TLS unless --insecure on loopback)")
    parser.add_argument("--model", type=Path, default=os.environ.get("WANRT_MODEL"),
                        help="artifact folder (onnxruntime) or diffusers Wan folder (torch); default $WANRT_MODEL, "
                             "else the packaged demo model (onnxruntime)")
    parser.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    add_trust_argument(parser)
    parser.add_argument("--require-selinux-type", metavar="TYPE", default=os.environ.get("WANRT_REQUIRE_SELINUX_TYPE"),
                        help="refuse to start unless this process runs under this SELinux type and a canary the "
                             "policy must deny is denied (e.g. wanrt_container_t; default "
                             "$WANRT_REQUIRE_SELINUX_TYPE; see `wanrt confinement`)")
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
                        help="keep prompt text in the audit log (default: an HMAC only, see --audit-prompt-key)")
    parser.add_argument("--audit-prompt-key", type=Path, default=None, metavar="FILE",
                        help="secret (hex, 0600) prompts are audited under as HMAC-SHA256 (default: this "
                             "installation's, made on first use in $WANRT_STATE_DIR)")
    add_provenance_arguments(parser)
    parser.add_argument("--audit-signing-key", type=Path, help="key (`wanrt keygen`) that signs audit checkpoints")
    parser.add_argument("--audit-checkpoint-every", type=int, default=0, metavar="N",
                        help="with --audit-signing-key: a signed checkpoint after every N records (also at start, "
                             "rotation and shutdown)")
    parser.add_argument("--audit-head-sink", metavar="FILE|syslog[:ADDRESS]", default=None,
                        help="with --audit-signing-key: also write every signed head here (a file on another "
                             "mount, or syslog/journald), for `wanrt audit verify --heads`")
    parser.add_argument("--queue-size", type=int, default=8, help="jobs waiting beyond the running ones")
    parser.add_argument("--grace-seconds", type=float, default=30.0,
                        help="on SIGTERM, how long jobs may take to finish before they are cancelled")
    parser.add_argument("--stop-timeout", type=float, default=_env_float("WANRT_STOP_TIMEOUT"), metavar="S",
                        help="the engine kills the server S s after it starts stopping it (Kubernetes "
                             "terminationGracePeriodSeconds; default $WANRT_STOP_TIMEOUT): replaces --grace-seconds, "
                             "jobs get what is left of S, counted from SIGUSR1 or SIGTERM, less 20 s")
    for name, what in (("frames", "frames"), ("height", "height"), ("width", "width"), ("steps", "steps")):
        parser.add_argument(f"--max-{name}", type=int,
                            help=f"lower the model's largest {what} (CPU-only default {CPU_MAXIMA[f'max_{name}']})")
    parser.add_argument("--max-request-bytes", type=int, help="largest request message (default: sized for "
                                                               "latents at the largest allowed size)")
    add_memory_budget_argument(parser)
    add_placement_arguments(parser)
    parser.add_argument("--step-cache", type=float, default=None, metavar="THRESHOLD",
                        help="adaptive step cache for requests that do not set step_cache: reuse an expert's last "
                             "call while the estimated change stays under THRESHOLD (0-1; default off). Check a "
                             "threshold with `wanrt eval --against full` first")
    parser.add_argument("--log-format", choices=request_log.LOG_FORMATS, default="text",
                        help="stderr log lines, one per finished request among them (id, caller, size, steps, "
                             "status, seconds): text, or one JSON object per line for a log shipper "
                             "(default %(default)s)")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from wanrt.engine.budget import parse_size
    from wanrt.engine.loader import load_pipelines, memory_plans, usable_device
    from wanrt.server.app import WanrtServer
    from wanrt.trust.cli import trusted_check

    request_log.configure(args.log_format)
    # An unusable `--device cuda` stops the server here, one line and exit 2; `auto` is resolved (and logged).
    devices = tuple(usable_device(d, args.backend) for d in args.devices or ("cpu",))
    config = ServerConfig(
        model=args.model or _packaged_model(args.backend), backend=args.backend,
        devices=devices, cfg_parallel=args.cfg_parallel, listen=args.listen,
        metrics_listen=args.metrics_listen,
        tls_cert=args.tls_cert, tls_key=args.tls_key, client_ca=args.client_ca, tokens=args.tokens,
        insecure=args.insecure, audit_log=args.audit_log, audit_prompts=args.audit_prompts,
        audit_prompt_key=args.audit_prompt_key,
        audit_checkpoint_every=args.audit_checkpoint_every, audit_signing_key=args.audit_signing_key,
        audit_head_sink=args.audit_head_sink,
        c2pa_cert=args.c2pa_cert or _env_path("WANRT_C2PA_CERT"), c2pa_key=args.c2pa_key or _env_path("WANRT_C2PA_KEY"),
        no_provenance=args.no_provenance,
        queue_size=args.queue_size, grace_seconds=args.grace_seconds, stop_timeout=args.stop_timeout,
        max_frames=args.max_frames,
        max_height=args.max_height, max_width=args.max_width, max_steps=args.max_steps,
        max_request_bytes=args.max_request_bytes, health_listen=args.health_listen,
        health_socket=args.health_socket, http_listen=args.http_listen,
        http_keep_seconds=args.http_keep_seconds, http_keep_bytes=args.http_keep_bytes,
        memory_budget=None if args.memory_budget is None else parse_size("memory_budget", args.memory_budget),
        step_cache=args.step_cache,
    ).validated()  # before the (slow) model load: a wrong flag fails in a second, not after minutes

    stop = threading.Event()
    signals = []

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    # SIGHUP (log rotation, new TLS material or tokens: `wanrt reload`) reopens the audit log and reads the TLS files
    # and the token file again once the server exists, on its own thread: the handler runs on the main thread,
    # which must not wait for the audit lock a worker may hold.
    reopen: list = []
    signal.signal(signal.SIGHUP, lambda *_: [threading.Thread(target=f).start() for f in reopen])
    # SIGUSR1 (`wanrt stop-admission`, the Kubernetes preStop hook): stop admitting, let admitted jobs finish.
    stop_admitting: list = []
    signal.signal(signal.SIGUSR1, lambda *_: [threading.Thread(target=f).start() for f in stop_admitting])
    if args.require_selinux_type:
        from wanrt.trust.confinement import require_selinux_type

        confined = require_selinux_type(args.require_selinux_type)
        logging.getLogger("wanrt.server").info("confinement: %s", confined.describe())
    pipelines = load_pipelines(config.model, config.backend, config.devices, cfg_parallel=config.cfg_parallel,
                               check=trusted_check(args.trust), residency=args.residency,
                               text_encoder=args.text_encoder)
    for plan in memory_plans(pipelines):  # the plan the server starts with: what build-engines printed, measured
        logging.getLogger("wanrt.server").info("%s", plan)
    if stop.is_set():  # asked to stop while the model was loading: nothing is in flight
        return 0
    server = WanrtServer(config, pipelines)
    reopen.append(lambda: print(json.dumps({"event": "reloaded", **server.reload()}), flush=True))
    stop_admitting.append(server.stop_admitting)
    server.start()
    # One machine-readable line on stdout: scripts and tests learn the bound ports (--listen ...:0).
    limits = server.door.reported_limits
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


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    try:
        return float(value) if value else None
    except ValueError:
        raise SystemExit(f"wanrt: error: ${name}: not a number: {value!r}") from None


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
    parser = subparsers.add_parser("token", help="make, rotate or hash bearer tokens for `wanrt serve --tokens`")
    commands = parser.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    new = commands.add_parser("new", help="print a new random token (once) and its tokens-file line")
    new.add_argument("--id", required=True, help="the principal name the audit log records")
    new.add_argument("--methods", nargs="+", default=None, help="allowed methods (default: all)")
    new.add_argument("--expires", metavar="DURATION|TIME", default=None,
                     help="the token ends after this long (90d, 12h, 30m) or at this RFC 3339 time (default: never)")
    new.add_argument("--append", type=Path, help="append the line to this tokens file (created 0600)")
    new.set_defaults(handler=_token_new)
    rotate = commands.add_parser(
        "rotate", help="give an id a new token; its old ones expire after an overlap",
        description="Appends a new token for --id to the tokens file (the same methods as its newest one unless "
                    "--methods) and sets the id's older tokens to expire after --overlap, so clients can switch "
                    "within that window. The file is rewritten atomically (comments and other ids kept). Then "
                    "`wanrt reload` (SIGHUP) makes a running server read it; expiry needs no reload.")
    rotate.add_argument("--id", required=True)
    rotate.add_argument("--file", type=Path, required=True, help="the tokens file (JSON lines)")
    rotate.add_argument("--overlap", default="24h", metavar="DURATION",
                        help="how long the old tokens stay valid (default %(default)s; 0s ends them at once)")
    rotate.add_argument("--expires", metavar="DURATION|TIME", default=None, help="the new token's own end")
    rotate.add_argument("--methods", nargs="+", default=None)
    rotate.set_defaults(handler=_token_rotate)
    hash_ = commands.add_parser("hash", help="SHA-256 of a token read from stdin (what the tokens file holds)")
    hash_.set_defaults(handler=_token_hash)


def _when(field: str, value: str | None) -> str | None:
    """"90d" / "12h" / "30m" / "45s" from now, or an RFC 3339 time, as the tokens file's "expires" text."""
    import datetime
    import re

    from wanrt.errors import InvalidRequestError
    from wanrt.server.auth import format_time, parse_time
    from wanrt.server.errors import ConfigError

    if value is None:
        return None
    match = re.fullmatch(r"(\d+)([smhd])", value.strip())
    if match:
        seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return format_time(datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds))
    try:
        return format_time(parse_time(field, value))
    except ConfigError:
        raise InvalidRequestError(field, f"must be a duration (90d, 12h, 30m, 45s) or an RFC 3339 time with a "
                                         f"zone, got {value!r}") from None


def _token_line(token_id: str, methods: list[str] | None, expires: str | None) -> tuple[str, str]:
    """(token, its tokens-file line), checked the way the server checks the file."""
    from wanrt.server.auth import _entry, hash_token

    token = secrets.token_urlsafe(32)  # 256 bits: guessing is hopeless, so a plain SHA-256 is enough
    record: dict = {"id": token_id, "sha256": hash_token(token)}
    if methods:
        record["methods"] = methods
    if expires:
        record["expires"] = expires
    _entry("--id/--methods/--expires", record)  # the same checks the server applies when it loads the file
    return token, json.dumps(record)


def _token_new(args: argparse.Namespace) -> int:
    token, line = _token_line(args.id, args.methods, _when("expires", args.expires))
    if args.append:
        fd = os.open(args.append, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    else:
        print(line, file=sys.stderr)
    print(token)
    return 0


def _token_rotate(args: argparse.Namespace) -> int:
    from wanrt.errors import InvalidRequestError
    from wanrt.server.auth import _entry, parse_time, read_entries

    entries = read_entries(args.file)  # the whole file must be valid before anything is written
    own = [e for e in entries if e.id == args.id]
    if not own:
        raise InvalidRequestError("id", f"{args.file} has no token for {args.id!r} (make one with `wanrt token new`)")
    old_end = parse_time("--overlap", _when("overlap", args.overlap))
    methods = args.methods or sorted(own[-1].methods)
    token, new_line = _token_line(args.id, methods, _when("expires", args.expires))
    lines = []
    for number, line in enumerate(args.file.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            entry = _entry(f"{args.file}:{number}", json.loads(line))
            if entry.id == args.id and (entry.expires is None or entry.expires > old_end):
                line = json.dumps(dataclasses.replace(entry, expires=old_end).to_json())
        lines.append(line)
    lines.append(new_line)
    _replace_file(args.file, "\n".join(lines) + "\n")
    print(f"{args.file}: new token for {args.id!r}; its {len(own)} older token(s) expire at "
          f"{old_end.strftime('%Y-%m-%dT%H:%M:%SZ')}. Then: wanrt reload (SIGHUP the server)", file=sys.stderr)
    print(token)
    return 0


def _replace_file(path: Path, text: str) -> None:
    """Atomic: a temporary file beside it (same mode), flushed, renamed over it."""
    mode = path.stat().st_mode & 0o777
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _token_hash(_args: argparse.Namespace) -> int:
    from wanrt.server.auth import hash_token

    token = sys.stdin.read().strip()
    if not token:
        print("wanrt: error: no token on stdin", file=sys.stderr)
        return 2
    print(hash_token(token))
    return 0


def _register_stop_admission(subparsers: argparse._SubParsersAction) -> None:
    stop = subparsers.add_parser(
        "stop-admission", help="tell a running `wanrt serve` to stop admitting jobs (SIGUSR1); admitted ones finish",
        description="The first step of a drain, for a Kubernetes preStop hook: the server refuses new calls, its "
                    "readiness turns NOT_SERVING (load balancers take it out), and admitted jobs run on; SIGTERM, "
                    "which follows, then waits for them within --stop-timeout. In the container the server is PID 1.")
    stop.add_argument("--pid", type=int, default=1, help="the server's process id (default %(default)s)")
    stop.add_argument("--then-wait", type=float, default=0.0, metavar="S",
                      help="stay S seconds before returning (the preStop hook: time for the endpoints to go)")
    stop.set_defaults(handler=_signal_server, signal=signal.SIGUSR1)
    reload = subparsers.add_parser(
        "reload", help="tell a running `wanrt serve` to read its TLS files and token file again (SIGHUP)",
        description="Also reopens the audit log (rotation). Jobs and calls in flight continue; a file that fails its "
                    "checks is refused (logged) and the one in use stays. In the container the server is PID 1.")
    reload.add_argument("--pid", type=int, default=1, help="the server's process id (default %(default)s)")
    reload.set_defaults(handler=_signal_server, signal=signal.SIGHUP, then_wait=0.0)


def _signal_server(args: argparse.Namespace) -> int:
    import time

    try:
        os.kill(args.pid, args.signal)
    except ProcessLookupError:
        print(f"wanrt: error: no process {args.pid}", file=sys.stderr)
        return 1
    time.sleep(max(0.0, args.then_wait))
    return 0
