"""notification-service: SMS about orders, payments and low stock, and the messages of broadcast campaigns.

    GET /notifications                    the caller's own messages (admins and services: all), newest
                                          first; filters status, template, campaignId, orderId,
                                          eventType, userId (admins); page, pageSize (1-100)
    GET /notifications/{notificationId}   one message: its recipient, an admin or a service (404 otherwise)

Consumes (one message per event and recipient, so a redelivered or repeated event sends nothing twice):
    order.created          the buyer (order.confirmation) and the seller (order.new)
    order.status.updated   the buyer (order.status, with the reason when there is one), except paid and
                           payment_failed, which the payment events below already announce
    payment.processed      the payer (payment.receipt) and, for a payment made for an order (source
                           "order"), the seller (order.paid); a direct charge (source "api") only the payer
    payment.failed         the payer (payment.failed), except reason order_cancelled: an order whose stock
                           could not be reserved is not charged, and its cancellation tells the buyer
    product.stock.updated  the seller (stock.low), when lowStock is true and the stock just fell to the
                           threshold or below, or to zero; not again for every sale while it stays low
    broadcast.requested    each recipient of a campaign batch (template broadcast, the campaign's text)
    user.created, user.updated   a local copy of users (email, phone when an event carries one)

The address: a phone number in the event's data (order.created's `phone`), else the user's phone from the
local copy, else the user's email, else the user ID itself. user-service keeps no phone numbers today,
so messages go to the email address (a provider may hand them to an email-to-SMS gateway) and, for a user
whose user.created has not arrived, to the user ID. Broadcast recipients are user IDs, E.164 numbers or
email addresses. The buyer and seller of an order come from the event (userId) or from the local copy
of order.created; when an event needs that copy and order.created has not been handled yet, the handler
fails and the kit delivers the event again later (KADAI_EVENTS_RETRY_DELAY, KADAI_EVENTS_MAX_ATTEMPTS).

Handlers only record messages (pending); the dispatcher (services/notification/dispatcher.py) sends
them through the provider and publishes:
    notification.sent    {notificationId, channel: "sms", to, template, relatedEventId, relatedEventType,
                          userId?, campaignId?, orderId?, productId?}
    notification.failed  the same and reason, once a message is given up (services/notification/events.py)

Environment (services/notification/config.py): NOTIFY_PROVIDER (log | http), NOTIFY_HTTP_URL,
NOTIFY_HTTP_TOKEN, NOTIFY_HTTP_TIMEOUT, NOTIFY_MAX_ATTEMPTS, NOTIFY_RETRY_DELAY, NOTIFY_POLL_INTERVAL,
NOTIFY_CONCURRENCY. Logs show addresses masked.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from gateway.logs import log_fields
from services.broadcast.events import BROADCAST_REQUESTED, PHONE, RecipientKind, recipient_kind
from services.events import (
    NOTIFICATION_SENT,
    ORDER_CREATED,
    ORDER_STATUS_UPDATED,
    PAYMENT_FAILED,
    PAYMENT_PROCESSED,
    PRODUCT_STOCK_UPDATED,
    USER_CREATED,
    USER_UPDATED,
)
from services.kit import (
    TOKEN_REQUIRED,
    Call,
    Event,
    EventContext,
    Forbidden,
    NotFound,
    PageQuery,
    Routes,
    Row,
    Service,
    Transaction,
    error,
    path_parameter,
    query_parameters,
    reply,
)
from services.notification import store
from services.notification.config import NotifyConfig
from services.notification.dispatcher import dispatching
from services.notification.events import NOTIFICATION_FAILED
from services.notification.messages import money, reason, render
from services.notification.models import (
    BroadcastRequested,
    NotificationOut,
    NotificationPage,
    NotificationQuery,
    OrderCreated,
    OrderStatusUpdated,
    PaymentOutcome,
    StockUpdated,
    UserChanged,
)

log = logging.getLogger("services.notification")

PRIVILEGED_ROLES = frozenset({"admin", "service"})
ANNOUNCED_BY_PAYMENTS = frozenset({"paid", "payment_failed"})
"""Order statuses whose news the payment events already bring (with the amount): no second message."""
UNANNOUNCED_FAILURES = frozenset({"order_cancelled"})
"""payment.failed reasons the buyer hears of otherwise: an order whose stock could not be reserved is not
charged, and its cancellation (order.status.updated) tells them why."""


class OrderNotKnownYet(LookupError):
    """A payment or status event arrived before its order.created was handled; the kit delivers it again."""


@dataclass(frozen=True, slots=True)
class Recipient:
    key: str
    """Who, as the event named them (user ID or address): one message per event and key."""
    user_id: str | None
    address: str
    kind: RecipientKind


# --- recipients -------------------------------------------------------------------------------------


async def user_recipient(tx: Transaction, user_id: str, phone: str | None = None) -> Recipient:
    """A user's address: the phone given, else theirs from the local copy, else their email, else their ID."""
    if phone and PHONE.match(phone):
        return Recipient(user_id, user_id, phone, "phone")
    user = await store.user(tx, user_id)
    if user is not None and user["phone"] and PHONE.match(user["phone"]):
        return Recipient(user_id, user_id, user["phone"], "phone")
    if user is not None and user["email"]:
        return Recipient(user_id, user_id, user["email"], "email")
    return Recipient(user_id, user_id, user_id, "user")


