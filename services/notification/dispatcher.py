"""The dispatcher: sends pending notifications through the provider, outside any transaction.

Event handlers only record what to send (status pending), in their own short transaction. This task
picks up due messages every NOTIFY_POLL_INTERVAL, sends up to NOTIFY_CONCURRENCY at once, then records
each outcome and publishes notification.sent (or notification.failed) in one transaction: a provider
that is slow or down holds no database lock and costs no event redeliveries. A failed send is tried
again after NOTIFY_RETRY_DELAY, doubled each time (at most an hour), up to NOTIFY_MAX_ATTEMPTS sends.

A crash between the provider's answer and that transaction sends the message again at the next start:
delivery to the provider is at least once, with the notification ID as its idempotency key.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.logs import log_fields, request_id_var
from services.events import NOTIFICATION_SENT
from services.kit import Database, Row, Runtime, Transaction
from services.notification import store
from services.notification.config import NotifyConfig
from services.notification.events import NOTIFICATION_FAILED
from services.notification.providers import SendFailed, SmsMessage, SmsProvider, make_provider, mask_address

log = logging.getLogger("services.notification")

BATCH = 100
MAX_RETRY_DELAY = 3600.0

Outcome = tuple[Row, str | None, SendFailed | None]
"""A message, the provider's message ID when it was sent, the failure when it was not."""


def retry_at(now: float, attempts_done: int, delay: float) -> float:
    """When the next send is due after attempts_done failed ones: delay, 2 x delay, 4 x delay ... capped."""
    return now + min(delay * 2 ** max(attempts_done - 1, 0), MAX_RETRY_DELAY)


class Dispatcher:
    def __init__(self, db: Database, provider: SmsProvider, config: NotifyConfig) -> None:
        self.db = db
        self.provider = provider
        self.config = config
        self._slots = asyncio.Semaphore(config.concurrency)

    async def run(self) -> None:
        while True:
            try:
                while await self.dispatch_due() == BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bad pass (database busy, ...) must not end the dispatcher
                log.exception("notification dispatch failed; trying again")
            await asyncio.sleep(self.config.poll_interval)

    async def dispatch_due(self) -> int:
        """Send one batch of due messages and record the outcomes; returns how many were due."""
        rows = await store.due(self.db, BATCH)
        if not rows:
            return 0
        outcomes = await asyncio.gather(*(self._send(row) for row in rows))
        async with self.db.transaction() as tx:
            for row, message_id, failure in outcomes:
                await self._record(tx, row, message_id, failure)
        return len(rows)

    async def _send(self, row: Row) -> Outcome:
        message = SmsMessage(row["id"], row["address"], row["body"], row["template"])
        async with self._slots:
            try:
                return row, await self.provider.send(message), None
            except SendFailed as exc:
                return row, None, exc
            except Exception as exc:  # noqa: BLE001 - a provider bug counts as a failed attempt, not a stuck queue
                log.exception("the SMS provider raised", extra=log_fields(notificationId=row["id"]))
                return row, None, SendFailed(f"provider error: {type(exc).__name__}")

    async def _record(self, tx: Transaction, row: Row, message_id: str | None, failure: SendFailed | None) -> None:
        # Each event carries the request ID of the event that asked for the message: one trace end to end.
        token = request_id_var.set(row["request_id"])
        try:
            if failure is None:
                if await store.mark_sent(tx, row["id"], self.provider.name, message_id):
                    tx.publish(NOTIFICATION_SENT, _payload(row))
                return
            attempts = row["attempts"] + 1
            fields = log_fields(
                notificationId=row["id"], to=mask_address(row["address"]), attempt=attempts, error=failure.reason
            )
            if failure.permanent or attempts >= self.config.max_attempts:
                if await store.mark_failed(tx, row["id"], self.provider.name, failure.reason):
                    tx.publish(NOTIFICATION_FAILED, {**_payload(row), "reason": failure.reason})
                log.error("notification failed for good", extra=fields)
                return
            next_attempt = retry_at(time.time(), attempts, self.config.retry_delay)
            await store.mark_retry(tx, row["id"], failure.reason, next_attempt)
            log.warning("notification not sent; will retry", extra=fields)
        finally:
            request_id_var.reset(token)


_OPTIONAL_FIELDS = (
    ("userId", "user_id"), ("campaignId", "campaign_id"), ("orderId", "order_id"), ("productId", "product_id")
)


def _payload(row: Row) -> dict[str, object]:
    payload: dict[str, object] = {
        "notificationId": row["id"],
        "channel": row["channel"],
        "to": row["address"],
        "template": row["template"],
        "relatedEventId": row["event_id"],
        "relatedEventType": row["event_type"],
    }
    for key, column in _OPTIONAL_FIELDS:
        if row[column] is not None:
            payload[key] = row[column]
    return payload


@asynccontextmanager
async def dispatching(runtime: Runtime) -> AsyncIterator[None]:
    """The service's lifespan: the provider and the dispatcher task, from start to shutdown."""
    config = runtime.config(NotifyConfig)
    provider = make_provider(config)
    dispatcher = Dispatcher(runtime.db, provider, config)
    task = asyncio.create_task(dispatcher.run(), name=f"{runtime.name} dispatcher")
    log.info("notification dispatcher started", extra=log_fields(provider=provider.name))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await provider.close()
