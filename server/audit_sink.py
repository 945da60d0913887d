"""The audit log's second sink: every signed head is also written somewhere the audit file's writer cannot
rewrite along with it, so a log cut back to an earlier checkpoint still shows (`wanrt audit verify --heads`).

``--audit-head-sink`` takes a file (put it on another mount, or a host path the container only appends to)
or ``syslog`` / ``syslog:/path/to/socket`` / ``syslog:HOST:PORT`` (UDP): journald reads /dev/log, so on a
systemd host the heads land in the journal (``journalctl -t wanrt-audit -o cat > heads.jsonl``). Each entry is
one JSON line: the time, the audit file, and the signed statement of the head.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
from pathlib import Path
from typing import Any

from wanrt.server.errors import ConfigError

SYSLOG_IDENT = "wanrt-audit"
_DEFAULT_SOCKET = "/dev/log"


class HeadSink:
    """Where signed heads go besides the audit file. ``write`` raises OSError when the entry could not be
    written: the audit log then fails the call, as for its own writes."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._syslog: logging.handlers.SysLogHandler | None = None
        self._path: Path | None = None
        if target == "syslog" or target.startswith("syslog:"):
            address = syslog_target(target)
            try:
                self._syslog = _StrictSysLogHandler(
                    address=address, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV,
                    socktype=socket.SOCK_DGRAM)
            except OSError as err:
                raise ConfigError("audit_head_sink", f"cannot reach syslog at {address}: {err.strerror or err}") \
                    from None
            self._syslog.ident = f"{SYSLOG_IDENT}: "
            self._syslog.append_nul = False  # a NUL after the JSON would reach the journal's message
        else:
            from wanrt.server.config import check_appendable

            self._path = Path(target.removeprefix("file:"))
            check_appendable("audit_head_sink", self._path)

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"), sort_keys=True)
        if self._syslog is not None:
            record = logging.LogRecord(SYSLOG_IDENT, logging.INFO, __file__, 0, line, None, None)
            self._syslog.emit(record)
            return
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._syslog is not None:
            self._syslog.close()


class _StrictSysLogHandler(logging.handlers.SysLogHandler):
    """A failed send raises (logging's handlers print and carry on): an unrecorded head fails like an
    unrecorded audit line."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        raise  # noqa: PLE0704 (called from emit's except block: re-raises the send's error)


def same_mount(a: Path, b: Path) -> bool:
    """Whether two paths' folders lie on one file system (a second sink there protects against less)."""
    try:
        return os.stat(Path(a).parent).st_dev == os.stat(Path(b).parent).st_dev
    except OSError:
        return False


def syslog_target(target: str) -> str | tuple[str, int]:
    """The address of ``syslog``, ``syslog:/socket`` or ``syslog:HOST:PORT``; ConfigError for anything else."""
    rest = target.partition(":")[2]
    if not rest:
        return _DEFAULT_SOCKET
    if rest.startswith("/"):
        return rest
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("audit_head_sink", f"syslog target must be syslog, syslog:/socket/path or "
                                             f"syslog:HOST:PORT, got {target!r}")
    return host, int(port)
