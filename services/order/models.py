"""order-service's request bodies, query parameters and replies (camelCase on the wire). Money is in
integer cents of the order's ISO 4217 currency."""
from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic.alias_generators import to_camel

from services.kit import CamelModel, Pagination

MAX_ITEMS = 50
MAX_QUANTITY = 1_000_000

OrderStatus = Literal["pending", "paid", "payment_failed", "cancelled"]
Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class OrderItemIn(CamelModel):
    product_id: Identifier
    quantity: int = Field(ge=1, le=MAX_QUANTITY)


class OrderIn(CamelModel):
    items: list[OrderItemIn] = Field(
        min_length=1, max_length=MAX_ITEMS, description="Products of one seller, each once."
    )

    @field_validator("items")
    @classmethod
    def _distinct(cls, items: list[OrderItemIn]) -> list[OrderItemIn]:
        if len({item.product_id for item in items}) != len(items):
            raise ValueError("each productId may appear once")
        return items


class OrderQuery(Pagination):
    status: OrderStatus | None = Field(None, description="Only orders in this status.")
    seller_id: Identifier | None = Field(
        None, description="Orders of this seller's products (a seller may ask for their own; admins any)."
    )
    user_id: Identifier | None = Field(None, description="Orders of this buyer (admins only).")


class CheckedItem(BaseModel):
    """product-service's answer about one item (POST /products/validate)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    product_id: str
    quantity: int
    found: bool
    enough_stock: bool
    seller_id: str | None = None
    name: str | None = None
    unit_price_cents: int | None = Field(None, ge=0)
    currency: str | None = None
    stock: int | None = None


class CheckedItems(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    items: list[CheckedItem]


class OrderItemOut(CamelModel):
    product_id: str
    name: str
    quantity: int
    unit_price_cents: int
    line_total_cents: int


class OrderOut(CamelModel):
    id: str
    user_id: str = Field(description="The buyer.")
    seller_id: str
    status: OrderStatus
    status_reason: str | None = Field(description="Why a payment failed or the order was cancelled.")
    items: list[OrderItemOut]
    amount_cents: int
    currency: str
    created_at: str
    updated_at: str

    @classmethod
    def from_rows(cls, order: sqlite3.Row, items: Sequence[sqlite3.Row]) -> OrderOut:
        return cls(
            id=order["id"],
            user_id=order["user_id"],
            seller_id=order["seller_id"],
            status=order["status"],
            status_reason=order["status_reason"],
            items=[
                OrderItemOut(
                    product_id=item["product_id"],
                    name=item["name"],
                    quantity=item["quantity"],
                    unit_price_cents=item["unit_price_cents"],
                    line_total_cents=item["quantity"] * item["unit_price_cents"],
                )
                for item in items
            ],
            amount_cents=order["amount_cents"],
            currency=order["currency"],
            created_at=order["created_at"],
            updated_at=order["updated_at"],
        )
