"""Server and client settings, checked before anything starts: a wrong setting stops `wanrt serve` with a precise
message naming the option, never a half-secured server (fail closed).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import ssl
from pathlib import Path

from wanrt.engine.device import parse_device
from wanrt.engine.loader import BACKENDS
from wanrt.engine.step_cache import check_threshold
from wanrt.errors import InvalidRequestError
from wanrt.server.errors import ConfigError

DEFAULT_GRPC_PORT = 50051
DEFAULT_METRICS_PORT = 9464
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_GRPC_PORT}"
DEFAULT_METRICS_LISTEN = f"127.0.0.1:{DEFAULT_METRICS_PORT}"
MAX_QUEUE_SIZE = 10_000


@dataclasses.dataclass(frozen=True)
class HostPort:
    host: str  # without brackets, e.g. "::1"
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a DNS name other than localhost may resolve anywhere


def parse_host_port(field: str, value: str) -> HostPort:
    """``HOST:PORT`` or ``[IPV6]:PORT``; port 0 asks the OS for a free port (tests)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(field, "must be HOST:PORT")
    if value.startswith("["):
        host, sep, port = value[1:].partition("]:")
    else:
        host, sep, port = value.rpartition(":")
        if ":" in host:
            raise ConfigError(field, f"IPv6 addresses need brackets, e.g. [::1]:{DEFAULT_GRPC_PORT}; got {value!r}")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(field, f"must be HOST:PORT with a port from 0 to 65535, got {value!r}")
    return HostPort(host, int(port))


def is_unix_target(server: str) -> bool:
    """``unix:/abs/path`` or ``unix:///abs/path`` (grpc's forms): a socket on this machine, never the network."""
    return isinstance(server, str) and server.startswith("unix:")


def _readable_file(field: str, path: Path | None) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, f"{path} is not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(field, f"{path} is not readable")
    return path


