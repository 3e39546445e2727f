"""analytics-service: metrics per seller and per product, and platform totals, from every event.

    GET /analytics/sellers/{sellerId}     the seller themself, an admin or a service (customers: 403):
                                          orders, paid orders, revenue (paid orders only, by currency),
                                          units sold, payment failures, stock movements, products,
                                          current stock, low-stock products, notifications sent, top
                                          products by units sold; 404 when nothing is known of the seller
    GET /analytics/products/{productId}   the product's seller, an admin or a service: the same per product
                                          (revenue: quantity x unit price of its paid order lines)
    GET /analytics/summary                admins and services: platform totals and events by type

Consumes every event type the platform publishes (the spec's ten, broadcast.requested,
notification.failed and product.reservation.failed) and records each in a ledger (events by type).
Facts are merged per order, product and payment whatever the order of arrival, and metrics are computed
from them when asked (services/analytics/store.py): a payment.processed that comes before its
order.created still counts once the order is known. An order is paid once payment.processed of the
payment made for it (a direct charge, source "api", is recorded but moves nothing) or a status update to
paid arrived, and stops counting as revenue when a later status is cancelled or refunded. Deleted
products (product.updated with deleted) keep their history but leave the seller's product count and
stock. Notifications count for the seller of the order, product or campaign they were about.
Publishes nothing; no settings of its own.
"""
from __future__ import annotations

from typing import Any

from services.analytics import store
from services.analytics.models import (
    BroadcastRequested,
    NotificationOutcome,
    OrderCreated,
    OrderStatusUpdated,
    PaymentOutcome,
    ProductChanged,
    ProductMetrics,
    ReservationFailed,
    SellerMetrics,
    StockUpdated,
    Summary,
    UserChanged,
)
from services.broadcast.events import BROADCAST_REQUESTED
from services.events import (
    NOTIFICATION_SENT,
    ORDER_CREATED,
    ORDER_STATUS_UPDATED,
    PAYMENT_FAILED,
    PAYMENT_PROCESSED,
    PRODUCT_CREATED,
    PRODUCT_STOCK_UPDATED,
    PRODUCT_UPDATED,
    USER_CREATED,
    USER_UPDATED,
)
from services.kit import (
    TOKEN_REQUIRED,
    Call,
    Event,
    EventContext,
    EventHandler,
    Forbidden,
    NotFound,
    Routes,
    Service,
    error,
    path_parameter,
    reply,
)
from services.notification.events import NOTIFICATION_FAILED
from services.product.events import PRODUCT_RESERVATION_FAILED

PRIVILEGED_ROLES = frozenset({"admin", "service"})

routes = Routes()


@routes.get("/analytics/sellers/{sellerId}", roles=("seller", "admin", "service"))
async def seller_analytics(call: Call) -> SellerMetrics:
    seller_id = call.path("sellerId")
    if call.caller.role not in PRIVILEGED_ROLES and call.caller.id != seller_id:
        raise Forbidden("Sellers see their own analytics only")
    if not await store.seller_known(call.db, seller_id):
        raise NotFound("No data about this seller")
    return await store.seller_metrics(call.db, seller_id)


@routes.get("/analytics/products/{productId}", roles=("seller", "admin", "service"))
async def product_analytics(call: Call) -> ProductMetrics:
    product_id = call.path("productId")
    known, seller_id = await store.product_owner(call.db, product_id)
    if not known:
        raise NotFound("No data about this product")
    if call.caller.role not in PRIVILEGED_ROLES and call.caller.id != seller_id:
        raise Forbidden("Sellers see the analytics of their own products only")
    return await store.product_metrics(call.db, product_id, seller_id)


@routes.get("/analytics/summary", roles=("admin", "service"))
async def summary(call: Call) -> Summary:
    return await store.summary(call.db)


# --- event handlers ---------------------------------------------------------------------------------


async def on_user(event: Event, ctx: EventContext) -> None:
    user = UserChanged.model_validate(event.data)
    await store.record_event(ctx.tx, event, seller_id=user.user_id if user.role == "seller" else None)
    await store.upsert_user(ctx.tx, user.user_id, user.role)


async def on_product(event: Event, ctx: EventContext) -> None:
    product = ProductChanged.model_validate(event.data)
    await store.record_event(ctx.tx, event, seller_id=product.seller_id, product_id=product.product_id)
    await store.upsert_product(ctx.tx, product, event.timestamp)


