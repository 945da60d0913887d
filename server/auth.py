"""Bearer tokens (checked by a server interceptor) and who the caller is (token id or certificate subject).

Token file: JSON lines, one token each; blank lines and lines starting with ``#`` are ignored::

    {"id": "batch-renderer", "sha256": "<hex SHA-256 of the token's UTF-8 bytes>", "methods": ["Generate"],
     "expires": "2027-03-31T00:00:00Z"}

``methods`` (optional) lists the wanrt.v1.VideoGeneration methods the token may call (default: all). ``expires``
(optional, RFC 3339 UTC) ends the token: from then on it is refused (UNAUTHENTICATED, "expired"), checked at each
call, so no reload is needed for it to stop working. One id may have several tokens: that is how a token is
rotated (``wanrt token rotate``: a new token, and the old ones of that id expire after an overlap). The file holds
only hashes, so reading it reveals no token. Make a token with ``wanrt token new --id NAME --append FILE`` (prints
the token once), or hash one you have: ``wanrt token hash < token.txt`` or ``printf %s "$TOKEN" | sha256sum``.
Clients send ``authorization: Bearer <token>``. The server reloads the file on SIGHUP (``wanrt reload``).

Health checking and reflection are exempt from tokens (a container HEALTHCHECK holds none) but not from
mutual TLS, which the TLS handshake enforces before any method runs.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from wanrt.server.errors import ConfigError

SERVICE = "wanrt.v1.VideoGeneration"
METHODS = ("Generate", "DescribeModel")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class TokenEntry:
    id: str
    sha256: str
    methods: frozenset[str]
    expires: datetime.datetime | None = None  # aware, UTC

    def expired(self, now: datetime.datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def to_json(self) -> dict:
        record: dict = {"id": self.id, "sha256": self.sha256}
        if self.methods != frozenset(METHODS):
            record["methods"] = sorted(self.methods)
        if self.expires is not None:
            record["expires"] = format_time(self.expires)
        return record


def format_time(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(field: str, value: object) -> datetime.datetime:
    """RFC 3339 with an explicit offset ("Z" or "+hh:mm"); a time without a zone is refused, not guessed."""
    if isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment.astimezone(datetime.UTC)
    raise ConfigError("tokens", f"{field}: 'expires' must be an RFC 3339 time with a zone, e.g. "
                                f"2027-03-31T00:00:00Z, got {value!r}")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass(frozen=True)
class AuthResult:
    """Outcome of checking a call's metadata; ``code`` is None when the call may proceed."""

    token_id: str | None
    code: grpc.StatusCode | None = None
    message: str = ""


