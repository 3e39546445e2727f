"""The consumer core shared by every bus: parse a delivery, ignore a duplicate, run the handler in a
transaction, and say whether the delivery is done, to be retried or dead-lettered.

The processed event ID is recorded in the same transaction as the handler's effects: a crash between
the commit and the acknowledgement only causes a redelivery, which is then recognised and skipped.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from gateway.config.errors import field_path
from gateway.logs import log_fields, request_id_var
from services.events.bus import Verdict
from services.events.event import Event, MalformedEvent

if TYPE_CHECKING:
    # Type-only: importing services.kit here would import the kit (which imports this module) first.
    from services.kit.db import Database, Transaction
    from services.kit.metrics import ServiceMetrics
    from services.kit.runtime import Runtime

log = logging.getLogger("services.events")

_ERROR_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class EventContext:
    """What an event handler gets besides the event."""

    tx: Transaction
    """The transaction the handler's writes (and events it publishes) belong to."""
    attempt: int
    """1 on the first delivery, then 2, 3 ... after failures."""
    runtime: Runtime
    """The service's database, settings, metrics and client for other services."""


EventHandler = Callable[[Event, EventContext], Awaitable[None]]


class Consumer:
    def __init__(
        self,
        handlers: Mapping[str, EventHandler],
        db: Database,
        runtime: Runtime,
        metrics: ServiceMetrics,
        max_attempts: int,
    ) -> None:
        self.handlers = dict(handlers)
        self.db = db
        self.runtime = runtime
        self.metrics = metrics
        self.max_attempts = max_attempts

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(self.handlers)

    async def deliver(self, body: bytes, attempt: int) -> Verdict:
        try:
            event = Event.from_json(body)
        except MalformedEvent as exc:
            # No attempt can make it parse: straight to the dead letters.
            log.error("dead-lettered a message that is not an event", extra=log_fields(error=str(exc)))
            self._count("unknown", "dead")
            return Verdict("dead", str(exc))
        handler = self.handlers.get(event.type)
        if handler is None:
            log.warning("no handler for this event type", extra=log_fields(eventId=event.id, type=event.type))
            self._count(event.type, "unhandled")
            return Verdict("unhandled")
        token = request_id_var.set(event.request_id)
        started = time.perf_counter()
        try:
            async with self.db.transaction() as tx:
                if not await tx.mark_processed(event):
                    log.info("duplicate delivery ignored", extra=log_fields(eventId=event.id, type=event.type))
                    self._count(event.type, "duplicate")
                    return Verdict("duplicate")
                await handler(event, EventContext(tx, attempt, self.runtime))
        except Exception as exc:  # noqa: BLE001 - any handler failure is retried, then dead-lettered
            error = describe_failure(exc)
            last = attempt >= self.max_attempts
            log.log(
                logging.ERROR if last else logging.WARNING,
                "event handler failed; dead-lettered" if last else "event handler failed; will retry",
                # A payload that does not validate needs no traceback, and its text would quote the data.
                exc_info=last and not isinstance(exc, ValidationError),
                extra=log_fields(eventId=event.id, type=event.type, attempt=attempt, error=error),
            )
            verdict = Verdict("dead" if last else "retry", error)
            self._count(event.type, verdict.outcome)
            return verdict
        finally:
            self.metrics.handler_seconds.labels(self.metrics.service, event.type).observe(time.perf_counter() - started)
            request_id_var.reset(token)
        self._count(event.type, "ok")
        return Verdict("ok")

    def _count(self, event_type: str, outcome: str) -> None:
        label = {"retry": "retried", "dead": "dead_lettered"}.get(outcome, outcome)
        self.metrics.consumed(event_type, label)
        if outcome == "dead":
            self.metrics.dead_letters.labels(self.metrics.service, event_type).inc()


def describe_failure(exc: Exception) -> str:
    """A handler's failure as logs and dead letters record it. A payload that fails validation is named by
    its fields and messages only: pydantic's own text quotes the input, which holds emails and phone numbers."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{field_path(item['loc']) or '(data)'}: {item['msg']}"
            for item in exc.errors(include_url=False, include_input=False, include_context=False)
        )
        return f"ValidationError: {problems}"[:_ERROR_LIMIT]
    return f"{type(exc).__name__}: {exc}"[:_ERROR_LIMIT]
