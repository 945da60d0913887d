"""The audit log: one JSON object per line per wanrt.v1 call, appended and flushed to disk before the response
completes (the call fails rather than complete unrecorded).

Each line: ``time`` (UTC, ISO 8601), ``request_id`` (the job id for Generate), ``client_request_id``,
``method``, ``principal`` (token id, else certificate subject, else "anonymous"), ``principal_kind``
("token", "certificate", "none"), ``peer``, ``certificate_subject``, ``params`` (prompt and negative prompt as
SHA-256 unless the server keeps text; latents as SHA-256), ``status`` (gRPC code name), ``error`` (``field``
and ``message``), ``output`` (sha256, bytes, format), ``identity`` (backend, model, artifact hashes) and
``timings`` (seconds). Health checks and reflection are not recorded.

Tamper evidence: every line also carries ``seq`` (1, 2, ...) and ``prev``, the sha256 of the previous line's
exact bytes (64 zeros before the first). Editing, deleting or reordering a line breaks the link after it, and a
partly truncated line no longer parses: `wanrt audit verify` names the first broken link. The chain continues
across restarts (the last line of the file, or of its newest uncompressed rotated sibling ``<name>.*``, gives the
head) and across rotations (SIGHUP reopens the path; the new file's first ``prev`` is the old file's last hash).
With a signing key, every N records a ``checkpoint`` line carries a DSSE envelope (wanrt.trust) signing the
head so far: rewriting the whole chain without the key is then detectable up to the last checkpoint, and the
server logs each checkpoint's head so a removed tail shows against that log (``--expect-head``).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any

from wanrt.server.audit_chain import (
    GENESIS,
    ChainHead,
    checkpoint_envelope,
    head_of_file,
    record_hash,
    resume_head,
)

log = logging.getLogger("wanrt.server.audit")


class AuditLog:
    def __init__(self, path: Path, *, fsync: bool = True, checkpoint_every: int = 0, signer: Any = None) -> None:
        """``signer`` (a securesystemslib Signer) with ``checkpoint_every`` > 0 adds signed checkpoints."""
        self.path = Path(path)
        self._fsync = fsync  # the record must survive a crash right after the client got its result
        self._checkpoint_every = checkpoint_every if signer is not None else 0
        self._signer = signer
        self._lock = threading.Lock()
        self._head = resume_head(self.path)  # AuditChainError if the file's tail is damaged: fail closed
        self._file = self._open()

    def _open(self) -> Any:
        # O_APPEND: every write lands at the end even if another process (log shipper, rotation) touches it.
        # Append is also all the SELinux policy grants on wanrt_audit_t: no write at an offset, no truncation.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    @property
    def head(self) -> ChainHead:
        return self._head

    def write(self, record: dict[str, Any]) -> None:
        """Appends one line; raises OSError when it could not be written (the caller fails the call)."""
        with self._lock:
            self._append({"time": utc_now(), **_json_safe(record)})
            if self._checkpoint_every and self._head.seq % self._checkpoint_every == 0:
                self._append({"time": utc_now(), "event": "checkpoint",
                              "checkpoint": checkpoint_envelope(self._head, self._signer)})
                log.info("audit checkpoint: seq %d sha256 %s", self._head.seq, self._head.sha256)

    def _append(self, record: dict[str, Any]) -> None:
        fields = {k: v for k, v in record.items() if k not in ("seq", "prev")}
        line = json.dumps({"seq": self._head.seq + 1, "prev": self._head.sha256, **fields}, ensure_ascii=True,
                          separators=(",", ":"), allow_nan=False)
        if self._file is None:
            raise OSError(f"{self.path} is not open (reopening after rotation failed)")
        self._file.write(line + "\n")
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        self._head = ChainHead(self._head.seq + 1, record_hash(line.encode()))

    def reopen(self) -> None:
        """After rotation (SIGHUP): opens the path again; the chain goes on from the last record written.

        A non-empty file at the path must end with that record (nothing else may write there); otherwise
        writes fail from now on, and the service stops serving rather than record into a forked chain."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            try:
                found = head_of_file(self.path)
                if found is not None and found != self._head:
                    raise OSError(f"{self.path} ends with seq {found.seq}, not this server's last record "
                                  f"seq {self._head.seq}: another writer touched it")
                self._file = self._open()
            except (OSError, ValueError) as err:
                log.critical("audit log reopen failed: %s", err)
                return
            log.info("audit log reopened: %s continues at seq %d", self.path, self._head.seq + 1)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self._head.sha256 != GENESIS:
                log.info("audit log closed: head seq %d sha256 %s", self._head.seq, self._head.sha256)


def open_audit_log(config: Any) -> AuditLog:
    """The server's audit log as ServerConfig describes it (path, optional signed checkpoints)."""
    signer = None
    if config.audit_signing_key is not None:
        from wanrt.trust.keys import load_signer

        signer = load_signer(config.audit_signing_key)
    return AuditLog(Path(config.audit_log), checkpoint_every=config.audit_checkpoint_every, signer=signer)


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_safe(value: Any) -> Any:
    """NaN and infinities (a client may send them) become strings: the log stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
