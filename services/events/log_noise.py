"""Quiet aio-pika's and aiormq's line per reconnection attempt while the broker is away.

Each attempt (every KADAI_AMQP_RECONNECT_INTERVAL) logs a warning and an info line in aio-pika's robust
connection and an error in aiormq: an outage of a minute wrote thirty of each. The bus says it once instead ("lost the
event broker; reconnecting", with the error, then "reconnected to the event broker"), so these repeats
are dropped; every other line of both libraries passes.
"""
from __future__ import annotations

import logging

# (logger, start of the message template) of the lines written once per failed attempt.
_PER_ATTEMPT = (
    ("aio_pika.robust_connection", 'Connection attempt to "%s" failed'),
    ("aio_pika.robust_connection", 'Connection attempt to "%s" cancelled'),
    ("aio_pika.robust_connection", "Reconnect attempt failed"),
    ("aio_pika.robust_connection", "Connection to %s closed. Reconnecting"),  # info, each failed attempt
    ("aiormq.connection", "error when creating transport"),
)


class PerAttemptReconnectFilter(logging.Filter):
    """Drops the per-attempt reconnection lines of one logger."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.prefixes))


def quiet_reconnect_attempts() -> None:
    """Install the filters (once per process; calling again changes nothing)."""
    by_logger: dict[str, tuple[str, ...]] = {}
    for name, prefix in _PER_ATTEMPT:
        by_logger[name] = (*by_logger.get(name, ()), prefix)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, PerAttemptReconnectFilter) for existing in logger.filters):
            logger.addFilter(PerAttemptReconnectFilter(prefixes))
