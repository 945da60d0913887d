"""Builds, starts and drains the gRPC server: transport security, interceptors, health, reflection, metrics."""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from wanrt.engine.admission import admission_for
from wanrt.engine.pipeline import VideoPipeline
from wanrt.engine.request import MAX_PROMPT_BYTES, Limits
from wanrt.engine.shapes import latent_shape
from wanrt.engine.spec import ModelSpec
from wanrt.server.audit import open_audit_log
from wanrt.server.auth import SERVICE, TokenInterceptor, TokenStore
from wanrt.server.config import ServerConfig
from wanrt.server.errors import ConfigError
from wanrt.server.frontdoor import FrontDoor, ModelFacts
from wanrt.server.jobs import JobManager
from wanrt.server.metrics import Metrics
from wanrt.server.protocol import KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS, MIN_PING_INTERVAL_MS, SERVER_SEND_BYTES
from wanrt.server.reload import TlsMaterial
from wanrt.server.service import VideoGenerationService
from wanrt.state import key_id

log = logging.getLogger("wanrt.server")

# Threads for calls beyond the jobs (health checks, DescribeModel, refusals): a full queue is refused at once
# because a thread is always free to say so.
_SPARE_THREADS = 16
_SEND_GRACE_S = 5.0  # after the last job, time for handlers to send their final messages
# With --stop-timeout: what the drain keeps back from the engine's kill deadline for everything after the jobs
# (cancel, last messages, HTTP fetches, shutdown: four waits of _SEND_GRACE_S at most).
STOP_MARGIN_S = 4 * _SEND_GRACE_S


def server_options(max_request_bytes: int) -> list[tuple[str, int]]:
    """Channel arguments chosen on purpose, not left at grpc's defaults."""
    return [
        # Requests: bounded by what the largest allowed latents need; larger ones get RESOURCE_EXHAUSTED.
        ("grpc.max_receive_message_length", max_request_bytes),
        # Responses: video goes out in chunks of at most protocol.CHUNK_BYTES.
        ("grpc.max_send_message_length", SERVER_SEND_BYTES),
        # Ping idle connections so a vanished client (no FIN) is noticed and its job cancelled.
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        # Clients may ping at most this often; a client pinging faster is disconnected after 2 strikes.
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", 2),
        # Connections idle for 30 min are closed (they hold memory and a file descriptor).
        ("grpc.max_connection_idle_ms", 30 * 60_000),
        # A second server on the same port must fail to start, not silently share the port (grpc's default
        # on Linux is SO_REUSEPORT).
        ("grpc.so_reuseport", 0),
    ]


def effective_limits(model: Limits, config: ServerConfig) -> Limits:
    """The model's limits, tightened (never widened) by the operator's --max-* options or, on a CPU-only
    server, the CPU defaults (ServerConfig.maxima)."""
    changes = {name: min(value, getattr(model, name)) for name, value in config.maxima.items()}
    return dataclasses.replace(model, **changes)


def default_max_request_bytes(spec: ModelSpec, limits: Limits) -> int:
    """Room for latents at the largest allowed size, both prompts and the envelope; at least 1 MiB."""
    latents = 4 * math.prod(latent_shape(limits.max_frames, limits.max_height, limits.max_width,
                                         channels=spec.latent_channels, temporal=spec.vae_scale_temporal,
                                         spatial=spec.vae_scale_spatial))
    return max(1 << 20, latents + 2 * MAX_PROMPT_BYTES + 64 * 1024)


