"""order-service's tables and the queries on them: orders, their items (with the prices they were sold
at), and the status transitions."""
from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from gateway.envelope import utc_timestamp
from services.kit import Database, Migration, Row, Transaction

MIGRATIONS = (
    Migration(
        1,
        "orders and their items",
        """
        CREATE TABLE orders (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            seller_id TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'payment_failed', 'cancelled')),
            status_reason TEXT,
            amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
            currency TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX orders_user ON orders (user_id);
        CREATE INDEX orders_seller ON orders (seller_id);
        CREATE TABLE order_items (
            order_id TEXT NOT NULL REFERENCES orders (id),
            position INTEGER NOT NULL,
            product_id TEXT NOT NULL,
            name TEXT NOT NULL,
            quantity INTEGER NOT NULL CHECK (quantity > 0),
            unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0),
            PRIMARY KEY (order_id, position)
        );
        """,
    ),
)

_COLUMNS = "id, user_id, seller_id, status, status_reason, amount_cents, currency, created_at, updated_at"
_ITEM_COLUMNS = "order_id, product_id, name, quantity, unit_price_cents"


def new_order_id() -> str:
    return "order_" + uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Line:
    product_id: str
    name: str
    quantity: int
    unit_price_cents: int


async def insert_order(
    tx: Transaction, user_id: str, seller_id: str, currency: str, lines: Sequence[Line]
) -> tuple[Row, list[Row]]:
    now = utc_timestamp()
    order_id = new_order_id()
    amount = sum(line.quantity * line.unit_price_cents for line in lines)
    await tx.execute(
        f"INSERT INTO orders ({_COLUMNS}) VALUES (?, ?, ?, 'pending', NULL, ?, ?, ?, ?)",
        (order_id, user_id, seller_id, amount, currency, now, now),
    )
    await tx.executemany(
        "INSERT INTO order_items (order_id, position, product_id, name, quantity, unit_price_cents) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (order_id, position, line.product_id, line.name, line.quantity, line.unit_price_cents)
            for position, line in enumerate(lines)
        ],
    )
    found = await order_with_items(tx, order_id)
    assert found is not None
    return found


async def order_with_items(db: Database | Transaction, order_id: str) -> tuple[Row, list[Row]] | None:
    order = await db.fetchone(f"SELECT {_COLUMNS} FROM orders WHERE id = ?", (order_id,))
    if order is None:
        return None
    items = await db.fetchall(
        f"SELECT {_ITEM_COLUMNS} FROM order_items WHERE order_id = ? ORDER BY position", (order_id,)
    )
    return order, items


@dataclass(frozen=True, slots=True)
class OrderFilter:
    user_id: str | None = None
    seller_id: str | None = None
    status: str | None = None

    def where(self) -> tuple[str, list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        for column in ("user_id", "seller_id", "status"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        return " AND ".join(clauses) or "1", params


async def list_orders(
    db: Database, where: OrderFilter, limit: int, offset: int
) -> tuple[list[tuple[Row, list[Row]]], int]:
    """One page of orders with their items, newest first, and how many match in all."""
    clause, params = where.where()
    counted = await db.fetchone(f"SELECT COUNT(*) FROM orders WHERE {clause}", params)
    orders = await db.fetchall(
        f"SELECT {_COLUMNS} FROM orders WHERE {clause} ORDER BY rowid DESC LIMIT ? OFFSET ?", [*params, limit, offset]
    )
    items: dict[str, list[Row]] = {order["id"]: [] for order in orders}
    if orders:
        marks = ", ".join("?" for _ in orders)
        for item in await db.fetchall(
            f"SELECT {_ITEM_COLUMNS} FROM order_items WHERE order_id IN ({marks}) ORDER BY order_id, position",
            [order["id"] for order in orders],
        ):
            items[item["order_id"]].append(item)
    return [(order, items[order["id"]]) for order in orders], int(counted[0]) if counted else 0


@dataclass(frozen=True, slots=True)
class Transition:
    order: Row
    """The order after the change."""
    previous: str


async def transition(
    tx: Transaction, order_id: str, status: str, allowed_from: Collection[str], reason: str | None = None
) -> Transition | None:
    """Move an order to status if it is in one of allowed_from; None when it is unknown or elsewhere."""
    before = await tx.fetchone(f"SELECT {_COLUMNS} FROM orders WHERE id = ?", (order_id,))
    if before is None or before["status"] not in allowed_from:
        return None
    await tx.execute(
        "UPDATE orders SET status = ?, status_reason = ?, updated_at = ? WHERE id = ?",
        (status, reason, utc_timestamp(), order_id),
    )
    after = await tx.fetchone(f"SELECT {_COLUMNS} FROM orders WHERE id = ?", (order_id,))
    assert after is not None
    return Transition(after, before["status"])