async def named_recipient(tx: Transaction, value: str) -> Recipient | None:
    """A broadcast recipient: a user ID (resolved), a phone number or an email; None when it is none."""
    kind = recipient_kind(value)
    if kind is None:
        return None
    if kind == "user":
        return await user_recipient(tx, value)
    # An address that belongs to a known user is that user's message too (they see it in their list).
    user_id = await store.user_id_by_email(tx, value) if kind == "email" else None
    return Recipient(value, user_id, value, kind)


def _notification(
    event: Event, recipient: Recipient, template: str, body: str, **refs: str | None
) -> store.NewNotification:
    return store.NewNotification(
        event_id=event.id,
        event_type=event.type,
        request_id=event.request_id,
        recipient=recipient.key,
        user_id=recipient.user_id,
        address=recipient.address,
        address_kind=recipient.kind,
        template=template,
        body=body,
        campaign_id=refs.get("campaign_id"),
        order_id=refs.get("order_id"),
        product_id=refs.get("product_id"),
    )


# --- event handlers ---------------------------------------------------------------------------------


async def on_user_changed(event: Event, ctx: EventContext) -> None:
    user = UserChanged.model_validate(event.data)
    phone = user.phone if user.phone and PHONE.match(user.phone) else None
    await store.upsert_user(
        ctx.tx, user.user_id, email=user.email, phone=phone, name=user.name, role=user.role, at=event.timestamp
    )


async def on_order_created(event: Event, ctx: EventContext) -> None:
    order = OrderCreated.model_validate(event.data)
    await store.remember_order(
        ctx.tx,
        order.order_id,
        user_id=order.user_id,
        seller_id=order.seller_id,
        amount_cents=order.amount_cents,
        currency=order.currency,
        phone=order.phone,
    )
    amount = money(order.amount_cents, order.currency)
    buyer = await user_recipient(ctx.tx, order.user_id, order.phone)
    items = [
        _notification(
            event,
            buyer,
            "order.confirmation",
            render("order.confirmation", orderId=order.order_id, amount=amount),
            order_id=order.order_id,
        )
    ]
    if order.seller_id is not None:
        seller = await user_recipient(ctx.tx, order.seller_id)
        body = render("order.new", orderId=order.order_id, amount=amount)
        items.append(_notification(event, seller, "order.new", body, order_id=order.order_id))
    await store.add_notifications(ctx.tx, items)


async def on_order_status_updated(event: Event, ctx: EventContext) -> None:
    update = OrderStatusUpdated.model_validate(event.data)
    if update.status in ANNOUNCED_BY_PAYMENTS:
        return
    order = await store.order(ctx.tx, update.order_id)
    buyer_id = update.user_id or (order["user_id"] if order is not None else None)
    if buyer_id is None:
        raise OrderNotKnownYet(f"order {update.order_id} is not known yet (its order.created has not been handled)")
    buyer = await user_recipient(ctx.tx, buyer_id, order["phone"] if order is not None else None)
    body = render(
        "order.status", orderId=update.order_id, status=update.status.replace("_", " "), reason=reason(update.reason)
    )
    await store.add_notifications(ctx.tx, [_notification(event, buyer, "order.status", body, order_id=update.order_id)])


async def _payer(ctx: EventContext, payment: PaymentOutcome) -> tuple[Recipient, Row | None]:
    """The buyer of a payment, and the order when known. A payment made for an order (source "order")
    always follows its order.created, which also names the seller: until that is handled, the event waits."""
    order = await store.order(ctx.tx, payment.order_id)
    buyer_id = payment.user_id or (order["user_id"] if order is not None else None)
    if buyer_id is None or (order is None and payment.source != "api"):
        raise OrderNotKnownYet(f"order {payment.order_id} is not known yet (its order.created has not been handled)")
    return await user_recipient(ctx.tx, buyer_id, order["phone"] if order is not None else None), order


async def on_payment_processed(event: Event, ctx: EventContext) -> None:
    payment = PaymentOutcome.model_validate(event.data)
    buyer, order = await _payer(ctx, payment)
    cents, currency = payment.amount_cents, payment.currency
    if order is not None:
        cents = order["amount_cents"] if cents is None else cents
        currency = currency or order["currency"]
    amount = money(cents, currency)
    body = render("payment.receipt", orderId=payment.order_id, amount=amount)
    items = [_notification(event, buyer, "payment.receipt", body, order_id=payment.order_id)]
    # A direct charge (source "api") does not move the order: the seller has nothing to ship because of it.
    if payment.source != "api" and order is not None and order["seller_id"] is not None:
        seller = await user_recipient(ctx.tx, order["seller_id"])
        body = render("order.paid", orderId=payment.order_id, amount=amount)
        items.append(_notification(event, seller, "order.paid", body, order_id=payment.order_id))
    await store.add_notifications(ctx.tx, items)


