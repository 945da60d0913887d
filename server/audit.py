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
partly truncated line no longer parses: `wanrt audit verify` names the first broken link. A new log begins with
a ``genesis`` record; the chain continues across restarts (a ``start`` checkpoint appended after the last line of
the file, or of its newest uncompressed rotated sibling ``<name>.*``) and across rotations (SIGHUP: a ``rotation``
checkpoint ends the old file, a ``start`` begins the new one). With a signing key every such event, and a
``periodic`` checkpoint after every N records and a ``shutdown`` one at exit, carries a DSSE envelope (wanrt.trust)
signing the record before it; each signed head is also written to the second sink (``--audit-head-sink``). What
that lets the key holder detect: server/audit_chain.py.

The file is created 0600 with its first record already in it (O_TMPFILE, then linked into place): a log never
exists empty or readable by others, and a start refused before the audit log opens leaves no file.
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
    ChainHead,
    checkpoint_envelope,
    head_of_file,
    record_hash,
    resume_point,
)
from wanrt.server.audit_sink import HeadSink

log = logging.getLogger("wanrt.server.audit")


class AuditLog:
    def __init__(self, path: Path, *, fsync: bool = True, checkpoint_every: int = 0, signer: Any = None,
                 head_sink: HeadSink | None = None, meta: dict[str, Any] | None = None) -> None:
        """``signer`` (a securesystemslib Signer) signs every chain event, with ``checkpoint_every`` > 0 also a
        checkpoint after every N records; ``head_sink`` receives each signed head; ``meta`` is recorded in the
        genesis and start records (e.g. which key the prompts' HMACs use)."""
        self.path = Path(path)
        self._fsync = fsync  # the record must survive a crash right after the client got its result
        self._checkpoint_every = checkpoint_every if signer is not None else 0
        self._signer = signer
        self._sink = head_sink
        self._meta = dict(meta or {})
        self._lock = threading.Lock()
        self._since_checkpoint = 0
        # AuditChainError if the file's tail is damaged: fail closed
        self._head, last, present = resume_point(self.path)
        stopped_cleanly = last is None or (last.get("event") == "checkpoint" and last.get("kind") == "shutdown")
        if not stopped_cleanly and self._signer is not None:
            log.warning("audit log %s: the previous server stopped without its shutdown checkpoint (crashed or was "
                        "killed): its records after the last checkpoint are reported as unanchored", self.path)
        self._file = None
        if present:
            self._file = self._open()
            self._event("checkpoint", "start", file_start=False)
        else:
            first = self._event_line("genesis" if self._head.seq == 0 else "checkpoint",
                                     "genesis" if self._head.seq == 0 else "start", file_start=True)
            self._create(first)

    def _open(self) -> Any:
        # O_APPEND: every write lands at the end even if another process (log shipper, rotation) touches it.
        # Append is also all the SELinux policy grants on wanrt_audit_t: no write at an offset, no truncation.
        # No O_CREAT: the file is created by _create, complete and 0600, or not at all.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        mode = os.fstat(fd).st_mode & 0o777
        if mode & 0o077:
            log.warning("audit log %s is mode %o: others may read the audit trail (chmod 600 it)", self.path, mode)
        return os.fdopen(fd, "a", encoding="utf-8")

    def _create(self, line: tuple[str, ChainHead, str]) -> None:
        """Creates the file holding its first record, mode 0600, atomically; then opens it for appending."""
        text, head, kind = line
        create_complete(self.path, (text + "\n").encode())
        self._head = head
        self._file = self._open()
        self._to_sink(kind)

    @property
    def head(self) -> ChainHead:
        return self._head

    def write(self, record: dict[str, Any]) -> None:
        """Appends one line; raises OSError when it could not be written (the caller fails the call)."""
        with self._lock:
            self._append({"time": utc_now(), **_json_safe(record)})
            self._since_checkpoint += 1
            if self._checkpoint_every and self._since_checkpoint >= self._checkpoint_every:
                self._event("checkpoint", "periodic")
                log.info("audit checkpoint: seq %d sha256 %s", self._head.seq, self._head.sha256)

    def _event_line(self, event: str, kind: str, *, file_start: bool = False) -> tuple[str, ChainHead, str]:
        """A chain event's line (signed when there is a key) and the head it makes."""
        record: dict[str, Any] = {"time": utc_now(), "event": event, "kind": kind,
                                  "checkpoint_every": self._checkpoint_every, "file_start": file_start}
        if kind in ("genesis", "start"):
            record.update(self._meta)
        if self._signer is not None:
            record["checkpoint"] = checkpoint_envelope(self._head, self._signer, kind, self._checkpoint_every,
                                                       file_start=file_start)
        line = json.dumps({"seq": self._head.seq + 1, "prev": self._head.sha256, **record}, ensure_ascii=True,
                          separators=(",", ":"), allow_nan=False)
        return line, ChainHead(self._head.seq + 1, record_hash(line.encode())), kind

    def _event(self, event: str, kind: str, *, file_start: bool = False) -> None:
        line, head, kind = self._event_line(event, kind, file_start=file_start)
        self._write_line(line, head)
        self._since_checkpoint = 0
        self._to_sink(kind)

    def _to_sink(self, kind: str) -> None:
        """The head just written (the event line itself), signed, to the second sink: a log cut anywhere before
        its end, even just its last event, no longer contains the sink's latest head."""
        if self._sink is not None and self._signer is not None:
            self._sink.write({"time": utc_now(), "log": str(self.path), "seq": self._head.seq,
                              "sha256": self._head.sha256, "kind": kind,
                              "checkpoint": checkpoint_envelope(self._head, self._signer, kind,
                                                                self._checkpoint_every)})

    def _append(self, record: dict[str, Any]) -> None:
        fields = {k: v for k, v in record.items() if k not in ("seq", "prev")}
        line = json.dumps({"seq": self._head.seq + 1, "prev": self._head.sha256, **fields}, ensure_ascii=True,
                          separators=(",", ":"), allow_nan=False)
        self._write_line(line, ChainHead(self._head.seq + 1, record_hash(line.encode())))

    def _write_line(self, line: str, head: ChainHead) -> None:
        if self._file is None:
            raise OSError(f"{self.path} is not open (reopening after rotation failed)")
        self._file.write(line + "\n")
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())
        self._head = head

    def reopen(self) -> None:
        """After rotation (SIGHUP): a ``rotation`` checkpoint ends the old file, then the path is opened again
        and a ``start`` checkpoint begins it; the chain goes on from the last record written.

        A non-empty file at the path must end with that record (nothing else may write there); otherwise
        writes fail from now on, and the service stops serving rather than record into a forked chain."""
        with self._lock:
            if self._file is not None:
                try:
                    self._event("checkpoint", "rotation")
                except (OSError, ValueError) as err:  # ValueError: the file object was closed under us
                    log.critical("audit log rotation checkpoint failed: %s", err)
                self._file.close()
                self._file = None
            try:
                found = head_of_file(self.path)
                if found is not None and found != self._head:
                    raise OSError(f"{self.path} ends with seq {found.seq}, not this server's last record "
                                  f"seq {self._head.seq}: another writer touched it")
                if found is None:
                    self._create(self._event_line("checkpoint", "start", file_start=True))
                else:
                    self._file = self._open()
                    self._event("checkpoint", "start", file_start=False)
            except (OSError, ValueError) as err:
                log.critical("audit log reopen failed: %s", err)
                self._file = None
                return
            log.info("audit log reopened: %s continues at seq %d", self.path, self._head.seq + 1)

    def close(self) -> None:
        """A ``shutdown`` checkpoint, then the file is closed: a stopped server's log ends anchored."""
        with self._lock:
            if self._file is not None:
                try:
                    self._event("checkpoint", "shutdown")
                except (OSError, ValueError) as err:  # ValueError: the file object was closed under us
                    log.critical("audit log shutdown checkpoint failed: %s", err)
                self._file.close()
                self._file = None
                log.info("audit log closed: head seq %d sha256 %s", self._head.seq, self._head.sha256)
            if self._sink is not None:
                self._sink.close()


