"""product-service's request bodies, query parameters and replies (camelCase on the wire). Money is in
integer cents of the product's ISO 4217 currency."""
from __future__ import annotations

import sqlite3
from typing import Annotated, Self

from pydantic import Field, StringConstraints, field_validator, model_validator

from services.kit import CamelModel, Pagination

MAX_PRICE_CENTS = 100_000_000
MAX_STOCK = 1_000_000
MAX_ITEMS = 100

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
PriceCents = Annotated[int, Field(ge=0, le=MAX_PRICE_CENTS)]
StockLevel = Annotated[int, Field(ge=0, le=MAX_STOCK)]


class ProductIn(CamelModel):
    name: Name
    description: Description = ""
    price_cents: PriceCents
    currency: Currency | None = Field(None, description="ISO 4217 code; PRODUCT_DEFAULT_CURRENCY when left out.")
    stock: StockLevel = 0
    low_stock_threshold: StockLevel | None = Field(
        None, description="Level at or below which the product is low; PRODUCT_LOW_STOCK_THRESHOLD by default."
    )
    seller_id: Identifier | None = Field(
        None, description="The product's seller: admins only (a seller's products are their own)."
    )


class ProductPatch(CamelModel):
    name: Name | None = None
    description: Description | None = None
    price_cents: PriceCents | None = None
    currency: Currency | None = None
    low_stock_threshold: StockLevel | None = None

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.model_fields_set or all(getattr(self, name) is None for name in self.model_fields_set):
            raise ValueError("nothing to change: send name, description, priceCents, currency or lowStockThreshold")
        return self


class StockChange(CamelModel):
    """Set the stock to a level, or adjust it by a signed amount: exactly one of the two."""

    stock: StockLevel | None = Field(None, description="The new stock level.")
    delta: int | None = Field(None, ge=-MAX_STOCK, le=MAX_STOCK, description="Units to add (or remove, negative).")

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.stock is None) == (self.delta is None):
            raise ValueError("send either stock (a new level) or delta (a signed adjustment)")
        if self.delta == 0:
            raise ValueError("delta cannot be 0")
        return self


class ProductQuery(Pagination):
    seller_id: Identifier | None = Field(None, description="Only this seller's products.")
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None = Field(
        None, description="Only products whose name contains this text (case-insensitive)."
    )
    min_price_cents: PriceCents | None = Field(None, description="Lowest price, in cents, inclusive.")
    max_price_cents: PriceCents | None = Field(None, description="Highest price, in cents, inclusive.")
    in_stock: bool | None = Field(None, description="true: stock above 0; false: out of stock.")


class ProductOut(CamelModel):
    id: str
    seller_id: str
    name: str
    description: str
    price_cents: int
    currency: str
    stock: int
    low_stock_threshold: int
    low_stock: bool = Field(description="stock is at or below lowStockThreshold.")
    created_at: str
    updated_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ProductOut:
        return cls(
            id=row["id"],
            seller_id=row["seller_id"],
            name=row["name"],
            description=row["description"],
            price_cents=row["price_cents"],
            currency=row["currency"],
            stock=row["stock"],
            low_stock_threshold=row["low_stock_threshold"],
            low_stock=row["stock"] <= row["low_stock_threshold"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


class ItemIn(CamelModel):
    product_id: Identifier
    quantity: int = Field(ge=1, le=MAX_STOCK)


class ValidateIn(CamelModel):
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_ITEMS)

    @field_validator("items")
    @classmethod
    def _distinct(cls, items: list[ItemIn]) -> list[ItemIn]:
        if len({item.product_id for item in items}) != len(items):
            raise ValueError("each productId may appear once")
        return items


class CheckedItem(CamelModel):
    """One requested item as product-service sees it now; the product fields are null when it is unknown."""

    product_id: str
    quantity: int
    found: bool = Field(description="The product exists and is not deleted.")
    enough_stock: bool = Field(description="found, and stock covers quantity right now.")
    seller_id: str | None = None
    name: str | None = None
    unit_price_cents: int | None = None
    currency: str | None = None
    stock: int | None = None