def check_certificates(cert: Path, key: Path) -> None:
    """The certificate chain and the private key parse and belong together (the stdlib checks both)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as err:
        raise ConfigError("tls_key", f"{key} does not match {cert}, or one is not PEM: {err.reason or err}") from None


def check_ca(field: str, ca: Path) -> None:
    try:
        ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError as err:
        raise ConfigError(field, f"{ca} holds no PEM CA certificate: {err.reason or err}") from None


LIMIT_OPTIONS = ("max_frames", "max_height", "max_width", "max_steps")
# A server whose workers are all CPUs serves at most this where the operator set no --max-* option: a Wan
# model's own limits (129 frames at 1280x1280, 100 steps) would hold a CPU worker for hours and its memory for
# as long. 33 frames (2 s at 16 fps) at 256x256 is 13x the latent tokens of the reef defaults (17 frames at
# 96x96); at 50 steps the reef model finishes that in about a minute on two idle cores (server/README.md).
CPU_MAXIMA = {"max_frames": 33, "max_height": 256, "max_width": 256, "max_steps": 50}


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything `wanrt serve` takes. ``validated()`` checks it all; the app only runs validated configs."""

    model: Path | None
    backend: str = "onnxruntime"
    devices: tuple[str, ...] = ("cpu",)  # one worker (and one loaded pipeline) per entry
    cfg_parallel: bool = False  # one worker per PAIR of devices: cond and uncond halves run at once
    listen: str = DEFAULT_LISTEN
    metrics_listen: str | None = DEFAULT_METRICS_LISTEN  # None: no metrics endpoint
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None  # set: mutual TLS, every client must present a certificate it signed
    tokens: Path | None = None  # set: wanrt.v1 calls need a bearer token listed there (see auth.py)
    insecure: bool = False  # plaintext; only on loopback addresses
    audit_log: Path | None = None
    audit_prompts: bool = False  # keep prompt text in the audit log (default: its HMAC only)
    audit_prompt_key: Path | None = None  # the HMAC key prompts are audited under (default: the installation's)
    audit_checkpoint_every: int = 0  # with audit_signing_key: a signed checkpoint every N records
    audit_signing_key: Path | None = None
    audit_head_sink: str | None = None  # a file, or syslog[:ADDRESS]: every signed head written there too
    c2pa_cert: Path | None = None  # with c2pa_key: every MP4 result carries a signed C2PA sidecar manifest
    c2pa_key: Path | None = None
    no_provenance: bool = False  # opt out of C2PA (without c2pa_cert every MP4 is signed with the installation's)
    queue_size: int = 8  # jobs waiting beyond the ones running
    grace_seconds: float = 30.0  # on SIGTERM, how long running and queued jobs may take to finish
    # The engine's kill deadline after it starts stopping the container (Kubernetes terminationGracePeriodSeconds):
    # set, it replaces grace_seconds, and the jobs get what is left of it (app.WanrtServer.drain_grace).
    stop_timeout: float | None = None
    # Tighten the model's limits (never widen them), e.g. to what this machine's memory can hold. Unset on a
    # CPU-only server: CPU_MAXIMA.
    max_frames: int | None = None
    max_height: int | None = None
    max_width: int | None = None
    max_steps: int | None = None
    max_request_bytes: int | None = None  # default: enough for latents at the largest allowed size
    http_listen: str | None = None  # set: the OpenAI-compatible /v1/videos API too (server/http_api.py)
    http_keep_seconds: float = 3600.0  # finished videos are fetchable this long, then removed
    http_keep_bytes: int = 1 << 30  # and at most this many bytes of them are held (the oldest go first)
    # Health only (grpc.health.v1, plaintext, no other service): for probes that cannot speak TLS (kubelet's
    # native gRPC probes) and for the in-container HEALTHCHECK over a unix socket, which needs no
    # SELinux name_connect. Neither carries requests or tokens.
    health_listen: str | None = None
    health_socket: Path | None = None
    memory_budget: int | None = None  # bytes; default: the cgroup limit, else physical memory, less a reserve
    step_cache: float | None = None  # adaptive step cache threshold for requests that do not set one (None: off)

    @property
    def maxima(self) -> dict[str, int]:
        """The limits to tighten the model's to: the --max-* options given, and on CPU-only servers CPU_MAXIMA
        for those not given."""
        cpu_only = not any(parse_device(device).is_cuda for device in self.devices)
        chosen = {name: getattr(self, name) for name in LIMIT_OPTIONS}
        if cpu_only:
            chosen = {name: CPU_MAXIMA[name] if value is None else value for name, value in chosen.items()}
        return {name: value for name, value in chosen.items() if value is not None}

    @property
    def listen_address(self) -> HostPort:
        return parse_host_port("listen", self.listen)

    @property
    def http_address(self) -> HostPort | None:
        return None if self.http_listen is None else parse_host_port("http_listen", self.http_listen)

    @property
    def metrics_address(self) -> HostPort | None:
        return None if self.metrics_listen is None else parse_host_port("metrics_listen", self.metrics_listen)

    @property
    def health_address(self) -> HostPort | None:
        return None if self.health_listen is None else parse_host_port("health_listen", self.health_listen)

    def validated(self, *, model_required: bool = True) -> ServerConfig:
        """Returns self, or raises ConfigError naming the first wrong option."""
        from wanrt.server.auth import TokenStore

        if model_required:
            if self.model is None:
                raise ConfigError("model", "is required (or set WANRT_MODEL)")
            if not Path(self.model).is_dir():
                raise ConfigError("model", f"{self.model} is not a directory")
        if self.backend not in BACKENDS:
            raise ConfigError("backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        # Two CPU sessions may share the CPU (cfg-parallel on CPU threads); an accelerator serves one worker.
        accelerators = [d for d in self.devices if d != "cpu"]
        repeated_cpu = self.devices.count("cpu") > 1 and not self.cfg_parallel
        if not self.devices or len(set(accelerators)) != len(accelerators) or repeated_cpu:
            raise ConfigError("device", f"needs one or more distinct devices, got {list(self.devices)}")
        if self.cfg_parallel and (len(self.devices) < 2 or len(self.devices) % 2):
            raise ConfigError("cfg_parallel", f"pairs devices: needs an even number of --device, got "
                                              f"{len(self.devices)}")
        for device in self.devices:
            try:
                parse_device(device)
            except InvalidRequestError as err:
                raise ConfigError("device", err.message) from None
        listen = self.listen_address
        metrics = self.metrics_address
        if metrics is not None and metrics.port != 0 and (metrics.host, metrics.port) == (listen.host, listen.port):
            raise ConfigError("metrics_listen", "must differ from --listen")
        health = self.health_address
        taken = [(a.host, a.port) for a in (listen, metrics) if a is not None and a.port != 0]
        if health is not None and health.port != 0 and (health.host, health.port) in taken:
            raise ConfigError("health_listen", "must differ from --listen and --metrics-listen")
        self._check_health_socket()
        self._check_transport(listen)
        self._check_http([(listen, "--listen"), (metrics, "--metrics-listen"), (health, "--health-listen")])
        if self.tokens is not None:
            TokenStore.load(_readable_file("tokens", self.tokens))
        self._check_audit_log()
        self.provenance_key()
        _check_int("queue_size", self.queue_size, 0, MAX_QUEUE_SIZE)
        if not isinstance(self.grace_seconds, int | float) or not math.isfinite(self.grace_seconds) \
                or self.grace_seconds < 0:
            raise ConfigError("grace_seconds", f"must be a finite number >= 0, got {self.grace_seconds!r}")
        if self.stop_timeout is not None and (not isinstance(self.stop_timeout, int | float)
                                              or not math.isfinite(self.stop_timeout) or self.stop_timeout <= 30):
            raise ConfigError("stop_timeout", f"must be a number of seconds above 30 (the last 20 s are kept for "
                                              f"shutting down), got {self.stop_timeout!r}")
        for name in LIMIT_OPTIONS:
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1, 1 << 20)
        if self.max_request_bytes is not None:
            _check_int("max_request_bytes", self.max_request_bytes, 64 * 1024, 1 << 30)
        if self.memory_budget is not None:
            _check_int("memory_budget", self.memory_budget, 1 << 20, 1 << 50)
        if self.step_cache is not None:
            try:
                check_threshold(self.step_cache)
            except InvalidRequestError as err:
                raise ConfigError("step_cache", err.message) from None
        return self

    def prompt_key(self) -> bytes:
        """The key prompts are audited under: --audit-prompt-key (shared by replicas that must agree), else this
        installation's own (wanrt/state.py), made on first use. Unusable: ConfigError, the server does not start."""
        from wanrt.errors import StateError
        from wanrt.state import read_secret, secret

        try:
            return read_secret(self.audit_prompt_key) if self.audit_prompt_key else secret("audit-prompts.key")
        except StateError as err:
            raise ConfigError("audit_prompt_key", str(err)) from None

    def provenance_key(self) -> object | None:
        """The C2PA signing key (checked like the TLS pair): the operator's, else this installation's own (made
        on first use), or None with --no-provenance."""
        from wanrt.errors import InvalidRequestError, StateError
        from wanrt.trust.cli import installation_provenance_key
        from wanrt.trust.provenance import key_from_options

        if self.no_provenance:
            if self.c2pa_cert is not None or self.c2pa_key is not None:
                raise ConfigError("no_provenance", "cannot be combined with --c2pa-cert/--c2pa-key")
            return None
        try:
            return key_from_options(self.c2pa_cert, self.c2pa_key) or installation_provenance_key()
        except InvalidRequestError as err:
            raise ConfigError(err.field, err.message) from None
        except StateError as err:
            raise ConfigError("c2pa_cert", str(err)) from None

    def _check_transport(self, listen: HostPort) -> None:
        tls_given = [name for name in ("tls_cert", "tls_key", "client_ca") if getattr(self, name) is not None]
        if self.insecure:
            if tls_given:
                raise ConfigError("insecure", f"cannot be combined with --{tls_given[0].replace('_', '-')}")
            if not listen.is_loopback:
                raise ConfigError("insecure", f"plaintext is only allowed on loopback addresses (127.0.0.1, ::1, "
                                              f"localhost), not {listen.host!r}; give --tls-cert and --tls-key")
            return
        if self.tls_cert is None or self.tls_key is None:
            raise ConfigError("tls_cert", "TLS needs --tls-cert and --tls-key (or --insecure for local use on "
                                          "a loopback address)")
        cert = _readable_file("tls_cert", self.tls_cert)
        key = _readable_file("tls_key", self.tls_key)
        check_certificates(cert, key)
        if self.client_ca is not None:
            check_ca("client_ca", _readable_file("client_ca", self.client_ca))

    def _check_http(self, others: list[tuple[HostPort | None, str]]) -> None:
        """The HTTP listener follows the gRPC one's transport rules (TLS, mutual TLS, --insecure on loopback)."""
        http = self.http_address
        if http is None:
            return
        for other, name in others:
            if other is not None and http.port != 0 and (http.host, http.port) == (other.host, other.port):
                raise ConfigError("http_listen", f"must differ from {name}")
        if self.insecure and not http.is_loopback:
            raise ConfigError("insecure", f"plaintext is only allowed on loopback addresses, and --http-listen is "
                                          f"{http.host!r}; give --tls-cert and --tls-key")
        if not isinstance(self.http_keep_seconds, int | float) or not math.isfinite(self.http_keep_seconds) \
                or self.http_keep_seconds <= 0:
            raise ConfigError("http_keep_seconds", f"must be a finite number > 0, got {self.http_keep_seconds!r}")
        _check_int("http_keep_bytes", self.http_keep_bytes, 1, 1 << 50)
    def _check_health_socket(self) -> None:
        if self.health_socket is None:
            return
        path = Path(self.health_socket)
        if not path.is_absolute():
            raise ConfigError("health_socket", f"must be an absolute path, got {str(path)!r}")
        if not path.parent.is_dir():
            raise ConfigError("health_socket", f"directory {path.parent} does not exist")
        if path.exists() and not path.is_socket():
            raise ConfigError("health_socket", f"{path} exists and is not a socket")

    def _check_audit_log(self) -> None:
        if self.audit_log is None:
            raise ConfigError("audit_log", "is required: every request is recorded")
        path = Path(self.audit_log)
        # Checked without creating anything: the log is created when the server starts, 0600 and with its first
        # record in it (server/audit.py), so a start refused later leaves no file behind.
        check_appendable("audit_log", path)
        _check_int("audit_checkpoint_every", self.audit_checkpoint_every, 0, 10**9)
        self._check_head_sink(path)
        self.prompt_key()
        if (self.audit_signing_key is None) != (self.audit_checkpoint_every == 0):
            raise ConfigError("audit_signing_key", "and --audit-checkpoint-every N (N > 0) go together")
        if self.audit_signing_key is not None:
            from wanrt.errors import SignatureError
            from wanrt.trust.keys import load_signer

            try:
                load_signer(_readable_file("audit_signing_key", self.audit_signing_key))
            except SignatureError as err:
                raise ConfigError("audit_signing_key", str(err)) from None

    def _check_head_sink(self, audit_log: Path) -> None:
        if self.audit_head_sink is None:
            return
        if self.audit_signing_key is None:
            raise ConfigError("audit_head_sink", "holds signed heads: it needs --audit-signing-key")
        from wanrt.server.audit_sink import same_mount, syslog_target

        target = self.audit_head_sink
        if target == "syslog" or target.startswith("syslog:"):
            syslog_target(target)
            return
        sink = Path(target.removeprefix("file:"))
        check_appendable("audit_head_sink", sink)
        if sink.resolve() == audit_log.resolve():
            raise ConfigError("audit_head_sink", "must not be the audit log itself")
        if same_mount(sink, audit_log):
            import logging

            logging.getLogger("wanrt.server").warning(
                "--audit-head-sink %s is on the audit log's file system: whoever can rewrite the log there can "
                "likely rewrite the heads too (put it on another mount, or use syslog)", sink)


