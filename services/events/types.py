"""The spec's domain event types; the routing key of an event is its type."""
from __future__ import annotations

import re

USER_CREATED = "user.created"
USER_UPDATED = "user.updated"
PRODUCT_CREATED = "product.created"
PRODUCT_UPDATED = "product.updated"
PRODUCT_STOCK_UPDATED = "product.stock.updated"
ORDER_CREATED = "order.created"
ORDER_STATUS_UPDATED = "order.status.updated"
PAYMENT_PROCESSED = "payment.processed"
PAYMENT_FAILED = "payment.failed"
NOTIFICATION_SENT = "notification.sent"

SPEC_TYPES = frozenset(
    {
        USER_CREATED,
        USER_UPDATED,
        PRODUCT_CREATED,
        PRODUCT_UPDATED,
        PRODUCT_STOCK_UPDATED,
        ORDER_CREATED,
        ORDER_STATUS_UPDATED,
        PAYMENT_PROCESSED,
        PAYMENT_FAILED,
        NOTIFICATION_SENT,
    }
)

EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
"""Lowercase dotted words, at least two (area.what): no AMQP wildcards, usable as a routing key."""


def check_type(event_type: str) -> str:
    """Return event_type, or raise ValueError when it is not a valid event type."""
    if not EVENT_TYPE.match(event_type) or len(event_type) > 128:
        raise ValueError(f"invalid event type {event_type!r}: expected lowercase dotted words such as order.created")
    return event_type