async def on_payment_failed(event: Event, ctx: EventContext) -> None:
    payment = PaymentOutcome.model_validate(event.data)
    if payment.reason in UNANNOUNCED_FAILURES:
        return
    buyer, _order = await _payer(ctx, payment)
    body = render("payment.failed", orderId=payment.order_id, reason=reason(payment.reason))
    await store.add_notifications(
        ctx.tx, [_notification(event, buyer, "payment.failed", body, order_id=payment.order_id)]
    )


def newly_low(data: dict[str, Any], stock: int) -> bool:
    """Whether a low-stock update is news: the stock just fell to the threshold or below, or to zero. When
    the event lacks previousStock or threshold, every low update is news."""
    previous, threshold = data.get("previousStock"), data.get("threshold")
    if not isinstance(previous, int) or not isinstance(threshold, int):
        return True
    return previous > threshold or (stock == 0 and previous > 0)


async def on_stock_updated(event: Event, ctx: EventContext) -> None:
    update = StockUpdated.model_validate(event.data)
    if not update.low_stock or not newly_low(event.data, update.stock):
        return
    seller = await user_recipient(ctx.tx, update.seller_id)
    body = render("stock.low", product=update.name or update.product_id, stock=update.stock)
    await store.add_notifications(
        ctx.tx, [_notification(event, seller, "stock.low", body, product_id=update.product_id)]
    )


async def on_broadcast_requested(event: Event, ctx: EventContext) -> None:
    batch = BroadcastRequested.model_validate(event.data)
    items, skipped = [], 0
    for value in dict.fromkeys(batch.recipients):
        recipient = await named_recipient(ctx.tx, value)
        if recipient is None:
            skipped += 1
            continue
        items.append(_notification(event, recipient, "broadcast", batch.message, campaign_id=batch.campaign_id))
    await store.add_notifications(ctx.tx, items)
    if skipped:
        log.warning(
            "broadcast recipients that are neither a user ID, a phone number nor an email were skipped",
            extra=log_fields(campaignId=batch.campaign_id, skipped=skipped),
        )


# --- routes -----------------------------------------------------------------------------------------

routes = Routes()


@routes.get("/notifications")
async def list_notifications(call: Call) -> NotificationPage:
    query = call.query(NotificationQuery)
    caller = call.caller
    filters = {
        name: value
        for name, value in query.model_dump(exclude=set(PageQuery.model_fields)).items()
        if value is not None
    }
    if caller.role not in PRIVILEGED_ROLES:
        if query.user_id is not None and query.user_id != caller.id:
            raise Forbidden("Only admins see other users' notifications")
        filters["user_id"] = caller.id
    limit, offset = query.window()
    rows, total = await store.list_notifications(call.db, filters, limit=limit, offset=offset)
    return NotificationPage(items=[NotificationOut.from_row(row) for row in rows], pagination=query.page_info(total))


@routes.get("/notifications/{notificationId}")
async def get_notification(call: Call) -> NotificationOut:
    caller = call.caller
    row = await store.get_notification(call.db, call.path("notificationId"))
    # Someone else's message is answered like a missing one: IDs reveal nothing.
    if row is None or (caller.role not in PRIVILEGED_ROLES and row["user_id"] != caller.id):
        raise NotFound("No such notification")
    return NotificationOut.from_row(row)


OPENAPI_PATHS: dict[str, dict[str, Any]] = {
    "/notifications": {
        "get": {
            "summary": "The caller's notifications (admins: everyone's), newest first, paginated",
            "parameters": query_parameters(NotificationQuery),
            "responses": {
                "200": reply("A page of notifications.", NotificationPage),
                "401": TOKEN_REQUIRED,
                "403": error("Only admins see other users' notifications."),
                "422": error("Invalid query parameters; details name them."),
            },
        }
    },
    "/notifications/{notificationId}": {
        "get": {
            "summary": "One notification: its recipient, an admin or a service",
            "parameters": [path_parameter("notificationId")],
            "responses": {
                "200": reply("The notification.", NotificationOut),
                "401": TOKEN_REQUIRED,
                "404": error("No such notification (or not the caller's)."),
            },
        }
    },
}


SERVICE = Service(
    name="notification-service",
    port=3005,
    routes=routes,
    migrations=store.MIGRATIONS,
    publishes=(NOTIFICATION_SENT, NOTIFICATION_FAILED),
    handlers={
        USER_CREATED: on_user_changed,
        USER_UPDATED: on_user_changed,
        ORDER_CREATED: on_order_created,
        ORDER_STATUS_UPDATED: on_order_status_updated,
        PAYMENT_PROCESSED: on_payment_processed,
        PAYMENT_FAILED: on_payment_failed,
        PRODUCT_STOCK_UPDATED: on_stock_updated,
        BROADCAST_REQUESTED: on_broadcast_requested,
    },
    configs=(NotifyConfig,),
    lifespan=dispatching,
)
