"""order-service (port 3003): orders of one seller's products and their payment status.

    POST /orders           a user     201 {order}; items [{productId, quantity}] checked with product-service
                                      (POST /products/validate, service token, X-Request-ID passed on,
                                      ORDER_PRODUCT_TIMEOUT): prices are product-service's current ones.
                                      422 unknown product (details items[i].productId) or items of several
                                      sellers or currencies; 409 not enough stock right now; 503 when
                                      product-service cannot be reached, is too slow, or fails
    GET  /orders                      {orders, pagination}: the caller's own orders, newest first; a seller
                                      adds ?sellerId=<own id> for the orders of their products; admins and
                                      services see all (filters status, sellerId, userId); page/pageSize or
                                      limit/offset
    GET  /orders/{orderId}            {order}: its buyer, its seller, admins and services; 404 for anyone else

An order holds the products of one seller (so order.created names one sellerId) and starts `pending`.
Statuses: pending -> paid | payment_failed | cancelled, and paid -> cancelled (stock turned out unavailable
after the payment went through: payment-service refunds it). Every other move is ignored, so a repeated or
late event changes nothing.

Publishes (through the outbox):
    order.created         {orderId, userId, sellerId, items: [{productId, quantity, unitPriceCents}],
                          amountCents, currency}
    order.status.updated  {orderId, status, previousStatus, userId, sellerId, amountCents, currency, reason?}

Consumes:
    payment.processed           pending -> paid
    payment.failed              pending -> payment_failed (reason: the payment's)
    product.reservation.failed  pending or paid -> cancelled (reason: unknown_product or insufficient_stock)
Only the payment payment-service makes for the order itself moves it (source "order"): a direct charge
through POST /payments names an order but cannot pay for or fail it.

Environment: ORDER_PRODUCT_TIMEOUT (default 3s); PRODUCT_SERVICE_URL (the kit's: where product-service is).
"""
from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from gateway.logs import log_fields
from services.events import ORDER_CREATED, ORDER_STATUS_UPDATED, PAYMENT_FAILED, PAYMENT_PROCESSED
from services.kit import (
    TOKEN_REQUIRED,
    BadGateway,
    Call,
    Conflict,
    Event,
    EventContext,
    Forbidden,
    GatewayTimeout,
    NotFound,
    Ok,
    Routes,
    Service,
    ServiceUnavailable,
    ValidationFailed,
    error,
    listed,
    ok,
    path_parameter,
    query_parameters,
    reply,
    request_body,
    wrapped,
)
from services.order import store
from services.order.config import OrderConfig
from services.order.models import CheckedItem, CheckedItems, OrderIn, OrderOut, OrderQuery
from services.product.events import PRODUCT_RESERVATION_FAILED, PaymentOutcome, ReservationFailed

log = logging.getLogger("services.order")

PRODUCT_SERVICE = "product-service"
_PRIVILEGED = frozenset({"admin", "service"})

routes = Routes()


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        f"{PRODUCT_SERVICE} is unavailable; try again shortly", details={"service": PRODUCT_SERVICE}
    )


def _unexpected(what: str) -> BadGateway:
    return BadGateway(f"{PRODUCT_SERVICE} {what}", details={"service": PRODUCT_SERVICE})


async def _check_items(call: Call, body: OrderIn) -> list[CheckedItem]:
    """product-service's view of the items, in the order sent; 503 when it cannot give one."""
    try:
        answer = await call.services.post(
            PRODUCT_SERVICE,
            "/products/validate",
            json={"items": [item.model_dump(by_alias=True) for item in body.items]},
            timeout=call.config(OrderConfig).product_timeout,
        )
    except (BadGateway, GatewayTimeout) as exc:
        log.warning("could not check an order's items", extra=log_fields(error=exc.message))
        raise _unavailable() from None
    if answer.status >= 500:
        log.warning("product-service failed the item check", extra=log_fields(status=answer.status))
        raise _unavailable()
    try:
        checked = CheckedItems.model_validate(answer.data).items
    except ValidationError:
        raise _unexpected("answered the item check unexpectedly") from None
    by_id = {item.product_id: item for item in checked}
    if any(item.product_id not in by_id for item in body.items):
        raise _unexpected("left items out of its answer")
    return [by_id[item.product_id] for item in body.items]