class WanrtServer:
    """``start()``, then ``drain()`` (SIGTERM) or ``stop()``. Pipelines: one per accelerator, already loaded."""

    def __init__(self, config: ServerConfig, pipelines: Sequence[VideoPipeline]) -> None:
        self.config = config.validated(model_required=False)
        first = pipelines[0]
        self.limits = effective_limits(first.limits, config)
        # Every worker's pipeline is loaded by now: what the process holds is known before the first request.
        self.admission = admission_for(first, config.memory_budget, config.devices)
        self.memory_budget = None if self.admission is None else self.admission.budget.bytes
        self.max_request_bytes = config.max_request_bytes or default_max_request_bytes(first.spec, self.limits)
        self.metrics = Metrics()
        prompt_key = config.prompt_key()
        provenance = config.provenance_key()
        if provenance is None:
            log.warning("provenance off (--no-provenance): videos carry no C2PA manifest (recorded in the audit log)")
        self.audit = open_audit_log(config, meta={"prompt_hmac_key_id": key_id(prompt_key),
                                                  "provenance": getattr(provenance, "origin", "off")})
        tokens = TokenStore.load(Path(config.tokens)) if config.tokens is not None else None
        self.jobs = JobManager(pipelines, config.queue_size, self.metrics)
        self._draining = threading.Event()
        self._admission_stopped_at: float | None = None
        self.health = health.HealthServicer(
            experimental_non_blocking=True, experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=2))
        # Every API (gRPC here, HTTP in http_edge.py) takes its calls through this one front door.
        self.door = FrontDoor(
            self.jobs, ModelFacts(first.spec, self.limits, dict(first.identity), self.max_request_bytes,
                                  self.admission, defaults=first.defaults, step_cache=config.step_cache,
                                  warnings=first.warnings),
            self.audit, self.metrics, tokens=tokens, keep_prompt_text=config.audit_prompts, prompt_key=prompt_key,
            provenance=provenance,
            draining=self._draining.is_set, on_audit_failure=self._audit_failed)
        self.service = VideoGenerationService(self.door)
        threads = len(pipelines) + config.queue_size + _SPARE_THREADS
        # The interceptor reads the front door's token store at each call, so a reload (one swap there) reaches
        # gRPC and both HTTP APIs alike.
        interceptors = [TokenInterceptor(lambda: self.door.tokens, self.service.audit_denied)] if tokens else []
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wanrt-grpc"),
            interceptors=interceptors, options=server_options(self.max_request_bytes),
            # Beyond this many calls grpc itself answers RESOURCE_EXHAUSTED instead of letting calls wait.
            maximum_concurrent_rpcs=threads,
        )
        self._grpc.add_generic_rpc_handlers((self.service.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc)
        self._health_grpc: grpc.Server | None = None
        self.health_port: int | None = None
        self._tls: TlsMaterial | None = None
        try:
            self.port = self._bind()
            self._bind_health()
            self.http = None if config.http_address is None else _http_listener(self)
        except ConfigError:
            self.jobs.close()
            self.audit.close()
            raise
        self.metrics_port: int | None = None
        self._stopped = False

    def _bind(self) -> int:
        config = self.config
        address = str(config.listen_address)
        try:
            if config.insecure:
                port = self._grpc.add_insecure_port(address)
            else:
                # Certificates grpc fetches again at each handshake after a reload (SIGHUP: server/reload.py).
                self._tls = TlsMaterial(Path(config.tls_cert), Path(config.tls_key),
                                        None if config.client_ca is None else Path(config.client_ca))
                port = self._grpc.add_secure_port(address, self._tls.grpc_credentials())
        except RuntimeError as err:
            raise ConfigError("listen", f"cannot listen on {address}: {err}") from None
        if not port:
            raise ConfigError("listen", f"cannot listen on {address}")
        return port

    def _bind_health(self) -> None:
        """A second server that carries grpc.health.v1 alone, in plaintext: kubelet's native gRPC probes cannot
        speak TLS, and a HEALTHCHECK over a unix socket needs no SELinux name_connect. It shares the main
        server's HealthServicer, so a drain or an audit failure shows on both."""
        config = self.config
        if config.health_listen is None and config.health_socket is None:
            return
        self._health_grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="wanrt-health"),
                                        maximum_concurrent_rpcs=8)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_grpc)
        if config.health_socket is not None:
            socket_path = Path(config.health_socket)
            if socket_path.is_socket():
                socket_path.unlink()  # left by a killed predecessor; config checked it is a socket
            if not self._health_grpc.add_insecure_port(f"unix:{socket_path}"):
                raise ConfigError("health_socket", f"cannot listen on {socket_path}")
        if config.health_listen is not None:
            address = str(config.health_address)
            try:
                self.health_port = self._health_grpc.add_insecure_port(address)
            except RuntimeError as err:
                raise ConfigError("health_listen", f"cannot listen on {address}: {err}") from None
            if not self.health_port:
                raise ConfigError("health_listen", f"cannot listen on {address}")

    @property
    def address(self) -> str:
        listen = self.config.listen_address
        return str(dataclasses.replace(listen, port=self.port))

    def start(self) -> None:
        metrics = self.config.metrics_address
        if metrics is not None:
            try:
                self.metrics_port = self.metrics.serve(metrics)
            except OSError as err:
                raise ConfigError("metrics_listen", f"cannot listen on {metrics}: {err.strerror}") from None
        self._grpc.start()
        if self._health_grpc is not None:
            self._health_grpc.start()
        if self.http is not None:
            self.http.start()
        for service in ("", SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving wanrt.v1 on %s (%s), metrics on %s, %d worker(s), queue %d", self.address,
                 "plaintext" if self.config.insecure else ("mTLS" if self.config.client_ca else "TLS"),
                 self.metrics_port, self.jobs.workers, self.jobs.queue_size)
        limits = self.door.reported_limits
        log.info("limits: %d frames, %dx%d, %d steps; %s", limits.max_frames, limits.max_height, limits.max_width,
                 limits.max_steps, self.admission.describe() if self.admission else "no memory admission")
        if self.http is not None:
            log.info("serving OpenAI /v1/videos and DashScope video-synthesis on HTTP%s port %d",
                     "" if self.config.insecure else "S", self.http.port)

    def reload(self) -> dict[str, object]:
        """SIGHUP: reopen the audit log (rotation) and read the TLS material and the token file again. Jobs and
        calls in flight are untouched; a file that fails its checks is refused and the one in use stays."""
        outcome: dict[str, object] = {"tls": None, "tokens": None, "errors": []}
        self.audit.reopen()
        if self._tls is not None:
            try:
                changed = self._tls.reload()
                if changed and self.http is not None:
                    self.http.reload_tls(self._tls.cert, self._tls.key, self._tls.ca)
                outcome["tls"] = "changed" if changed else "unchanged"
            except ConfigError as err:
                outcome["errors"].append(str(err))
        if self.config.tokens is not None:
            try:
                tokens = TokenStore.load(Path(self.config.tokens))
                self.door.use_tokens(tokens)  # gRPC, OpenAI-HTTP and DashScope all check calls there
                outcome["tokens"] = tokens.valid_now()
            except ConfigError as err:
                outcome["errors"].append(str(err))
        for error in outcome["errors"]:
            log.error("reload refused, the material in use stays: %s", error)
        log.info("reloaded: TLS %s, %s token(s) valid", outcome["tls"], outcome["tokens"])
        return outcome

    def _audit_failed(self) -> None:
        # Without an audit trail the service must not go on answering: orchestrators see NOT_SERVING.
        for service in ("", SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    def stop_admitting(self) -> None:
        """First step of a drain (SIGUSR1, a Kubernetes preStop hook): refuse new calls (UNAVAILABLE), turn the
        service's readiness NOT_SERVING, let every admitted job run on. Liveness ("") stays SERVING."""
        if self._admission_stopped_at is None:
            self._admission_stopped_at = time.monotonic()
        self._draining.set()
        self.jobs.stop_accepting()
        self.health.set(SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info("admission stopped: %d job(s) live run on", self.jobs.live_jobs)

    def drain_grace(self) -> float:
        """Seconds the jobs get: --grace-seconds, or with --stop-timeout what is left of the engine's kill deadline
        (counted from the first stop signal) less STOP_MARGIN_S."""
        if self.config.stop_timeout is None:
            return self.config.grace_seconds
        began = self._admission_stopped_at if self._admission_stopped_at is not None else time.monotonic()
        return max(0.0, self.config.stop_timeout - STOP_MARGIN_S - (time.monotonic() - began))

    def drain(self, grace_seconds: float | None = None) -> bool:
        """SIGTERM: NOT_SERVING at once, refuse new calls, let running and queued jobs finish within the grace,
        cancel what is left, stop. Returns True when every job finished in time."""
        self.stop_admitting()
        grace = self.drain_grace() if grace_seconds is None else grace_seconds
        deadline, began = time.monotonic() + grace, time.time()
        self.health.enter_graceful_shutdown()  # every service NOT_SERVING, and it stays so
        log.info("draining: %d job(s) live, grace %.1f s", self.jobs.live_jobs, grace)
        finished = self.jobs.wait_idle(max(0.0, deadline - time.monotonic()))
        if not finished:
            log.warning("grace of %.1f s over: cancelling %d job(s)", grace, self.jobs.live_jobs)
            self.jobs.cancel_all("shutdown")
            self.jobs.wait_idle(_SEND_GRACE_S)
        self.service.wait_calls_done(_SEND_GRACE_S)
        if self.http is not None:  # HTTP clients fetch their video after it is done: give them the send grace
            self.http.store.wait_fetched(began, _SEND_GRACE_S)
        self._shutdown(_SEND_GRACE_S)
        log.info("drained (%s)", "all jobs finished" if finished else "jobs cancelled after the grace")
        return finished

    def stop(self) -> None:
        """Immediate: cancels every job and call."""
        self._draining.set()
        self.health.enter_graceful_shutdown()
        self.jobs.stop_accepting()
        self.jobs.cancel_all("shutdown")
        self._shutdown(0)

    def _shutdown(self, grace: float) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._grpc.stop(grace).wait()
        if self._health_grpc is not None:
            self._health_grpc.stop(0).wait()
        if self.http is not None:
            self.http.stop()
        self.jobs.close()
        self.metrics.stop()
        self.audit.close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._grpc.wait_for_termination(timeout)


def _http_listener(server: WanrtServer) -> object:
    from wanrt.server.http_listener import HttpListener  # uvicorn and starlette load only when HTTP is asked for

    return HttpListener(server)