def create_complete(path: Path, data: bytes) -> None:
    """Creates ``path`` holding ``data``, mode 0600, so that it appears complete or not at all: written into an
    unnamed file of the folder (O_TMPFILE) and linked into place. Where the file system (or /proc) does not
    allow that, an exclusive create then the write. FileExistsError when the path exists (another writer)."""
    path = Path(path)
    try:
        fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            os.write(fd, data)
            os.fsync(fd)
            os.link(f"/proc/self/fd/{fd}", path, follow_symlinks=True)
            _fsync_dir(path.parent)
            return
        except FileExistsError:
            raise
        except OSError:
            pass  # no /proc, or linking refused (a policy granting create but not link): the exclusive create
        finally:
            os.close(fd)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def open_audit_log(config: Any, *, meta: dict[str, Any] | None = None) -> AuditLog:
    """The server's audit log as ServerConfig describes it (path, optional signed checkpoints, second sink);
    ``meta`` goes into its genesis and start records."""
    signer = None
    if config.audit_signing_key is not None:
        from wanrt.trust.keys import load_signer

        signer = load_signer(config.audit_signing_key)
    sink = HeadSink(config.audit_head_sink) if config.audit_head_sink else None
    return AuditLog(Path(config.audit_log), checkpoint_every=config.audit_checkpoint_every, signer=signer,
                    head_sink=sink, meta=meta)


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
