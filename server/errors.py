"""Errors of the serving layer. frontdoor.status_for gives each (and wanrt.errors) its outcome, in one place; each
transport maps that outcome to its own status at its edge."""

from __future__ import annotations

from wanrt.errors import InvalidRequestError, WanrtError


class ConfigError(InvalidRequestError):
    """A server or client setting is wrong; ``field`` names the option (``tls_cert`` for ``--tls-cert``).

    A subclass of InvalidRequestError so that `wanrt serve` reports it like any bad argument (exit 2,
    ``--tls-cert: ...``); it never reaches a gRPC caller.
    """


class QueueFullError(WanrtError):
    """Every worker is busy and the queue holds its limit of jobs: RESOURCE_EXHAUSTED, retry later."""


class DrainingError(WanrtError):
    """The server is shutting down and takes no new jobs: UNAVAILABLE."""


class RemoteError(WanrtError):
    """Client side: the server answered with an error status other than INVALID_ARGUMENT."""

    def __init__(self, code: str, details: str, *, retryable: bool = False) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code  # grpc.StatusCode name, e.g. "RESOURCE_EXHAUSTED"
        self.details = details
        self.retryable = retryable  # the server said to retry later (its queue was full)


class IntegrityError(WanrtError):
    """Client side: the received video does not match the digest or size the server reported."""


class BodyTooLargeError(WanrtError):
    """An HTTP request body is over the server's request size limit."""


class VideoNotFoundError(WanrtError):
    """No such video or task for this caller (another principal's is reported the same way)."""


class VideoNotReadyError(WanrtError):
    """A video's content was asked for before it completed."""