def check_appendable(field: str, path: Path) -> None:
    """A file the server will append to (creating it if absent), checked without creating it."""
    if path.exists() and not path.is_file():
        raise ConfigError(field, f"{path} exists and is not a regular file")
    if not path.parent.is_dir():
        raise ConfigError(field, f"directory {path.parent} does not exist")
    writable = os.access(path, os.W_OK) if path.exists() else os.access(path.parent, os.W_OK | os.X_OK)
    if not writable:
        raise ConfigError(field, f"cannot append to {path}: permission denied")


def _check_int(field: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(field, f"must be an integer from {low} to {high}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """How `wanrt client` reaches a server: TLS (system roots or --ca), optional client cert, optional token."""

    server: str = DEFAULT_LISTEN
    insecure: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    token_file: Path | None = None
    server_name: str | None = None  # TLS name to verify instead of the host in ``server``

    def validated(self) -> ClientConfig:
        address = HostPort("localhost", 0) if is_unix_target(self.server) else parse_host_port("server", self.server)
        if self.insecure:
            given = [name for name in ("ca", "cert", "key", "server_name") if getattr(self, name) is not None]
            if given:
                raise ConfigError("insecure", f"cannot be combined with --{given[0].replace('_', '-')}")
            if not address.is_loopback:
                # A token sent in plaintext off this machine would be readable on the network.
                raise ConfigError("insecure", f"plaintext is only allowed to loopback addresses, not {address.host!r}")
        if (self.cert is None) != (self.key is None):
            raise ConfigError("cert", "a client certificate needs both --cert and --key")
        for name in ("ca", "cert", "key", "token_file"):
            _readable_file(name, getattr(self, name))
        if self.cert is not None:
            check_certificates(self.cert, self.key)
        if self.ca is not None:
            check_ca("ca", self.ca)
        if self.token_file is not None and not self.read_token():
            raise ConfigError("token_file", f"{self.token_file} is empty")
        return self

    def read_token(self) -> str | None:
        if self.token_file is None:
            return None
        return Path(self.token_file).read_text(encoding="utf-8").strip()
