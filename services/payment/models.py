"""payment-service's request bodies, query parameters and replies (camelCase on the wire). Money is in
integer cents."""
from __future__ import annotations

import sqlite3
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from services.kit import CamelModel, Pagination

MAX_AMOUNT_CENTS = 1_000_000_000

PaymentStatus = Literal["succeeded", "failed", "refunded"]
Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class PaymentIn(CamelModel):
    order_id: Identifier = Field(description="The order this charge is for (a reference; it moves no order).")
    amount_cents: int = Field(ge=1, le=MAX_AMOUNT_CENTS)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = Field("USD", description="ISO 4217 code.")


class PaymentQuery(Pagination):
    order_id: Identifier | None = Field(None, description="Only the payments of this order.")
    status: PaymentStatus | None = Field(None, description="Only payments in this status.")


class PaymentOut(CamelModel):
    id: str
    order_id: str
    user_id: str = Field(description="Who paid: the order's buyer, or the caller of POST /payments.")
    source: Literal["order", "api"] = Field(description="order: made for order.created; api: POST /payments.")
    amount_cents: int
    currency: str
    status: PaymentStatus
    failure_reason: str | None
    processor: str
    processor_reference: str | None
    created_at: str
    updated_at: str
    refunded_at: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> PaymentOut:
        return cls(
            id=row["id"],
            order_id=row["order_id"],
            user_id=row["user_id"],
            source=row["source"],
            amount_cents=row["amount_cents"],
            currency=row["currency"],
            status=row["status"],
            failure_reason=row["failure_reason"],
            processor=row["processor"],
            processor_reference=row["processor_reference"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            refunded_at=row["refunded_at"],
        )
