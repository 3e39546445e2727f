"""The order flow end to end: product-, order- and payment-service on loopback ports, talking over HTTP
and through the real RabbitMQ, as the spec's "Order Creation Flow" describes."""
from __future__ import annotations

import time
from typing import Any

import pytest

from services.events import (
    ORDER_CREATED,
    ORDER_STATUS_UPDATED,
    PAYMENT_FAILED,
    PAYMENT_PROCESSED,
    PRODUCT_STOCK_UPDATED,
)
from services.order import SERVICE as ORDER_SERVICE
from services.payment import SERVICE as PAYMENT_SERVICE
from services.product import SERVICE as PRODUCT_SERVICE
from tests.process.helpers import wait_until
from tests.services.conftest import MakeSettings, Serve
from tests.services.helpers import EventProbe, Served
from tests.services.shop_support import call, consuming, create_product, customer

pytestmark = pytest.mark.rabbitmq


async def order_status(orders: Served, order_id: str) -> str:
    reply = await call(orders, "GET", f"/orders/{order_id}", as_=customer())
    status: str = reply.data["order"]["status"]
    return status


async def stock(products: Served, product_id: str) -> int:
    reply = await call(products, "GET", f"/products/{product_id}", as_=customer())
    level: int = reply.data["product"]["stock"]
    return level


async def place(orders: Served, product_id: str, quantity: int, request_id: str) -> str:
    placed = await call(
        orders,
        "POST",
        "/orders",
        as_=customer(),
        json={"items": [{"productId": product_id, "quantity": quantity}]},
        headers={"X-Request-ID": request_id},
    )
    assert placed.status == 201, placed
    order_id: str = placed.data["order"]["id"]
    return order_id


def traced(probe: EventProbe, request_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(event.type, event.data) for event in probe.events if event.request_id == request_id]


async def test_a_paid_order_keeps_its_stock_and_a_declined_one_gives_it_back(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str
) -> None:
    products = await serve(PRODUCT_SERVICE, make_settings(amqp_url=rabbitmq_server))
    payments = await serve(PAYMENT_SERVICE, make_settings(amqp_url=rabbitmq_server))
    orders = await serve(
        ORDER_SERVICE, make_settings(amqp_url=rabbitmq_server, service_urls={"product-service": products.url})
    )
    for service in (products, payments, orders):
        await consuming(service)

    kettle = await create_product(products, priceCents=2500, stock=10)
    started = time.monotonic()
    paid = await place(orders, kettle["id"], 3, "flow-paid")

    async def is_paid() -> bool:
        return await order_status(orders, paid) == "paid"

    await wait_until(is_paid, 5, "the order to be paid")

    async def seven_left() -> bool:
        return await stock(products, kettle["id"]) == 7

    await wait_until(seven_left, 5, "the stock to drop to 7")
    assert time.monotonic() - started < 5

    # 3 x 371 = 1113 cents: the simulator declines amounts ending in 13.
    odd = await create_product(products, name="Odd kettle", priceCents=371, stock=10)
    declined = await place(orders, odd["id"], 3, "flow-declined")

    async def is_declined() -> bool:
        return await order_status(orders, declined) == "payment_failed"

    await wait_until(is_declined, 5, "the order's payment to fail")

    async def released() -> bool:
        row = await products.runtime.db.fetchone("SELECT status FROM reservations WHERE order_id = ?", (declined,))
        return row is not None and row["status"] == "released"

    await wait_until(released, 5, "the reservation to be released")
    assert await stock(products, odd["id"]) == 10
    assert await stock(products, kettle["id"]) == 7

    # The request ID of POST /orders travels with every event the order caused.
    await wait_until(lambda: len(traced(probe, "flow-paid")) == 4, 5, "the paid order's four events")
    assert sorted(kind for kind, _ in traced(probe, "flow-paid")) == sorted(
        [ORDER_CREATED, PRODUCT_STOCK_UPDATED, PAYMENT_PROCESSED, ORDER_STATUS_UPDATED]
    )
    # Reserved then released; or, when payment.failed overtook order.created, never reserved at all.
    row = await products.runtime.db.fetchone("SELECT reason FROM reservations WHERE order_id = ?", (declined,))
    assert row is not None
    moves = ["order", "release"] if row["reason"] == "payment failed" else []
    await wait_until(
        lambda: len(traced(probe, "flow-declined")) == 3 + len(moves), 5, "the declined order's events"
    )
    events = traced(probe, "flow-declined")
    assert sorted(kind for kind, _ in events if kind != PRODUCT_STOCK_UPDATED) == sorted(
        [ORDER_CREATED, PAYMENT_FAILED, ORDER_STATUS_UPDATED]
    )
    assert [data["reason"] for kind, data in events if kind == PRODUCT_STOCK_UPDATED] == moves
    [status] = [data for kind, data in events if kind == ORDER_STATUS_UPDATED]
    assert (status["orderId"], status["previousStatus"], status["status"], status["reason"]) == (
        declined,
        "pending",
        "payment_failed",
        "card_declined",
    )
