"""The HTTP application and its listener: both APIs (``http_api.py``, OpenAI's; ``dashscope_api.py``,
DashScope's) routed on one Starlette application, served by uvicorn on its own thread (``--http-listen``).
Apart from the APIs' shared edge (``http_edge.py``), so that the APIs import the edge and this module imports the
APIs, never the other way round."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from wanrt.server.config import HostPort
from wanrt.server.dashscope_api import DashScopeApi
from wanrt.server.errors import ConfigError
from wanrt.server.frontdoor import CallStatus, Code, FrontDoor
from wanrt.server.http_api import OpenAiApi
from wanrt.server.http_videos import VideoStore

_STOP_S = 5.0


class _CertificateH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, plus ASGI's TLS extension (``client_cert_name``), which uvicorn does not fill:
    mutual TLS principals need the verified client certificate's subject."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            from cryptography import x509

            subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
            app = self.app

            async def with_tls(scope: dict, receive: Callable, send: Callable) -> None:
                scope.setdefault("extensions", {})["tls"] = {"client_cert_name": subject}
                await app(scope, receive, send)

            self.app = with_tls


def build_app(door: FrontDoor, store: VideoStore, *, max_request_bytes: int, url_secret: bytes) -> Starlette:
    openai_api = OpenAiApi(door, store, max_request_bytes=max_request_bytes)
    dashscope = DashScopeApi(door, store, max_request_bytes=max_request_bytes, url_secret=url_secret)

    async def not_found(request: Request, exc: Exception) -> Response:
        """Starlette's own refusals (unknown path, wrong method) in the shape of the API the path belongs to."""
        assert isinstance(exc, HTTPException)
        code = Code.NOT_FOUND if exc.status_code == 404 else Code.INVALID_ARGUMENT
        api = dashscope if request.url.path.startswith("/api/") else openai_api
        return api.error_response(CallStatus(code, str(exc.detail)), None, http_status=exc.status_code)

    return Starlette(routes=openai_api.routes() + dashscope.routes(), exception_handlers={HTTPException: not_found})


def bind_socket(address: HostPort) -> socket.socket:
    """Bound before the server starts, so a taken port fails `wanrt serve` at once (as gRPC's does)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP; without it
    # a keep-alive client waits out its delayed ACK (40 ms) on every response whose headers and body go apart.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # A restarted server may bind while the last one's connections linger in TIME_WAIT (no SO_REUSEPORT: a
    # second live server on the port must still fail, as gRPC's listener does).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address.host, address.port))
    except OSError as err:
        sock.close()
        raise ConfigError("http_listen", f"cannot listen on {address}: {err.strerror}") from None
    return sock


class HttpListener:
    """uvicorn serving the HTTP APIs on its own thread and event loop; gRPC keeps its own thread pool."""

    def __init__(self, server: Any) -> None:  # noqa: ANN401
        """``server``: the WanrtServer whose front door, limits and TLS settings the APIs share."""
        import secrets

        config = server.config
        self.store = VideoStore(server.door, keep_seconds=config.http_keep_seconds, keep_bytes=config.http_keep_bytes)
        # Signs DashScope's video URLs; a restart forgets the videos, so a fresh secret loses nothing.
        app = build_app(server.door, self.store, max_request_bytes=server.max_request_bytes,
                        url_secret=secrets.token_bytes(32))
        self.address = config.http_address
        self._socket = bind_socket(self.address)
        self.port = int(self._socket.getsockname()[1])
        tls = not config.insecure
        uv_config = uvicorn.Config(
            app, http=_CertificateH11Protocol, lifespan="off", log_level="warning", access_log=False,
            ssl_certfile=config.tls_cert if tls else None, ssl_keyfile=config.tls_key if tls else None,
            ssl_ca_certs=config.client_ca,
            # The same rule as gRPC's mutual TLS: no certificate that CA signed, no handshake.
            ssl_cert_reqs=ssl.CERT_REQUIRED if config.client_ca else ssl.CERT_NONE,
            timeout_graceful_shutdown=_STOP_S, server_header=False)
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="wanrt-http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise ConfigError("http_listen", "the HTTP server did not start (see the log)")

    def reload_tls(self, cert: Path, key: Path, ca: Path | None) -> None:
        """New handshakes use the new certificate; a reloaded client CA is added to the trusted ones (OpenSSL
        cannot drop a CA from a live context: removing one takes a restart). Tokens need nothing here: both APIs
        read the front door's store at each call."""
        context = getattr(self._server.config, "ssl", None)  # set by uvicorn when the server loads its config
        if context is not None:
            context.load_cert_chain(str(cert), str(key))
            if ca is not None:
                context.load_verify_locations(cafile=str(ca))

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(_STOP_S + 1)
        self._socket.close()
        self.store.close()
