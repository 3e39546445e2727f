"""ai-service's local copy of orders and products, and the queries the recommendations and forecasts use.

An order counts as a purchase once its order.created is known and while its status is not
payment_failed, cancelled or refunded (pending orders count: they are demand). Events are merged
whatever their order of arrival, like analytics-service does.
"""
from __future__ import annotations

from collections.abc import Collection
from datetime import date

from services.ai.models import OrderCreated, ProductChanged
from services.kit import Database, Migration, Row, Transaction

MIGRATIONS = (
    Migration(
        1,
        "orders, order items and products",
        """
        CREATE TABLE products (
            id TEXT PRIMARY KEY,
            seller_id TEXT,
            name TEXT,
            price_cents INTEGER,
            stock INTEGER,
            stock_at TEXT,
            details_at TEXT,
            deleted INTEGER NOT NULL DEFAULT 0,
            first_seen TEXT NOT NULL
        );
        CREATE INDEX products_seller ON products (seller_id);
        CREATE TABLE orders (
            id TEXT PRIMARY KEY,
            user_id TEXT,
            seller_id TEXT,
            status TEXT NOT NULL DEFAULT 'pending',
            status_at TEXT,
            created_at TEXT,
            day TEXT
        );
        CREATE INDEX orders_user ON orders (user_id);
        CREATE TABLE order_items (
            order_id TEXT NOT NULL,
            product_id TEXT NOT NULL,
            quantity INTEGER NOT NULL,
            PRIMARY KEY (order_id, product_id)
        );
        CREATE INDEX order_items_product ON order_items (product_id);
        """,
    ),
)

PURCHASE = "(o.created_at IS NOT NULL AND o.status NOT IN ('payment_failed', 'cancelled', 'refunded'))"
IN_STOCK = "(p.deleted = 0 AND (p.stock IS NULL OR p.stock > 0))"
"""Recommend nothing deleted or known to be sold out."""


# --- facts from events ------------------------------------------------------------------------------


async def upsert_product(tx: Transaction, product: ProductChanged, at: str) -> None:
    """Details from the newest product.created/updated, stock from the newest event that has one; a
    deletion (product.updated with deleted) is for good."""
    await tx.execute(
        """
        INSERT INTO products (id, seller_id, name, price_cents, stock, stock_at, details_at, first_seen, deleted)
        VALUES (?, ?, ?, ?, ?, CASE WHEN ? IS NULL THEN NULL ELSE ? END, ?, ?, ?)
        ON CONFLICT (id) DO UPDATE SET
            seller_id = COALESCE(CASE WHEN details_at IS NULL OR excluded.details_at >= details_at
                THEN excluded.seller_id END, seller_id, excluded.seller_id),
            name = COALESCE(CASE WHEN details_at IS NULL OR excluded.details_at >= details_at
                THEN excluded.name END, name, excluded.name),
            price_cents = COALESCE(CASE WHEN details_at IS NULL OR excluded.details_at >= details_at
                THEN excluded.price_cents END, price_cents, excluded.price_cents),
            stock = CASE WHEN excluded.stock IS NOT NULL AND (stock_at IS NULL OR excluded.stock_at >= stock_at)
                THEN excluded.stock ELSE stock END,
            stock_at = CASE WHEN excluded.stock IS NOT NULL AND (stock_at IS NULL OR excluded.stock_at >= stock_at)
                THEN excluded.stock_at ELSE stock_at END,
            details_at = MAX(COALESCE(details_at, ''), excluded.details_at),
            first_seen = MIN(first_seen, excluded.first_seen),
            deleted = MAX(deleted, excluded.deleted)
        """,
        (
            product.product_id,
            product.seller_id,
            product.name,
            product.price_cents,
            product.stock,
            product.stock,
            at,
            at,
            at,
            int(product.deleted),
        ),
    )


async def update_stock(tx: Transaction, product_id: str, seller_id: str | None, stock: int, at: str) -> None:
    await tx.execute(
        """
        INSERT INTO products (id, seller_id, stock, stock_at, first_seen) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (id) DO UPDATE SET
            seller_id = COALESCE(seller_id, excluded.seller_id),
            stock = CASE WHEN stock_at IS NULL OR excluded.stock_at >= stock_at THEN excluded.stock ELSE stock END,
            stock_at = MAX(COALESCE(stock_at, ''), excluded.stock_at),
            first_seen = MIN(first_seen, excluded.first_seen)
        """,
        (product_id, seller_id, stock, at, at),
    )


async def record_order(tx: Transaction, order: OrderCreated, at: str) -> None:
    await tx.execute(
        """
        INSERT INTO orders (id, user_id, seller_id, created_at, day) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, seller_id = excluded.seller_id,
            created_at = excluded.created_at, day = excluded.day
        """,
        (order.order_id, order.user_id, order.seller_id, at, at[:10]),
    )
    await tx.executemany(
        "INSERT INTO order_items (order_id, product_id, quantity) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [(order.order_id, item.product_id, item.quantity) for item in order.items],
    )
    # A product first seen in an order (its product.created not handled yet) is known from then on.
    await tx.executemany(
        """
        INSERT INTO products (id, seller_id, first_seen) VALUES (?, ?, ?)
        ON CONFLICT (id) DO UPDATE SET first_seen = MIN(first_seen, excluded.first_seen),
            seller_id = COALESCE(seller_id, excluded.seller_id)
        """,
        [(item.product_id, order.seller_id, at) for item in order.items],
    )


