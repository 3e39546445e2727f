"""Helpers of the product-, order- and payment-service tests: HTTP calls with a caller's token, events as
the other services publish them, and what a service wrote to its outbox."""
from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from services.events import ORDER_CREATED, PAYMENT_FAILED, PAYMENT_PROCESSED
from services.events.event import Event
from services.product.events import PRODUCT_RESERVATION_FAILED
from tests.process.helpers import wait_until
from tests.services.helpers import Served, bearer

SELLER = "user_seller_1"
OTHER_SELLER = "user_seller_2"
BUYER = "user_buyer_1"
OTHER_BUYER = "user_buyer_2"
ADMIN = "user_admin_1"


class Reply:
    """A service's answer: status, decoded envelope, headers and the raw body."""

    def __init__(self, status: int, raw: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.raw = raw
        self.headers = headers
        self.body: dict[str, Any] = orjson.loads(raw) if raw else {}

    @property
    def data(self) -> Any:
        assert self.body.get("success") is True, (self.status, self.body)
        return self.body["data"]

    @property
    def fields(self) -> set[str]:
        """The `field` of each detail of an error envelope."""
        return {item["field"] for item in self.body.get("details") or []}

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body})"


async def call(
    service: Served, method: str, path: str, *, as_: tuple[str, str] | None = None, **options: Any
) -> Reply:
    """One request; as_=(sub, role) signs a token for that caller (None: no Authorization header)."""
    headers = dict(options.pop("headers", {}))
    if as_ is not None:
        headers.update(bearer(service.settings, as_[0], as_[1]))
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, service.url + path, headers=headers, **options) as response,
    ):
        return Reply(response.status, await response.read(), dict(response.headers))


def seller(sub: str = SELLER) -> tuple[str, str]:
    return sub, "seller"


def customer(sub: str = BUYER) -> tuple[str, str]:
    return sub, "customer"


def admin(sub: str = ADMIN) -> tuple[str, str]:
    return sub, "admin"


def service_caller(name: str = "order-service") -> tuple[str, str]:
    return f"service:{name}", "service"


async def create_product(service: Served, owner: str = SELLER, **fields: Any) -> dict[str, Any]:
    body = {"name": "Kettle", "priceCents": 2500, "stock": 10, **fields}
    created = await call(service, "POST", "/products", as_=seller(owner), json=body)
    assert created.status == 201, created
    product: dict[str, Any] = created.data["product"]
    return product


async def outbox(service: Served, event_type: str | None = None) -> list[dict[str, Any]]:
    """The data of the events a service committed, oldest first (optionally of one type)."""
    rows = await service.runtime.db.fetchall("SELECT type, body FROM kadai_outbox ORDER BY seq")
    return [
        orjson.loads(row["body"])["data"] for row in rows if event_type is None or row["type"] == event_type
    ]


async def consuming(service: Served) -> None:
    """Wait until a RabbitMQ-backed service consumes its queue (events published before would be lost)."""
    await wait_until(lambda: service.runtime.bus.health().get("consuming") is True, 10, "the consumer")


async def handled(service: Served, count: int, timeout: float = 5.0) -> None:
    """Wait until the service recorded `count` processed events (handled or not applicable)."""

    async def enough() -> bool:
        row = await service.runtime.db.fetchone("SELECT COUNT(*) FROM kadai_processed_events")
        return row is not None and row[0] >= count

    await wait_until(enough, timeout, f"{count} processed event(s)")


def order_created(
    order_id: str,
    items: list[tuple[str, int, int]],
    *,
    user_id: str = BUYER,
    seller_id: str = SELLER,
    currency: str = "USD",
) -> Event:
    """order.created as order-service publishes it; items are (productId, quantity, unitPriceCents)."""
    return Event.create(
        ORDER_CREATED,
        "order-service",
        {
            "orderId": order_id,
            "userId": user_id,
            "sellerId": seller_id,
            "items": [
                {"productId": product_id, "quantity": quantity, "unitPriceCents": price}
                for product_id, quantity, price in items
            ],
            "amountCents": sum(quantity * price for _, quantity, price in items),
            "currency": currency,
        },
    )


def payment_event(order_id: str, *, failed: bool, source: str = "order", amount_cents: int = 1000) -> Event:
    """payment.processed or payment.failed as payment-service publishes them."""
    data: dict[str, Any] = {
        "paymentId": "pay_" + order_id,
        "orderId": order_id,
        "userId": BUYER,
        "amountCents": amount_cents,
        "currency": "USD",
        "source": source,
    }
    if failed:
        data["reason"] = "card_declined"
    return Event.create(PAYMENT_FAILED if failed else PAYMENT_PROCESSED, "payment-service", data)


def reservation_failed(order_id: str, product_id: str = "prod_x") -> Event:
    return Event.create(
        PRODUCT_RESERVATION_FAILED,
        "product-service",
        {
            "orderId": order_id,
            "userId": BUYER,
            "sellerId": SELLER,
            "reason": "insufficient_stock",
            "items": [{"productId": product_id, "requested": 3, "available": 1}],
        },
    )
