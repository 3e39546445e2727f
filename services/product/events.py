"""The event type product-service adds to the spec's list, and the payloads of the order and payment
events that product-, order- and payment-service exchange, read the same way by each consumer.

product.reservation.failed
    {orderId, userId, sellerId, reason, items: [{productId, requested, available}]}
    An order's stock could not be reserved (reason unknown_product: a product unknown or deleted;
    insufficient_stock: one short of stock); nothing was taken from stock. order-service cancels the
    order; payment-service refunds it, or never charges it.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.events.types import check_type
from services.kit.models import EventPayload

PRODUCT_RESERVATION_FAILED = check_type("product.reservation.failed")

PaymentSource = Literal["order", "api"]
"""Which payment an event is about: the one payment-service makes for an order's order.created
("order"), or a direct charge through POST /payments ("api"), which never moves an order or its stock."""


EventData = EventPayload


class OrderLine(EventData):
    product_id: str = Field(min_length=1)
    quantity: int = Field(gt=0)
    unit_price_cents: int = Field(ge=0)


class OrderCreated(EventData):
    order_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    seller_id: str = Field(min_length=1)
    items: list[OrderLine] = Field(min_length=1)
    amount_cents: int = Field(ge=0)
    currency: str = Field(min_length=3, max_length=3)


class PaymentOutcome(EventData):
    """payment.processed and payment.failed."""

    payment_id: str = Field(min_length=1)
    order_id: str = Field(min_length=1)
    source: PaymentSource
    reason: str | None = None


class ReservationFailed(EventData):
    order_id: str = Field(min_length=1)
    reason: str
