"""Structured logging: one JSON object per line on stdout, readable text when stdout is a terminal.

The request ID is bound once per request (a contextvar) and lands on every line logged while it runs.
"""
from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import time
from contextvars import ContextVar
from typing import Any, BinaryIO, TextIO

import orjson

from gateway.envelope import utc_timestamp

request_id_var: ContextVar[str | None] = ContextVar("kadai_request_id", default=None)


def new_request_id() -> str:
    """A fresh request ID from the OS's randomness, for a request or a task that came with none."""
    return "req_" + os.urandom(12).hex()

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


class DirectJsonSink:
    """The access log's short cut past the logging module: the same JSON line JsonFormatter would make,
    serialised once, and the lines of one event-loop tick written to the handler's byte stream together
    (one system call per tick, also when stdout is unbuffered, as with PYTHONUNBUFFERED in containers).

    A LogRecord, a datetime and a flush per request cost ~14 % of a proxied request's CPU. Used only while
    the handler configure_logging installed is the root's only one (tests capturing logs, or an embedding
    application with handlers of its own, get ordinary records).
    """

    def __init__(self, handler: logging.Handler, stream: BinaryIO, service: str) -> None:
        self.handler = handler
        self.stream = stream
        self.service = service
        self._second = -1
        self._second_text = ""
        self._milli = -1
        self._milli_text = ""
        self._pending: list[bytes] = []
        atexit.register(self.flush)

    def timestamp(self, epoch: float) -> str:
        """utc_timestamp(epoch), with the date and time formatted once per second, the whole text once
        per millisecond (a busy gateway logs several lines in one)."""
        second = int(epoch)
        milli = second * 1000 + int((epoch - second) * 1000)
        if milli == self._milli:
            return self._milli_text
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        self._milli = milli
        self._milli_text = text = f"{self._second_text}.{milli - second * 1000:03d}Z"
        return text

    def write(self, level: str, message: str, request_id: str | None, fields: dict[str, Any]) -> None:
        line = {
            "timestamp": self.timestamp(time.time()),
            "level": level,
            "service": self.service,
            "requestId": request_id,
            "message": message,
            **fields,
        }
        pending = self._pending
        pending.append(orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE))
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:
                self.flush()

    def flush(self) -> None:
        """Write the lines waiting for the end of the tick (also at exit)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        try:
            self.stream.write(b"".join(pending))
            self.stream.flush()
        except (OSError, ValueError):  # stdout closed or gone: logging would drop the lines too
            pass


_direct_sink: DirectJsonSink | None = None


def direct_sink() -> DirectJsonSink | None:
    """The direct sink, while the handler it writes beside is still the only one; else None."""
    sink = _direct_sink
    if sink is None:
        return None
    handlers = logging.root.handlers
    if len(handlers) != 1 or handlers[0] is not sink.handler:
        return None
    return sink


def configure_logging(level: int | str, service: str = "api-gateway", stream: TextIO | None = None) -> None:
    """Route every logger to one handler on stdout; JSON unless stdout is a terminal."""
    global _direct_sink
    stream = stream or sys.stdout
    handler = logging.StreamHandler(stream)
    terminal = stream.isatty()
    handler.setFormatter(ConsoleFormatter() if terminal else JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    binary = getattr(stream, "buffer", None)
    # Same bytes either way; text lines written through the handler are flushed at once, so the order holds.
    _direct_sink = DirectJsonSink(handler, binary, service) if binary is not None and not terminal else None
    # aiohttp's own access log would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