class TokenStore:
    def __init__(self, entries: Sequence[TokenEntry], clock: Callable[[], datetime.datetime] = _utcnow) -> None:
        self._entries = tuple(entries)
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> tuple[TokenEntry, ...]:
        return self._entries

    def valid_now(self) -> int:
        now = self._clock()
        return sum(not e.expired(now) for e in self._entries)

    @classmethod
    def load(cls, path: Path, clock: Callable[[], datetime.datetime] = _utcnow) -> TokenStore:
        """Parses the file strictly: a typo must not silently widen or drop access."""
        entries = read_entries(path)
        store = cls(entries, clock)
        if not store.valid_now():
            raise ConfigError("tokens", f"{path}: every token in it has expired: no call could be authorised")
        return store

    def check(self, metadata: Sequence[tuple[str, str | bytes]] | None, method: str) -> AuthResult:
        """``method``: the short name, e.g. "Generate"."""
        token = bearer_token(metadata)
        if token is None:
            return AuthResult(None, grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <token>'")
        digest = hash_token(token)
        # Every entry is compared in constant time, so timing tells nothing about which hashes exist.
        match = None
        for entry in self._entries:
            if hmac.compare_digest(entry.sha256, digest):
                match = entry
        if match is None:
            return AuthResult(None, grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token")
        if match.expired(self._clock()):
            return AuthResult(match.id, grpc.StatusCode.UNAUTHENTICATED,
                              f"token {match.id!r} expired at {format_time(match.expires)}")
        if method not in match.methods:
            return AuthResult(match.id, grpc.StatusCode.PERMISSION_DENIED,
                              f"token {match.id!r} may not call {method}")
        return AuthResult(match.id)


def read_entries(path: Path) -> list[TokenEntry]:
    """The token file's entries, checked line by line; ConfigError naming the line otherwise."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("tokens", f"cannot read {path}: {err}") from None
    entries: list[TokenEntry] = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError("tokens", f"{where}: not JSON: {err.msg}") from None
        entries.append(_entry(where, record))
    hashes = [e.sha256 for e in entries]
    if len(set(hashes)) != len(hashes):
        raise ConfigError("tokens", f"{path}: the same token hash is listed twice")
    if not entries:
        raise ConfigError("tokens", f"{path} lists no token: no call could be authorised")
    return entries


def _entry(where: str, record: object) -> TokenEntry:
    if not isinstance(record, dict):
        raise ConfigError("tokens", f"{where}: each line must be a JSON object")
    unknown = set(record) - {"id", "sha256", "methods", "expires"}
    if unknown:
        raise ConfigError("tokens", f"{where}: unknown keys {sorted(unknown)} (allowed: id, sha256, methods, expires)")
    token_id, digest = record.get("id"), record.get("sha256")
    if not isinstance(token_id, str) or not _ID.match(token_id):
        raise ConfigError("tokens", f"{where}: 'id' must be 1-64 characters of letters, digits and _.@:-")
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise ConfigError("tokens", f"{where}: 'sha256' must be 64 lowercase hex digits (the token's SHA-256)")
    methods = record.get("methods", list(METHODS))
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise ConfigError("tokens", f"{where}: 'methods' must be a non-empty list of method names")
    bad = sorted(set(methods) - set(METHODS))
    if bad:
        raise ConfigError("tokens", f"{where}: unknown methods {bad} (known: {', '.join(METHODS)})")
    expires = parse_time(where, record["expires"]) if "expires" in record else None
    return TokenEntry(token_id, digest, frozenset(methods), expires)


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def short_method(full_method: str) -> str | None:
    """"/wanrt.v1.VideoGeneration/Generate" -> "Generate"; None for other services (health, reflection)."""
    service, _, name = full_method.lstrip("/").rpartition("/")
    return name if service == SERVICE else None


# (method, context, code, message, token_id): lets the service audit refused calls like any other.
DeniedHook = Callable[[str, grpc.ServicerContext, grpc.StatusCode, str, str | None], None]


class TokenInterceptor(grpc.ServerInterceptor):
    """Checks a wanrt.v1 call's bearer token, once: a refused call never reaches the servicer (nor parses a byte);
    an allowed one reaches it with the token's id as the keyword argument ``token_id``, which the servicer's
    handlers take so that they never check the token again."""

    def __init__(self, tokens: TokenStore, on_denied: DeniedHook | None = None) -> None:
        self._tokens = tokens
        self._on_denied = on_denied

    def use(self, tokens: TokenStore) -> None:
        """A reloaded token file: calls that start from now on are checked against it (one reference swap)."""
        self._tokens = tokens

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> object:
        method = short_method(handler_call_details.method)
        if method is None:
            return continuation(handler_call_details)
        result = self._tokens.check(handler_call_details.invocation_metadata, method)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if result.code is None:
            return _handler_with_token_id(handler, result.token_id)
        return _refusing_handler(handler, method, result, self._on_denied)


def _handler_with_token_id(handler: grpc.RpcMethodHandler, token_id: str | None) -> grpc.RpcMethodHandler:
    """The same handler, its behaviour called with ``token_id=`` (wanrt.v1 has unary and server-streaming calls)."""
    if handler.response_streaming:
        behaviour = handler.unary_stream
        return grpc.unary_stream_rpc_method_handler(
            lambda request, context: behaviour(request, context, token_id=token_id),
            request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    behaviour = handler.unary_unary
    return grpc.unary_unary_rpc_method_handler(
        lambda request, context: behaviour(request, context, token_id=token_id),
        request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


def _refusing_handler(handler: grpc.RpcMethodHandler, method: str, result: AuthResult,
                      on_denied: DeniedHook | None) -> grpc.RpcMethodHandler:
    """A handler of the same shape (unary or streaming response) that only sets the refusal status."""

    def refuse(_request: object, context: grpc.ServicerContext) -> None:
        if on_denied is not None:
            on_denied(method, context, result.code, result.message, result.token_id)
        context.abort(result.code, result.message)

    if handler.response_streaming:
        def refuse_stream(request: object, context: grpc.ServicerContext) -> object:
            refuse(request, context)
            yield from ()

        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)


def certificate_subject(context: grpc.ServicerContext) -> str | None:
    """The verified client certificate's subject (mutual TLS), or None."""
    auth = context.auth_context() or {}
    for key in ("x509_subject", "x509_common_name"):
        values = auth.get(key)
        if values:
            return values[0].decode("utf-8", "replace")
    return None