def _lines(body: OrderIn, checked: list[CheckedItem]) -> tuple[str, str, list[store.Line]]:
    """(seller, currency, lines) of the order's items as product-service checked them; 422 unknown
    products or several sellers or currencies; 409 not enough stock."""
    unknown = [
        {"field": f"items[{index}].productId", "message": "no such product", "type": "unknown_product"}
        for index, item in enumerate(checked)
        if not item.found
    ]
    if unknown:
        raise ValidationFailed("Unknown products", details=unknown)
    lines, sellers, currencies = [], set(), set()
    for wanted, item in zip(body.items, checked, strict=True):
        if item.seller_id is None or item.currency is None or item.unit_price_cents is None or item.name is None:
            raise _unexpected("answered the item check unexpectedly")
        lines.append(store.Line(item.product_id, item.name, wanted.quantity, item.unit_price_cents))
        sellers.add(item.seller_id)
        currencies.add(item.currency)
    for values, what, several in ((sellers, "seller", "sellers"), (currencies, "currency", "currencies")):
        if len(values) > 1:
            message = f"items of several {several}: {sorted(values)}"
            problem = {"field": "items", "message": message, "type": f"mixed_{several}"}
            raise ValidationFailed(f"An order's items must share one {what}", details=[problem])
    short = [
        {"field": f"items[{index}].quantity", "message": f"only {item.stock} in stock", "type": "insufficient_stock"}
        for index, item in enumerate(checked)
        if not item.enough_stock
    ]
    if short:
        raise Conflict("Not enough stock", details=short)
    return sellers.pop(), currencies.pop(), lines


@routes.post("/orders")
async def create_order(call: Call) -> Ok:
    body = await call.body(OrderIn)
    caller = call.caller
    if caller.is_service:
        raise Forbidden("Orders are placed with a user's token")
    # Checked before the transaction: no call to another service while holding the write lock.
    seller_id, currency, lines = _lines(body, await _check_items(call, body))
    async with call.db.transaction() as tx:
        order, items = await store.insert_order(tx, caller.id, seller_id, currency, lines)
        tx.publish(
            ORDER_CREATED,
            {
                "orderId": order["id"],
                "userId": order["user_id"],
                "sellerId": order["seller_id"],
                "items": [
                    {
                        "productId": item["product_id"],
                        "quantity": item["quantity"],
                        "unitPriceCents": item["unit_price_cents"],
                    }
                    for item in items
                ],
                "amountCents": order["amount_cents"],
                "currency": order["currency"],
            },
        )
    return ok({"order": OrderOut.from_rows(order, items)}, status=201, message="Order created")


@routes.get("/orders")
async def list_orders(call: Call) -> dict[str, object]:
    query = call.query(OrderQuery)
    limit, offset = query.window()
    caller = call.caller
    if caller.role in _PRIVILEGED:
        where = store.OrderFilter(user_id=query.user_id, seller_id=query.seller_id, status=query.status)
    elif query.user_id is not None and query.user_id != caller.id:
        raise Forbidden("Only admins list other users' orders")
    elif query.seller_id is not None:
        if query.seller_id != caller.id:
            raise Forbidden("A seller lists the orders of their own products only")
        where = store.OrderFilter(seller_id=caller.id, status=query.status)
    else:
        where = store.OrderFilter(user_id=caller.id, status=query.status)
    orders, total = await store.list_orders(call.db, where, limit, offset)
    return {"orders": [OrderOut.from_rows(order, items) for order, items in orders], "pagination": query.meta(total)}


