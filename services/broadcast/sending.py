"""Handing a campaign to notification-service, now (POST /broadcasts/{id}/send) or when it is due (the
scheduler task, which reads the database and so picks up after a restart whatever fell due meanwhile)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson

from gateway.logs import log_fields, new_request_id, request_id_var
from services.broadcast import store
from services.broadcast.config import BroadcastConfig
from services.broadcast.events import BROADCAST_REQUESTED, recipient_kind
from services.kit import Database, Row, Runtime, Transaction

log = logging.getLogger("services.broadcast")

SENDABLE = frozenset({"draft", "scheduled"})


async def send_campaign(tx: Transaction, campaign: Row, batch_size: int) -> int:
    """Resolve the audience now and publish it in batches, in the transaction that marks the campaign
    sending: the hand-off and the status commit together. Returns the number of recipients."""
    if campaign["recipient_list"] is None:
        # Only IDs notification-service takes for user IDs: each recipient sent must come back as a count.
        recipients = [user_id for user_id in await store.customers(tx) if recipient_kind(user_id) == "user"]
    else:
        recipients = list(dict.fromkeys(orjson.loads(campaign["recipient_list"])))
    await store.mark_sending(tx, campaign["id"], len(recipients))
    for start in range(0, len(recipients), batch_size):
        tx.publish(
            BROADCAST_REQUESTED,
            {
                "campaignId": campaign["id"],
                "senderId": campaign["owner_id"],
                "message": campaign["message"],
                "recipients": recipients[start : start + batch_size],
            },
        )
    log.info(
        "campaign handed to notification-service",
        extra=log_fields(campaignId=campaign["id"], recipients=len(recipients)),
    )
    return len(recipients)


async def send_due(db: Database, batch_size: int) -> int:
    """Send every scheduled campaign whose time has come; returns how many were sent."""
    sent = 0
    for campaign_id in await store.due_campaigns(db):
        # The scheduler's work is traced like a request: one ID for the campaign's events and messages.
        token = request_id_var.set(new_request_id())
        try:
            async with db.transaction() as tx:
                campaign = await store.campaign(tx, campaign_id)
                # Checked again inside the transaction: a manual send may have come first.
                if campaign is not None and campaign["status"] == "scheduled":
                    await send_campaign(tx, campaign, batch_size)
                    sent += 1
        finally:
            request_id_var.reset(token)
    return sent


async def _schedule(db: Database, config: BroadcastConfig) -> None:
    while True:
        try:
            await send_due(db, config.batch_size)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bad pass (database busy, ...) must not end the scheduler
            log.exception("sending due campaigns failed; trying again")
        await asyncio.sleep(config.scheduler_interval)


@asynccontextmanager
async def scheduling(runtime: Runtime) -> AsyncIterator[None]:
    """The service's lifespan: the scheduler task, from start to shutdown."""
    task = asyncio.create_task(_schedule(runtime.db, runtime.config(BroadcastConfig)), name=f"{runtime.name} scheduler")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
