"""Structured logging: one JSON object per line on stdout, readable text when stdout is a terminal.

The request ID is bound once per request (a contextvar) and lands on every line logged while it runs.
"""
from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any, TextIO

import orjson

from gateway.envelope import utc_timestamp

request_id_var: ContextVar[str | None] = ContextVar("kadai_request_id", default=None)

_RESERVED = frozenset(("timestamp", "level", "service", "requestId", "message"))


def log_fields(**fields: Any) -> dict[str, dict[str, Any]]:
    """extra= for a log call: logger.info("...", extra=log_fields(duration=12))."""
    return {"fields": fields}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": utc_timestamp(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "requestId": request_id_var.get(),
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            line.update((key, value) for key, value in fields.items() if key not in _RESERVED)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        clock = utc_timestamp(record.created)[11:23]
        text = f"{clock} {record.levelname.lower():<7} {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if fields:
            text += "  " + " ".join(f"{key}={value}" for key, value in fields.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(level: int | str, service: str = "api-gateway", stream: TextIO | None = None) -> None:
    """Route every logger to one handler on stdout; JSON unless stdout is a terminal."""
    stream = stream or sys.stdout
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ConsoleFormatter() if stream.isatty() else JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own access log would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

