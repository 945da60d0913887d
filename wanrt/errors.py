"""Typed errors raised inside wanrt. The CLI and the gRPC server map them to exit codes / status codes once."""


class WanrtError(Exception):
    """Base of every error wanrt raises on purpose."""


class InvalidRequestError(WanrtError, ValueError):
    """A generation parameter is out of range; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ModelFormatError(WanrtError):
    """A model folder is not a Wan pipeline wanrt can read (missing parts, unsupported config)."""


class ArtifactError(WanrtError):
    """An exported artifact folder is incomplete, inconsistent or tampered with (hash mismatch)."""


class ExportVerificationError(WanrtError):
    """An exported graph disagrees with PyTorch beyond tolerance."""


class BackendUnavailableError(WanrtError):
    """The requested backend's runtime is not installed on this machine."""


class DeviceUnavailableError(BackendUnavailableError):
    """The device asked for (``--device cuda``) cannot be used: no driver, no device, or a library the backend
    needs on it is missing. Never answered by running somewhere else: the CLI exits 2 with ``reason``."""

    def __init__(self, device: str, reason: str) -> None:
        super().__init__(f"--device {device}: {reason}")
        self.device = device
        self.reason = reason


class CancelledError(WanrtError):
    """Generation stopped at a step boundary because the caller asked it to."""


class SignatureError(ArtifactError):
    """A folder or report is unsigned, signed by an untrusted key, or changed since it was signed."""


class AuditChainError(WanrtError):
    """An audit log's hash chain is broken: a record was edited, deleted, reordered or truncated."""


class ConfinementError(WanrtError):
    """The process does not run under the SELinux type it was told to require (or SELinux is off)."""


class ProvenanceError(WanrtError):
    """C2PA material is missing, mismatched or refused, or a video's provenance could not be signed or read."""


class InsufficientMemoryError(WanrtError):
    """A request does not fit in memory: refused before it runs (its estimate exceeds the memory budget), or
    an allocation failed while it ran. The service stays up; the CLI exits 2, gRPC answers RESOURCE_EXHAUSTED."""


class StateError(WanrtError):
    """This installation's state folder (its secrets, its provenance certificate) cannot be used: missing and not
    creatable, not writable, or writable by others. Fails the command; nothing falls back to a weaker default."""
