"""What client and server share (server/protocol.py), and the bearer token checked once, by the interceptor."""

from __future__ import annotations

import collections
import subprocess
import sys

import grpc

from wanrt.server.auth import TokenEntry, TokenInterceptor, TokenStore, hash_token

TOKEN = "renderer-token-value-0123456789"
Details = collections.namedtuple("Details", "method invocation_metadata")


def test_the_client_imports_neither_the_servicer_nor_the_job_queue():
    code = ("import sys, wanrt.server.client; "
            "print(sorted(m for m in sys.modules if m.startswith('wanrt.server.')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "wanrt.server.protocol" in loaded
    for internal in ("wanrt.server.service", "wanrt.server.frontdoor", "wanrt.server.jobs", "wanrt.server.app",
                     "wanrt.server.auth"):
        assert f"'{internal}'" not in loaded, internal


class CountingStore(TokenStore):
    def __init__(self) -> None:
        super().__init__([TokenEntry("renderer", hash_token(TOKEN), frozenset({"Generate"}))])
        self.checks = 0

    def check(self, metadata, method):
        self.checks += 1
        return super().check(metadata, method)


def intercepted(store: TokenStore, method: str, metadata: tuple, seen: list) -> grpc.RpcMethodHandler:
    """The handler the interceptor hands grpc for one call to a servicer behaviour that records its arguments."""
    def behaviour(request, context, token_id=None):
        seen.append(token_id)
        yield b"ok"

    def continuation(_details):
        return grpc.unary_stream_rpc_method_handler(behaviour)

    details = Details(f"/wanrt.v1.VideoGeneration/{method}", metadata)
    return TokenInterceptor(lambda: store).intercept_service(continuation, details)


def test_an_allowed_call_reaches_the_servicer_with_the_token_id_checked_once():
    store, seen = CountingStore(), []
    handler = intercepted(store, "Generate", (("authorization", f"Bearer {TOKEN}"),), seen)
    assert list(handler.unary_stream(b"", None)) == [b"ok"]
    assert seen == ["renderer"] and store.checks == 1


def test_a_refused_call_never_reaches_the_servicer():
    class Aborted(Exception):
        pass

    class Context:
        def abort(self, code, message):
            self.code = code
            raise Aborted(message)

    store, seen, context = CountingStore(), [], Context()
    handler = intercepted(store, "DescribeModel", (("authorization", f"Bearer {TOKEN}"),), seen)
    try:
        list(handler.unary_stream(b"", context))
    except Aborted:
        pass
    assert context.code == grpc.StatusCode.PERMISSION_DENIED and seen == [] and store.checks == 1