@routes.get("/orders/{order_id}")
async def get_order(call: Call) -> dict[str, object]:
    found = await store.order_with_items(call.db, call.path("order_id"))
    caller = call.caller
    involved = found is not None and caller.id in (found[0]["user_id"], found[0]["seller_id"])
    # Someone else's order is as unknown as a missing one: its existence is not the caller's business.
    if found is None or not (involved or caller.role in _PRIVILEGED):
        raise NotFound("No such order")
    return {"order": OrderOut.from_rows(*found)}


# Event handlers ----------------------------------------------------------------------------------------


async def _move(
    ctx: EventContext, order_id: str, status: str, allowed_from: tuple[str, ...], reason: str | None
) -> None:
    moved = await store.transition(ctx.tx, order_id, status, allowed_from, reason)
    if moved is None:
        log.info("order status left as it is", extra=log_fields(orderId=order_id, wanted=status))
        return
    order = moved.order
    data: dict[str, object] = {
        "orderId": order["id"],
        "status": order["status"],
        "previousStatus": moved.previous,
        "userId": order["user_id"],
        "sellerId": order["seller_id"],
        "amountCents": order["amount_cents"],
        "currency": order["currency"],
    }
    if reason is not None:
        data["reason"] = reason
    ctx.tx.publish(ORDER_STATUS_UPDATED, data)


async def on_payment_processed(event: Event, ctx: EventContext) -> None:
    payment = PaymentOutcome.model_validate(event.data)
    if payment.source == "order":
        await _move(ctx, payment.order_id, "paid", ("pending",), None)


async def on_payment_failed(event: Event, ctx: EventContext) -> None:
    payment = PaymentOutcome.model_validate(event.data)
    if payment.source == "order":
        await _move(ctx, payment.order_id, "payment_failed", ("pending",), payment.reason or "payment failed")


async def on_reservation_failed(event: Event, ctx: EventContext) -> None:
    failed = ReservationFailed.model_validate(event.data)
    await _move(ctx, failed.order_id, "cancelled", ("pending", "paid"), failed.reason)


# OpenAPI ------------------------------------------------------------------------------------------------

_ORDER = wrapped("order", OrderOut)

OPENAPI_PATHS: dict[str, dict[str, Any]] = {
    "/orders": {
        "post": {
            "summary": "Place an order of one seller's products",
            "requestBody": request_body(OrderIn),
            "responses": {
                "201": reply("The pending order; order.created is published.", _ORDER),
                "401": TOKEN_REQUIRED,
                "403": error("A service token: orders are placed by users."),
                "409": error("Not enough stock for some items (details name them)."),
                "422": error("Invalid items, unknown products, or items of several sellers or currencies."),
                "502": error("product-service answered the item check with something unexpected."),
                "503": error("product-service could not be reached or did not answer in time."),
            },
        },
        "get": {
            "summary": "List orders: the caller's own, a seller's sales, or all (admins)",
            "parameters": query_parameters(OrderQuery),
            "responses": {
                "200": reply("One page of orders and the pagination block.", listed("orders", OrderOut)),
                "401": TOKEN_REQUIRED,
                "403": error("Filters naming another user or seller."),
                "422": error("Bad filters or pagination."),
            },
        },
    },
    "/orders/{orderId}": {
        "parameters": [path_parameter("orderId", "The order's ID (order_...).")],
        "get": {
            "summary": "One order (its buyer, its seller, admins)",
            "responses": {
                "200": reply("The order.", _ORDER),
                "401": TOKEN_REQUIRED,
                "404": error("No such order, or not the caller's."),
            },
        },
    },
}


SERVICE = Service(
    name="order-service",
    port=3003,
    routes=routes,
    migrations=store.MIGRATIONS,
    publishes=(ORDER_CREATED, ORDER_STATUS_UPDATED),
    handlers={
        PAYMENT_PROCESSED: on_payment_processed,
        PAYMENT_FAILED: on_payment_failed,
        PRODUCT_RESERVATION_FAILED: on_reservation_failed,
    },
    configs=(OrderConfig,),
)
