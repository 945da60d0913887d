"""The operator's log: one line per finished request (the audit log is the record; this is what `journalctl` and a
log shipper read), in text or JSON (`wanrt serve --log-format`)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

LOG_FORMATS = ("text", "json")
requests_log = logging.getLogger("wanrt.server.requests")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a request line carries its fields under ``request``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
                                "logger": record.name, "message": record.getMessage()}
        request = getattr(record, "request", None)
        if request is not None:
            line["request"] = request
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True, default=str)


def configure(log_format: str) -> None:
    """The serving process's logging, to stderr: ``text`` (a timestamped line) or ``json``."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(True)  # Python warnings in the same format, not as bare stderr text


def request_fields(record: dict[str, Any]) -> dict[str, Any]:
    """What the operator's line says of a finished call, taken from its audit record: never the prompt."""
    params = record.get("params") or {}
    fields = {"id": record.get("request_id"), "method": record.get("method"), "api": record.get("api"),
              "caller": record.get("principal"), "status": record.get("status"),
              "seconds": record.get("timings", {}).get("total_s")}
    if params:
        fields.update(size=f"{params.get('frames')}x{params.get('height')}x{params.get('width')}",
                      steps=params.get("steps"))
    return fields


def log_request(record: dict[str, Any]) -> None:
    fields = request_fields(record)
    text = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    requests_log.info(text, extra={"request": fields})
