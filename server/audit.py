"""The audit log: one JSON object per line per wanrt.v1 call, appended and flushed to disk before the response
completes (the call fails rather than complete unrecorded).

Each line: ``time`` (UTC, ISO 8601), ``request_id`` (the job id for Generate), ``client_request_id``,
``method``, ``principal`` (token id, else certificate subject, else "anonymous"), ``principal_kind``
("token", "certificate", "none"), ``peer``, ``certificate_subject``, ``params`` (prompt and negative prompt as
SHA-256 unless the server keeps text; latents as SHA-256), ``status`` (gRPC code name), ``error`` (``field``
and ``message``), ``output`` (sha256, bytes, format), ``identity`` (backend, model, artifact hashes) and
``timings`` (seconds). Health checks and reflection are not recorded.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import threading
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = fsync  # the record must survive a crash right after the client got its result
        self._lock = threading.Lock()
        # O_APPEND: every write lands at the end even if another process (log shipper, rotation) touches it.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Appends one line; raises OSError when it could not be written (the caller fails the call)."""
        line = json.dumps({"time": utc_now(), **_json_safe(record)}, ensure_ascii=True, separators=(",", ":"),
                          allow_nan=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            self._file.close()


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
