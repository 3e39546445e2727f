"""Structured logging: one JSON object per line on stdout, readable text when stdout is a terminal.

The request ID is bound once per request (a contextvar) and lands on every line logged while it runs.
"""
from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any, TextIO

import orjson
from aiohttp.http_exceptions import HttpProcessingError

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


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a full traceback at error level for every request its HTTP parser rejects (it has
    answered 400 already). That is the client's mistake, not ours: keep one short info line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg = "rejected a request the HTTP parser could not read: %s"
            record.args = (error.message,)
            record.exc_info = None
            record.levelno, record.levelname = logging.INFO, "INFO"
            return logging.getLogger().isEnabledFor(logging.INFO)
        return True


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
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())