async def record_status(tx: Transaction, order_id: str, status: str, at: str) -> None:
    await tx.execute(
        """
        INSERT INTO orders (id, status, status_at) VALUES (?, ?, ?)
        ON CONFLICT (id) DO UPDATE SET
            status = CASE WHEN status_at IS NULL OR excluded.status_at >= status_at
                THEN excluded.status ELSE status END,
            status_at = MAX(COALESCE(status_at, ''), excluded.status_at)
        """,
        (order_id, status, at),
    )


# --- queries ----------------------------------------------------------------------------------------


async def product(db: Database, product_id: str) -> Row | None:
    return await db.fetchone(
        "SELECT id, seller_id, name, price_cents, stock, first_seen FROM products WHERE id = ?", (product_id,)
    )


def _excluding(column: str, ids: Collection[str]) -> tuple[str, tuple[str, ...]]:
    if not ids:
        return "", ()
    return f" AND {column} NOT IN ({', '.join('?' * len(ids))})", tuple(ids)


_PRODUCT_COLUMNS = "p.id AS product_id, p.name, p.seller_id, p.price_cents"


async def bought_together(db: Database, product_ids: Collection[str], limit: int) -> list[Row]:
    """Other products in the purchases holding any of product_ids: by how many such orders, then units."""
    marks = ", ".join("?" * len(product_ids))
    excluded, params = _excluding("other.product_id", product_ids)
    return await db.fetchall(
        f"""
        SELECT {_PRODUCT_COLUMNS}, COUNT(DISTINCT other.order_id) AS score, SUM(other.quantity) AS units
        FROM order_items mine
        JOIN orders o ON o.id = mine.order_id
        JOIN order_items other ON other.order_id = mine.order_id
        JOIN products p ON p.id = other.product_id
        WHERE mine.product_id IN ({marks}) AND {PURCHASE} AND {IN_STOCK}{excluded}
        GROUP BY p.id ORDER BY score DESC, units DESC, p.id LIMIT ?
        """,
        (*product_ids, *params, limit),
    )


async def also_bought(db: Database, user_id: str, owned: Collection[str], limit: int) -> list[Row]:
    """Products of other customers' purchases that hold something this user bought (and which the user
    has not bought): by how many such orders, then units."""
    excluded, params = _excluding("other.product_id", owned)
    return await db.fetchall(
        f"""
        SELECT {_PRODUCT_COLUMNS}, COUNT(DISTINCT other.order_id) AS score, SUM(other.quantity) AS units
        FROM order_items other
        JOIN orders o ON o.id = other.order_id
        JOIN products p ON p.id = other.product_id
        WHERE {PURCHASE} AND {IN_STOCK}{excluded}
          AND o.user_id IS NOT ?
          AND EXISTS (SELECT 1 FROM order_items shared WHERE shared.order_id = other.order_id
                      AND shared.product_id IN (SELECT i.product_id FROM order_items i JOIN orders mine
                          ON mine.id = i.order_id WHERE mine.user_id = ?))
        GROUP BY p.id ORDER BY score DESC, units DESC, p.id LIMIT ?
        """,
        (*params, user_id, user_id, limit),
    )


async def best_sellers(
    db: Database, *, seller_ids: Collection[str] | None, exclude: Collection[str], limit: int
) -> list[Row]:
    """Products by units in purchases, of the given sellers (None: of everyone)."""
    scope, scope_params = "", ()
    if seller_ids is not None:
        if not seller_ids:
            return []
        scope, scope_params = f" AND p.seller_id IN ({', '.join('?' * len(seller_ids))})", tuple(seller_ids)
    excluded, params = _excluding("p.id", exclude)
    return await db.fetchall(
        f"""
        SELECT {_PRODUCT_COLUMNS}, SUM(i.quantity) AS score
        FROM order_items i JOIN orders o ON o.id = i.order_id JOIN products p ON p.id = i.product_id
        WHERE {PURCHASE} AND {IN_STOCK}{scope}{excluded}
        GROUP BY p.id ORDER BY score DESC, p.id LIMIT ?
        """,
        (*scope_params, *params, limit),
    )


async def purchases_of(db: Database, user_id: str) -> tuple[list[str], list[str]]:
    """(products the user bought, the sellers they bought from)."""
    rows = await db.fetchall(
        f"""
        SELECT DISTINCT i.product_id, o.seller_id FROM order_items i JOIN orders o ON o.id = i.order_id
        WHERE o.user_id = ? AND {PURCHASE} ORDER BY i.product_id
        """,
        (user_id,),
    )
    products = list(dict.fromkeys(row["product_id"] for row in rows))
    sellers = list(dict.fromkeys(row["seller_id"] for row in rows if row["seller_id"] is not None))
    return products, sellers


async def daily_units(db: Database, product_id: str, first: date, last: date) -> dict[str, int]:
    """Units of the product in purchases per UTC day (YYYY-MM-DD), first to last included."""
    rows = await db.fetchall(
        f"""
        SELECT o.day, SUM(i.quantity) AS units FROM order_items i JOIN orders o ON o.id = i.order_id
        WHERE i.product_id = ? AND {PURCHASE} AND o.day BETWEEN ? AND ? GROUP BY o.day
        """,
        (product_id, first.isoformat(), last.isoformat()),
    )
    return {row["day"]: int(row["units"]) for row in rows}