async def on_stock(event: Event, ctx: EventContext) -> None:
    update = StockUpdated.model_validate(event.data)
    await store.record_event(ctx.tx, event, seller_id=update.seller_id, product_id=update.product_id)
    await store.record_stock(ctx.tx, event, update)


async def on_order_created(event: Event, ctx: EventContext) -> None:
    order = OrderCreated.model_validate(event.data)
    await store.record_event(ctx.tx, event, seller_id=order.seller_id, order_id=order.order_id)
    await store.record_order(ctx.tx, order, event.timestamp)


async def on_order_status(event: Event, ctx: EventContext) -> None:
    update = OrderStatusUpdated.model_validate(event.data)
    await store.record_event(ctx.tx, event, order_id=update.order_id)
    await store.record_status(ctx.tx, update.order_id, update.status, event.timestamp)


async def on_payment_processed(event: Event, ctx: EventContext) -> None:
    payment = PaymentOutcome.model_validate(event.data)
    await store.record_event(ctx.tx, event, order_id=payment.order_id)
    await store.record_payment(ctx.tx, event, payment, "processed")


async def on_payment_failed(event: Event, ctx: EventContext) -> None:
    payment = PaymentOutcome.model_validate(event.data)
    await store.record_event(ctx.tx, event, order_id=payment.order_id)
    await store.record_payment(ctx.tx, event, payment, "failed")


async def on_notification_sent(event: Event, ctx: EventContext) -> None:
    note = NotificationOutcome.model_validate(event.data)
    await store.record_event(ctx.tx, event, product_id=note.product_id, order_id=note.order_id)
    await store.record_notification(ctx.tx, note, "sent")


async def on_notification_failed(event: Event, ctx: EventContext) -> None:
    note = NotificationOutcome.model_validate(event.data)
    await store.record_event(ctx.tx, event, product_id=note.product_id, order_id=note.order_id)
    await store.record_notification(ctx.tx, note, "failed")


async def on_reservation_failed(event: Event, ctx: EventContext) -> None:
    # The order's cancellation arrives as order.status.updated; this one only counts in the ledger.
    failed = ReservationFailed.model_validate(event.data)
    await store.record_event(ctx.tx, event, seller_id=failed.seller_id, order_id=failed.order_id)


async def on_broadcast(event: Event, ctx: EventContext) -> None:
    await store.record_broadcast(ctx.tx, event, BroadcastRequested.model_validate(event.data))


HANDLERS: dict[str, EventHandler] = {
    USER_CREATED: on_user,
    USER_UPDATED: on_user,
    PRODUCT_CREATED: on_product,
    PRODUCT_UPDATED: on_product,
    PRODUCT_STOCK_UPDATED: on_stock,
    ORDER_CREATED: on_order_created,
    ORDER_STATUS_UPDATED: on_order_status,
    PAYMENT_PROCESSED: on_payment_processed,
    PAYMENT_FAILED: on_payment_failed,
    NOTIFICATION_SENT: on_notification_sent,
    NOTIFICATION_FAILED: on_notification_failed,
    BROADCAST_REQUESTED: on_broadcast,
    PRODUCT_RESERVATION_FAILED: on_reservation_failed,
}



OPENAPI_PATHS: dict[str, dict[str, Any]] = {
    "/analytics/sellers/{sellerId}": {
        "get": {
            "summary": "Metrics of one seller: orders, revenue of paid orders, units, payment failures, stock, "
            "notifications",
            "parameters": [path_parameter("sellerId")],
            "responses": {
                "200": reply("The seller's metrics.", SellerMetrics),
                "401": TOKEN_REQUIRED,
                "403": error("A customer, or another seller's analytics."),
                "404": error("Nothing is known of this seller."),
            },
        }
    },
    "/analytics/products/{productId}": {
        "get": {
            "summary": "Metrics of one product (its seller, admins and services)",
            "parameters": [path_parameter("productId")],
            "responses": {
                "200": reply("The product's metrics.", ProductMetrics),
                "401": TOKEN_REQUIRED,
                "403": error("A customer, or another seller's product."),
                "404": error("Nothing is known of this product."),
            },
        }
    },
    "/analytics/summary": {
        "get": {
            "summary": "Platform totals and events by type (admins and services)",
            "responses": {
                "200": reply("The platform's totals.", Summary),
                "401": TOKEN_REQUIRED,
                "403": error("Only admins and services."),
            },
        }
    },
}


SERVICE = Service(
    name="analytics-service",
    port=3007,
    routes=routes,
    migrations=store.MIGRATIONS,
    handlers=HANDLERS,
)
