"""notification-service's event payloads (what it reads of them), list query and reply."""
from __future__ import annotations

import sqlite3
from typing import Literal

from pydantic import Field

from services.kit import CamelModel, EventPayload, PageInfo, PageQuery, ReferenceId


Id = ReferenceId
Payload = EventPayload


class UserChanged(Payload):
    user_id: Id
    email: str | None = None
    phone: str | None = None
    name: str | None = None
    role: str | None = None


class OrderCreated(Payload):
    order_id: Id
    user_id: Id
    seller_id: Id | None = None
    amount_cents: int | None = None
    currency: str | None = None
    phone: str | None = Field(None, description="The buyer's phone number, when the order carries one.")


class OrderStatusUpdated(Payload):
    order_id: Id
    status: str
    previous_status: str | None = None
    user_id: Id | None = Field(None, description="The buyer (order-service sends it; older events may not).")
    reason: str | None = None


class PaymentOutcome(Payload):
    """payment.processed and payment.failed."""

    order_id: Id
    user_id: Id | None = Field(None, description="The payer.")
    amount_cents: int | None = None
    currency: str | None = None
    source: str | None = Field(None, description='"order" (charged for order.created) or "api" (a direct charge).')
    reason: str | None = None


class StockUpdated(Payload):
    product_id: Id
    seller_id: Id
    stock: int
    low_stock: bool = False
    name: str | None = None


class BroadcastRequested(Payload):
    campaign_id: Id
    sender_id: Id | None = None
    message: str = Field(min_length=1)
    recipients: list[str]


class NotificationQuery(PageQuery):
    status: Literal["pending", "sent", "failed"] | None = None
    template: str | None = Field(None, max_length=64)
    campaign_id: str | None = Field(None, max_length=128)
    order_id: str | None = Field(None, max_length=128)
    event_type: str | None = Field(None, max_length=128)
    user_id: str | None = Field(None, max_length=128, description="Admins only: the recipient user.")


class NotificationOut(CamelModel):
    id: str
    channel: str
    to: str
    user_id: str | None
    template: str
    message: str
    status: Literal["pending", "sent", "failed"]
    attempts: int
    error: str | None
    event_id: str
    event_type: str
    campaign_id: str | None
    order_id: str | None
    product_id: str | None
    created_at: str
    sent_at: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> NotificationOut:
        return cls(
            id=row["id"],
            channel=row["channel"],
            to=row["address"],
            user_id=row["user_id"],
            template=row["template"],
            message=row["body"],
            status=row["status"],
            attempts=row["attempts"],
            error=row["last_error"],
            event_id=row["event_id"],
            event_type=row["event_type"],
            campaign_id=row["campaign_id"],
            order_id=row["order_id"],
            product_id=row["product_id"],
            created_at=row["created_at"],
            sent_at=row["sent_at"],
        )


class NotificationPage(CamelModel):
    items: list[NotificationOut]
    pagination: PageInfo
