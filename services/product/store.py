"""product-service's tables and the queries on them: products (soft-deleted) and the stock reserved for orders.

A reservation is keyed by order ID and moves once: reserved -> released, or is recorded failed (nothing
taken) or released before it was ever reserved (a payment.failed that overtook its order.created). Any
row means "this order was dealt with": a later order.created of the same order reserves nothing.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.envelope import utc_timestamp
from services.kit import Database, Migration, Row, Transaction

MIGRATIONS = (
    Migration(
        1,
        "products and reservations",
        """
        CREATE TABLE products (
            id TEXT PRIMARY KEY,
            seller_id TEXT NOT NULL,
            name TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
            currency TEXT NOT NULL,
            stock INTEGER NOT NULL CHECK (stock >= 0),
            low_stock_threshold INTEGER NOT NULL CHECK (low_stock_threshold >= 0),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            deleted_at TEXT
        );
        CREATE INDEX products_seller ON products (seller_id) WHERE deleted_at IS NULL;
        CREATE TABLE reservations (
            order_id TEXT PRIMARY KEY,
            status TEXT NOT NULL CHECK (status IN ('reserved', 'failed', 'released')),
            reason TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE reservation_items (
            order_id TEXT NOT NULL REFERENCES reservations (order_id),
            product_id TEXT NOT NULL,
            quantity INTEGER NOT NULL CHECK (quantity > 0),
            PRIMARY KEY (order_id, product_id)
        );
        """,
    ),
)

_COLUMNS = (
    "id, seller_id, name, description, price_cents, currency, stock, low_stock_threshold, created_at, updated_at"
)
_LIVE = "deleted_at IS NULL"

StockReason = Literal["order", "release", "manual"]


def new_product_id() -> str:
    return "prod_" + uuid.uuid4().hex


def is_low_stock(stock: int, previous: int, threshold: int) -> bool:
    """The low-stock signal of a stock change: the level went down and is now at or below the threshold.
    A restock that leaves the level still low is not a new alert."""
    return stock < previous and stock <= threshold


def stock_event(
    product: Row, previous: int, stock: int, reason: StockReason, order_id: str | None = None
) -> dict[str, object]:
    """The data of product.stock.updated."""
    data: dict[str, object] = {
        "productId": product["id"],
        "sellerId": product["seller_id"],
        "name": product["name"],  # so that a low-stock alert can name the product
        "stock": stock,
        "previousStock": previous,
        "reason": reason,
        "lowStock": is_low_stock(stock, previous, product["low_stock_threshold"]),
        "threshold": product["low_stock_threshold"],
    }
    if order_id is not None:
        data["orderId"] = order_id
    return data


def product_event(product: Row, **extra: object) -> dict[str, object]:
    """The data of product.created and product.updated."""
    return {
        "productId": product["id"],
        "sellerId": product["seller_id"],
        "name": product["name"],
        "priceCents": product["price_cents"],
        "currency": product["currency"],
        "stock": product["stock"],
        **extra,
    }


async def insert_product(tx: Transaction, values: Mapping[str, Any]) -> Row:
    now = utc_timestamp()
    product_id = new_product_id()
    await tx.execute(
        f"INSERT INTO products ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            product_id,
            values["seller_id"],
            values["name"],
            values["description"],
            values["price_cents"],
            values["currency"],
            values["stock"],
            values["low_stock_threshold"],
            now,
            now,
        ),
    )
    row = await live_product(tx, product_id)
    assert row is not None
    return row


async def live_product(db: Database | Transaction, product_id: str) -> Row | None:
    """A product that is not deleted."""
    return await db.fetchone(f"SELECT {_COLUMNS} FROM products WHERE id = ? AND {_LIVE}", (product_id,))


async def live_products(db: Database | Transaction, product_ids: Sequence[str]) -> dict[str, Row]:
    if not product_ids:
        return {}
    marks = ", ".join("?" for _ in product_ids)
    rows = await db.fetchall(f"SELECT {_COLUMNS} FROM products WHERE id IN ({marks}) AND {_LIVE}", tuple(product_ids))
    return {row["id"]: row for row in rows}


@dataclass(frozen=True, slots=True)
class ProductFilter:
    seller_id: str | None = None
    name: str | None = None
    min_price_cents: int | None = None
    max_price_cents: int | None = None
    in_stock: bool | None = None

    def where(self) -> tuple[str, list[object]]:
        clauses: list[str] = [_LIVE]
        params: list[object] = []
        if self.seller_id is not None:
            clauses.append("seller_id = ?")
            params.append(self.seller_id)
        if self.name is not None:
            # LIKE is case-insensitive for ASCII in SQLite; the client's % and _ are literal text.
            escaped = self.name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append("name LIKE ? ESCAPE '\\'")
            params.append(f"%{escaped}%")
        if self.min_price_cents is not None:
            clauses.append("price_cents >= ?")
            params.append(self.min_price_cents)
        if self.max_price_cents is not None:
            clauses.append("price_cents <= ?")
            params.append(self.max_price_cents)
        if self.in_stock is not None:
            clauses.append("stock > 0" if self.in_stock else "stock = 0")
        return " AND ".join(clauses), params


async def list_products(db: Database, where: ProductFilter, limit: int, offset: int) -> tuple[list[Row], int]:
    """One page of products, newest first, and how many match in all."""
    clause, params = where.where()
    counted = await db.fetchone(f"SELECT COUNT(*) FROM products WHERE {clause}", params)
    rows = await db.fetchall(
        f"SELECT {_COLUMNS} FROM products WHERE {clause} ORDER BY rowid DESC LIMIT ? OFFSET ?", [*params, limit, offset]
    )
    return rows, int(counted[0]) if counted else 0


async def update_product(tx: Transaction, product_id: str, changes: Mapping[str, object]) -> Row:
    assignments = ", ".join(f"{column} = ?" for column in changes)
    await tx.execute(
        f"UPDATE products SET {assignments}, updated_at = ? WHERE id = ?",
        (*changes.values(), utc_timestamp(), product_id),
    )
    row = await live_product(tx, product_id)
    assert row is not None
    return row


async def set_stock(tx: Transaction, product_id: str, stock: int) -> Row:
    """Set a product's stock, deleted or not (a release after a delete still puts the units back)."""
    await tx.execute("UPDATE products SET stock = ?, updated_at = ? WHERE id = ?", (stock, utc_timestamp(), product_id))
    row = await any_product(tx, product_id)
    assert row is not None
    return row


async def soft_delete(tx: Transaction, product_id: str) -> None:
    now = utc_timestamp()
    await tx.execute("UPDATE products SET deleted_at = ?, updated_at = ? WHERE id = ?", (now, now, product_id))


# Reservations -------------------------------------------------------------------------------------------


async def reservation(tx: Transaction, order_id: str) -> Row | None:
    return await tx.fetchone("SELECT order_id, status, reason FROM reservations WHERE order_id = ?", (order_id,))


async def record_reservation(
    tx: Transaction, order_id: str, status: str, reason: str | None = None, items: Mapping[str, int] | None = None
) -> None:
    now = utc_timestamp()
    await tx.execute(
        "INSERT INTO reservations (order_id, status, reason, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        (order_id, status, reason, now, now),
    )
    if items:
        await tx.executemany(
            "INSERT INTO reservation_items (order_id, product_id, quantity) VALUES (?, ?, ?)",
            [(order_id, product_id, quantity) for product_id, quantity in items.items()],
        )


async def reserved_items(tx: Transaction, order_id: str) -> list[Row]:
    return await tx.fetchall(
        "SELECT product_id, quantity FROM reservation_items WHERE order_id = ? ORDER BY product_id", (order_id,)
    )


async def mark_released(tx: Transaction, order_id: str, reason: str) -> None:
    await tx.execute(
        "UPDATE reservations SET status = 'released', reason = ?, updated_at = ? WHERE order_id = ?",
        (reason, utc_timestamp(), order_id),
    )


async def any_product(tx: Transaction, product_id: str) -> Row | None:
    """A product, deleted or not: stock released after a delete still goes back to it."""
    return await tx.fetchone(f"SELECT {_COLUMNS} FROM products WHERE id = ?", (product_id,))
