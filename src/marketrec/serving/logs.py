"""Structured logs for the service: one JSON object per line on stderr.

Request lines carry their fields (request id, route, status, latency) in `record.fields`,
so a log shipper can index them without parsing text.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...record.fields}`, plus `exc` with a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


def configure_service_logging(level: int = logging.INFO) -> None:
    """Route the `marketrec` loggers to stderr as JSON lines (called in each worker)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("marketrec")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
