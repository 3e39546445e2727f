"""Logging of the one-process platform: the same JSON lines (or terminal text) as `kadai gateway` and
`kadai service`, with each line's `service` naming the part of the process that wrote it.

Each part starts in a context of its own with `current_service` set; every task it creates (request
handlers, consumers, the outbox relay) inherits that context, so its lines carry its name.
"""
from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import TextIO

from gateway.logs import ConsoleFormatter, JsonFormatter

PLATFORM = "kadai-platform"
"""`service` of the lines the orchestration itself writes (start, stop, backends)."""

current_service: ContextVar[str | None] = ContextVar("kadai_current_service", default=None)


class PlatformJsonFormatter(JsonFormatter):
    """JsonFormatter whose `service` is the writing part's, else the default given at construction."""

    @property
    def service(self) -> str:
        return current_service.get() or self._default

    @service.setter
    def service(self, value: str) -> None:
        self._default = value


class PlatformConsoleFormatter(ConsoleFormatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        clock, _, rest = text.partition(" ")
        return f"{clock} {current_service.get() or PLATFORM:<20} {rest}"


def configure(level: int | str, stream: TextIO | None = None) -> None:
    """Like gateway.logs.configure_logging: one handler on stdout, JSON unless stdout is a terminal."""
    stream = stream or sys.stdout
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PlatformConsoleFormatter() if stream.isatty() else PlatformJsonFormatter(PLATFORM))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
