"""broadcast-service: SMS campaigns of sellers and admins, delivered through notification-service.

    POST /broadcasts              seller, admin   201 a campaign: name, message, audience (a list of user
                                                  IDs, E.164 numbers or emails, or "all-customers"),
                                                  scheduledAt (optional, future): draft or scheduled
    POST /broadcasts/{id}/send    owner, admin    202 send now (a draft, or a scheduled one early);
                                                  409 when it is already sending or sent
    GET  /broadcasts              seller, admin   the caller's campaigns (admins: all, or ownerId=),
                                                  newest first; status filter; page, pageSize (1-100)
    GET  /broadcasts/{id}         owner, admin    one campaign with its status and counts (404 otherwise)

Status: draft -> (scheduled ->) sending -> sent. Sending hands the campaign over: its audience is
resolved ("all-customers" from the local copy of users whose role is customer, fed by user.created and
user.updated) and published as broadcast.requested events of BROADCAST_BATCH_SIZE recipients, in the
transaction that marks it sending. Counts: recipients, delivered (notification.sent with the
campaign's ID), failed (notification.failed) and pending; the campaign is sent once every recipient's
message is delivered or given up. A scheduler task sends scheduled campaigns when due; it reads the
database, so a campaign that fell due while the service was down goes out at the next start.

Publishes broadcast.requested {campaignId, senderId, message, recipients} (services/broadcast/events.py).
Consumes user.created, user.updated, notification.sent, notification.failed.
Environment (services/broadcast/config.py): BROADCAST_SCHEDULER_INTERVAL, BROADCAST_BATCH_SIZE.
"""
from __future__ import annotations

import time
from typing import Any

from services.broadcast import store
from services.broadcast.config import BroadcastConfig
from services.broadcast.events import BROADCAST_REQUESTED
from services.broadcast.models import (
    BroadcastIn,
    BroadcastOut,
    BroadcastPage,
    BroadcastQuery,
    NotificationOutcome,
    UserChanged,
    utc_iso,
)
from services.broadcast.sending import SENDABLE, scheduling, send_campaign
from services.events import NOTIFICATION_SENT, USER_CREATED, USER_UPDATED
from services.kit import (
    TOKEN_REQUIRED,
    Call,
    Conflict,
    Event,
    EventContext,
    Forbidden,
    NotFound,
    Ok,
    Routes,
    Row,
    Service,
    ValidationFailed,
    error,
    ok,
    path_parameter,
    query_parameters,
    reply,
    request_body,
)
from services.notification.events import NOTIFICATION_FAILED

ROLES = ("seller", "admin")

routes = Routes()


@routes.post("/broadcasts", roles=ROLES)
async def create_broadcast(call: Call) -> Ok:
    body = await call.body(BroadcastIn)
    scheduled_epoch = body.scheduled_at.timestamp() if body.scheduled_at is not None else None
    if scheduled_epoch is not None and scheduled_epoch <= time.time():
        raise ValidationFailed(details=[{"field": "scheduledAt", "message": "must be in the future", "type": "past"}])
    async with call.db.transaction() as tx:
        row = await store.insert_campaign(
            tx,
            owner_id=call.caller.id,
            name=body.name,
            message=body.message,
            recipient_list=None if body.audience == "all-customers" else list(body.audience),
            scheduled_at=utc_iso(body.scheduled_at) if body.scheduled_at is not None else None,
            scheduled_epoch=scheduled_epoch,
        )
    return ok(BroadcastOut.from_row(row), status=201, message="Broadcast created")


async def _own_campaign(call: Call, row: Row | None) -> Row:
    # Another owner's campaign is answered like a missing one: IDs reveal nothing.
    if row is None or (call.caller.role != "admin" and row["owner_id"] != call.caller.id):
        raise NotFound("No such broadcast")
    return row


@routes.post("/broadcasts/{broadcastId}/send", roles=ROLES)
async def send_broadcast(call: Call) -> Ok:
    config = call.config(BroadcastConfig)
    async with call.db.transaction() as tx:
        campaign = await _own_campaign(call, await store.campaign(tx, call.path("broadcastId")))
        if campaign["status"] not in SENDABLE:
            raise Conflict(f"This broadcast is already {campaign['status']}", details={"status": campaign["status"]})
        await send_campaign(tx, campaign, config.batch_size)
        row = await store.campaign(tx, campaign["id"])
    assert row is not None
    return ok(BroadcastOut.from_row(row), status=202, message="Broadcast handed over for delivery")


