"""Log formats of ``stlight serve``: ``text`` (one readable line) or ``json`` (one JSON object per
line, for Loki, Elasticsearch, CloudWatch...). Both carry the request id; uvicorn's own loggers
are routed through the same handler, so its start-up and error lines follow the chosen format.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, Literal

from service.server.request_id import RequestIdFilter

LogFormat = Literal["text", "json"]

# fields the access log line (service.server.request_id) adds to its record, written when present
# (gRPC lines: protocol "grpc", route the method, status the HTTP equivalent of grpc_status)
ACCESS_FIELDS = (
    "protocol", "method", "path", "route", "status", "grpc_status", "duration_ms", "model", "batch", "clips", "client", "key",
    "action", "outcome", "version", "reason",
)  # fmt: skip


def _iso_time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id", [access fields], ["exception"]}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for name in ACCESS_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # default=str: a field that is not JSON (a Path, a numpy int) must not lose the line
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Today's ``time LEVEL logger: message``, then ``request_id=...`` (and model/batch) if any."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tail = [f"{name}={getattr(record, name)}" for name in ("model", "batch") if getattr(record, name, None) is not None]
        request_id = getattr(record, "request_id", None)
        if request_id:
            tail.insert(0, f"request_id={request_id}")
        if not tail:
            return line
        # the traceback, if any, stays last so that the first line reads as one record
        first, newline, rest = line.partition("\n")
        return f"{first} {' '.join(tail)}{newline}{rest}"


def configure(log_format: LogFormat = "text", level: str = "info") -> None:
    """One stderr handler on the root logger with the chosen formatter; uvicorn's loggers (run
    with ``log_config=None``) propagate to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
