"""Prometheus metrics, served over HTTP on their own port (never on the gRPC port, never behind tokens).

Every server owns its registry, so several servers (tests) can live in one process.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from wanrt.server.config import HostPort

# Steps of a tiny model take milliseconds, of Wan2.2 A14B at 720p tens of seconds: buckets span both.
_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("wanrt_requests", "wanrt.v1 calls by method and final gRPC status code",
                                ("method", "code"), registry=r)
        self.queue_depth = Gauge("wanrt_queue_depth", "Jobs waiting for a worker", registry=r)
        self.live_jobs = Gauge("wanrt_live_jobs", "Jobs queued or running", registry=r)
        self.busy_workers = Gauge("wanrt_busy_workers", "Workers running a job", registry=r)
        self.step_seconds = Histogram("wanrt_step_seconds", "Duration of one pipeline step, by stage",
                                      ("stage",), buckets=_STEP_BUCKETS, registry=r)
        self.queue_wait_seconds = Histogram("wanrt_queue_wait_seconds", "Time a job waited for a worker",
                                            buckets=_E2E_BUCKETS, registry=r)
        self.request_seconds = Histogram("wanrt_request_seconds",
                                         "End-to-end Generate latency (call received to result sent), by code",
                                         ("code",), buckets=_E2E_BUCKETS, registry=r)
        self._httpd = None
        self._thread: threading.Thread | None = None

    def serve(self, address: HostPort) -> int:
        """Starts the /metrics endpoint; returns the bound port (address.port may be 0)."""
        self._httpd, self._thread = start_http_server(address.port, address.host, registry=self.registry)
        return int(self._httpd.server_port)

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