@routes.get("/broadcasts", roles=ROLES)
async def list_broadcasts(call: Call) -> BroadcastPage:
    query = call.query(BroadcastQuery)
    owner_id = query.owner_id
    if call.caller.role != "admin":
        if owner_id is not None and owner_id != call.caller.id:
            raise Forbidden("Only admins see other owners' broadcasts")
        owner_id = call.caller.id
    limit, offset = query.window()
    rows, total = await store.list_campaigns(
        call.db, owner_id=owner_id, status=query.status, limit=limit, offset=offset
    )
    return BroadcastPage(items=[BroadcastOut.from_row(row) for row in rows], pagination=query.page_info(total))


@routes.get("/broadcasts/{broadcastId}", roles=ROLES)
async def get_broadcast(call: Call) -> BroadcastOut:
    return BroadcastOut.from_row(await _own_campaign(call, await store.campaign(call.db, call.path("broadcastId"))))


async def on_user_changed(event: Event, ctx: EventContext) -> None:
    user = UserChanged.model_validate(event.data)
    await store.upsert_user(ctx.tx, user.user_id, email=user.email, role=user.role, at=event.timestamp)


async def on_notification_sent(event: Event, ctx: EventContext) -> None:
    outcome = NotificationOutcome.model_validate(event.data)
    if outcome.campaign_id is not None:
        await store.record_delivery(ctx.tx, outcome.notification_id, outcome.campaign_id, "delivered")


async def on_notification_failed(event: Event, ctx: EventContext) -> None:
    outcome = NotificationOutcome.model_validate(event.data)
    if outcome.campaign_id is not None:
        await store.record_delivery(ctx.tx, outcome.notification_id, outcome.campaign_id, "failed")


_ID = [path_parameter("broadcastId")]
_NOT_SELLER = error("Only sellers and admins run broadcasts.")
_NOT_FOUND = error("No such campaign (or not the caller's).")

OPENAPI_PATHS: dict[str, dict[str, Any]] = {
    "/broadcasts": {
        "post": {
            "summary": "Create a campaign: a draft, or scheduled when scheduledAt is given",
            "requestBody": request_body(BroadcastIn),
            "responses": {
                "201": reply("The campaign", BroadcastOut),
                "400": error("The body is not JSON."),
                "401": TOKEN_REQUIRED,
                "403": _NOT_SELLER,
                "422": error("Invalid fields (details name them); scheduledAt in the past."),
            },
        },
        "get": {
            "summary": "The caller's campaigns (admins: all), newest first, paginated",
            "parameters": query_parameters(BroadcastQuery),
            "responses": {
                "200": reply("A page of campaigns", BroadcastPage),
                "401": TOKEN_REQUIRED,
                "403": _NOT_SELLER,
                "422": error("Invalid query parameters."),
            },
        },
    },
    "/broadcasts/{broadcastId}": {
        "get": {
            "summary": "One campaign with its status and delivery counts",
            "parameters": _ID,
            "responses": {
                "200": reply("The campaign", BroadcastOut),
                "401": TOKEN_REQUIRED,
                "403": _NOT_SELLER,
                "404": _NOT_FOUND,
            },
        }
    },
    "/broadcasts/{broadcastId}/send": {
        "post": {
            "summary": "Send a draft or scheduled campaign now",
            "parameters": _ID,
            "responses": {
                "202": reply("Handed over for delivery; status sending (sent when it has no recipients)", BroadcastOut),
                "401": TOKEN_REQUIRED,
                "403": _NOT_SELLER,
                "404": _NOT_FOUND,
                "409": error("The campaign is already sending or sent."),
            },
        }
    },
}


SERVICE = Service(
    name="broadcast-service",
    port=3006,
    routes=routes,
    migrations=store.MIGRATIONS,
    publishes=(BROADCAST_REQUESTED,),
    handlers={
        USER_CREATED: on_user_changed,
        USER_UPDATED: on_user_changed,
        NOTIFICATION_SENT: on_notification_sent,
        NOTIFICATION_FAILED: on_notification_failed,
    },
    configs=(BroadcastConfig,),
    lifespan=scheduling,
)
