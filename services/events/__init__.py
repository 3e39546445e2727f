"""Domain events: the Event model, the spec's event types, and the bus that carries them.

Publishing goes through a service's outbox (`tx.publish(...)` in services.kit.db); consuming through
handlers declared on the Service. The pieces: bus.py (the interface), rabbit.py and memory.py (the two
buses), outbox.py (the relay), consumer.py (duplicates, retries, dead letters).
"""
from __future__ import annotations

from services.events.event import Event
from services.events.types import (
    NOTIFICATION_SENT,
    ORDER_CREATED,
    ORDER_STATUS_UPDATED,
    PAYMENT_FAILED,
    PAYMENT_PROCESSED,
    PRODUCT_CREATED,
    PRODUCT_STOCK_UPDATED,
    PRODUCT_UPDATED,
    SPEC_TYPES,
    USER_CREATED,
    USER_UPDATED,
)

__all__ = [
    "NOTIFICATION_SENT",
    "ORDER_CREATED",
    "ORDER_STATUS_UPDATED",
    "PAYMENT_FAILED",
    "PAYMENT_PROCESSED",
    "PRODUCT_CREATED",
    "PRODUCT_STOCK_UPDATED",
    "PRODUCT_UPDATED",
    "SPEC_TYPES",
    "USER_CREATED",
    "USER_UPDATED",
    "Event",
]
