"""analytics-service's tables and queries.

Each event's facts are stored as they come and the metrics are computed when asked: an order's rows
are merged whatever event about it arrives first (payment.processed may come before order.created),
revenue is summed over the orders that are paid at the time of the question, and the latest stock is
the one of the newest product event (by its timestamp), so the order in which events arrive does not
change any answer.
"""
from __future__ import annotations

from services.analytics.models import (
    BroadcastRequested,
    NotificationOutcome,
    OrderCreated,
    PaymentOutcome,
    ProductChanged,
    ProductMetrics,
    Revenue,
    SellerMetrics,
    StockMovements,
    StockUpdated,
    Summary,
    TopProduct,
)
from services.kit import Database, Event, Migration, Transaction

MIGRATIONS = (
    Migration(
        1,
        "event ledger, users, products, orders, payments, stock movements, notifications",
        """
        CREATE TABLE events (
            event_id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            source TEXT NOT NULL,
            timestamp TEXT NOT NULL,
            seller_id TEXT,
            product_id TEXT,
            order_id TEXT
        );
        CREATE INDEX events_type ON events (type);
        CREATE TABLE users (
            id TEXT PRIMARY KEY,
            role TEXT
        );
        CREATE TABLE products (
            id TEXT PRIMARY KEY,
            seller_id TEXT,
            name TEXT,
            price_cents INTEGER,
            stock INTEGER,
            low_stock INTEGER NOT NULL DEFAULT 0,
            deleted INTEGER NOT NULL DEFAULT 0,
            stock_at TEXT,
            details_at TEXT
        );
        CREATE INDEX products_seller ON products (seller_id);
        CREATE TABLE orders (
            id TEXT PRIMARY KEY,
            user_id TEXT,
            seller_id TEXT,
            amount_cents INTEGER,
            currency TEXT,
            status TEXT NOT NULL DEFAULT 'pending',
            status_at TEXT,
            paid INTEGER NOT NULL DEFAULT 0,
            paid_cents INTEGER,
            paid_currency TEXT,
            created_at TEXT
        );
        CREATE INDEX orders_seller ON orders (seller_id);
        CREATE TABLE order_items (
            order_id TEXT NOT NULL,
            product_id TEXT NOT NULL,
            quantity INTEGER NOT NULL,
            unit_price_cents INTEGER,
            PRIMARY KEY (order_id, product_id)
        );
        CREATE INDEX order_items_product ON order_items (product_id);
        CREATE TABLE payments (
            payment_id TEXT PRIMARY KEY,
            order_id TEXT NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('processed', 'failed')),
            amount_cents INTEGER
        );
        CREATE INDEX payments_order ON payments (order_id);
        CREATE TABLE stock_movements (
            event_id TEXT PRIMARY KEY,
            product_id TEXT NOT NULL,
            seller_id TEXT,
            delta INTEGER,
            stock INTEGER NOT NULL,
            reason TEXT,
            timestamp TEXT NOT NULL
        );
        CREATE INDEX stock_movements_product ON stock_movements (product_id);
        CREATE INDEX stock_movements_seller ON stock_movements (seller_id);
        CREATE TABLE notifications (
            notification_id TEXT PRIMARY KEY,
            outcome TEXT NOT NULL CHECK (outcome IN ('sent', 'failed')),
            related_event_id TEXT,
            order_id TEXT,
            product_id TEXT,
            campaign_id TEXT
        );
        """,
    ),
)

PAID = "(o.paid = 1 AND o.status NOT IN ('cancelled', 'refunded'))"
"""A paid order: payment.processed (or status paid) seen, and not cancelled or refunded since."""
NO_CURRENCY = "XXX"


# --- facts from events ------------------------------------------------------------------------------


async def record_event(
    tx: Transaction,
    event: Event,
    *,
    seller_id: str | None = None,
    product_id: str | None = None,
    order_id: str | None = None,
) -> None:
    await tx.execute(
        """
        INSERT INTO events (event_id, type, source, timestamp, seller_id, product_id, order_id)
        VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING
        """,
        (event.id, event.type, event.source, event.timestamp, seller_id, product_id, order_id),
    )


async def upsert_user(tx: Transaction, user_id: str, role: str | None) -> None:
    await tx.execute(
        """
        INSERT INTO users (id, role) VALUES (?, ?)
        ON CONFLICT (id) DO UPDATE SET role = COALESCE(excluded.role, role)
        """,
        (user_id, role),
    )


async def upsert_product(tx: Transaction, product: ProductChanged, at: str) -> None:
    """Name, price and seller from the newest product.created/updated; stock from the newest event with one;
    a deletion (product.updated with deleted) is for good."""
    await tx.execute(
        """
        INSERT INTO products (id, seller_id, name, price_cents, stock, stock_at, details_at, deleted)
        VALUES (?, ?, ?, ?, ?, CASE WHEN ? IS NULL THEN NULL ELSE ? END, ?, ?)
        ON CONFLICT (id) DO UPDATE SET
            seller_id = CASE WHEN details_at IS NULL OR excluded.details_at >= details_at
                THEN COALESCE(excluded.seller_id, seller_id) ELSE COALESCE(seller_id, excluded.seller_id) END,
            name = CASE WHEN details_at IS NULL OR excluded.details_at >= details_at
                THEN COALESCE(excluded.name, name) ELSE name END,
            price_cents = CASE WHEN details_at IS NULL OR excluded.details_at >= details_at
                THEN COALESCE(excluded.price_cents, price_cents) ELSE price_cents END,
            stock = CASE WHEN excluded.stock IS NOT NULL AND (stock_at IS NULL OR excluded.stock_at >= stock_at)
                THEN excluded.stock ELSE stock END,
            stock_at = CASE WHEN excluded.stock IS NOT NULL AND (stock_at IS NULL OR excluded.stock_at >= stock_at)
                THEN excluded.stock_at ELSE stock_at END,
            details_at = MAX(COALESCE(details_at, ''), excluded.details_at),
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
            int(product.deleted),
        ),
    )


async def record_stock(tx: Transaction, event: Event, update: StockUpdated) -> None:
    delta = update.stock - update.previous_stock if update.previous_stock is not None else None
    await tx.execute(
        """
        INSERT INTO stock_movements (event_id, product_id, seller_id, delta, stock, reason, timestamp)
        VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING
        """,
        (event.id, update.product_id, update.seller_id, delta, update.stock, update.reason, event.timestamp),
    )
    await tx.execute(
        """
        INSERT INTO products (id, seller_id, stock, low_stock, stock_at) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (id) DO UPDATE SET
            seller_id = COALESCE(seller_id, excluded.seller_id),
            stock = CASE WHEN stock_at IS NULL OR excluded.stock_at >= stock_at THEN excluded.stock ELSE stock END,
            low_stock = CASE WHEN stock_at IS NULL OR excluded.stock_at >= stock_at
                THEN excluded.low_stock ELSE low_stock END,
            stock_at = MAX(COALESCE(stock_at, ''), excluded.stock_at)
        """,
        (update.product_id, update.seller_id, update.stock, int(update.low_stock), event.timestamp),
    )


async def record_order(tx: Transaction, order: OrderCreated, at: str) -> None:
    """order.created: the order's seller, amount and items; its status stays what later events made it."""
    await tx.execute(
        """
        INSERT INTO orders (id, user_id, seller_id, amount_cents, currency, created_at) VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, seller_id = excluded.seller_id,
            amount_cents = excluded.amount_cents, currency = excluded.currency, created_at = excluded.created_at
        """,
        (order.order_id, order.user_id, order.seller_id, order.amount_cents, order.currency, at),
    )
    await tx.executemany(
        """
        INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) VALUES (?, ?, ?, ?)
        ON CONFLICT (order_id, product_id) DO NOTHING
        """,
        [(order.order_id, item.product_id, item.quantity, item.unit_price_cents) for item in order.items],
    )


async def record_status(tx: Transaction, order_id: str, status: str, at: str) -> None:
    """The newest status wins; "paid" also marks the order paid, which no later event takes back."""
    await tx.execute(
        """
        INSERT INTO orders (id, status, status_at, paid) VALUES (?, ?, ?, ?)
        ON CONFLICT (id) DO UPDATE SET
            status = CASE WHEN status_at IS NULL OR excluded.status_at >= status_at
                THEN excluded.status ELSE status END,
            status_at = MAX(COALESCE(status_at, ''), excluded.status_at),
            paid = MAX(paid, excluded.paid)
        """,
        (order_id, status, at, int(status == "paid")),
    )


async def record_payment(tx: Transaction, event: Event, payment: PaymentOutcome, outcome: str) -> None:
    await tx.execute(
        """
        INSERT INTO payments (payment_id, order_id, outcome, amount_cents) VALUES (?, ?, ?, ?)
        ON CONFLICT (payment_id) DO NOTHING
        """,
        (payment.payment_id or event.id, payment.order_id, outcome, payment.amount_cents),
    )
    # A direct charge (source "api") does not move the order: only the payment made for it makes it paid.
    if outcome == "processed" and payment.source != "api":
        await tx.execute(
            """
            INSERT INTO orders (id, paid, paid_cents, paid_currency) VALUES (?, 1, ?, ?)
            ON CONFLICT (id) DO UPDATE SET paid = 1, paid_cents = excluded.paid_cents,
                paid_currency = excluded.paid_currency
            """,
            (payment.order_id, payment.amount_cents, payment.currency),
        )


async def record_notification(tx: Transaction, note: NotificationOutcome, outcome: str) -> None:
    await tx.execute(
        """
        INSERT INTO notifications (notification_id, outcome, related_event_id, order_id, product_id, campaign_id)
        VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (notification_id) DO NOTHING
        """,
        (note.notification_id, outcome, note.related_event_id, note.order_id, note.product_id, note.campaign_id),
    )


async def record_broadcast(tx: Transaction, event: Event, batch: BroadcastRequested) -> None:
    """Only the ledger row matters: it names the campaign's sender, whose messages these are."""
    await record_event(tx, event, seller_id=batch.sender_id)


# --- metrics ----------------------------------------------------------------------------------------

_ITEMS = "FROM order_items i JOIN orders o ON o.id = i.order_id"
_FAILURES = "FROM payments y JOIN orders o ON o.id = y.order_id WHERE y.outcome = 'failed'"
_NOTIFICATION_SCOPE = """
    FROM notifications n
    LEFT JOIN events e ON e.event_id = n.related_event_id
    LEFT JOIN orders o ON o.id = COALESCE(n.order_id, e.order_id)
    LEFT JOIN products p ON p.id = COALESCE(n.product_id, e.product_id)
    WHERE n.outcome = 'sent'
"""


async def _count(db: Database, sql: str, params: tuple[object, ...] = ()) -> int:
    row = await db.fetchone(sql, params)
    return int(row[0] or 0) if row else 0


async def _revenue(db: Database, scope: str, params: tuple[object, ...]) -> Revenue:
    rows = await db.fetchall(
        f"""
        SELECT COALESCE(o.currency, o.paid_currency, '{NO_CURRENCY}') AS currency,
               SUM(COALESCE(o.amount_cents, o.paid_cents, 0)) AS cents
        FROM orders o WHERE {PAID} AND {scope} GROUP BY 1 ORDER BY 1
        """,
        params,
    )
    return {row["currency"]: int(row["cents"]) for row in rows}


async def _movements(db: Database, scope: str, params: tuple[object, ...]) -> StockMovements:
    row = await db.fetchone(
        f"""
        SELECT COUNT(*), SUM(CASE WHEN delta > 0 THEN delta ELSE 0 END), SUM(CASE WHEN delta < 0 THEN -delta ELSE 0 END)
        FROM stock_movements WHERE {scope}
        """,
        params,
    )
    count, units_in, units_out = (row[0], row[1], row[2]) if row else (0, 0, 0)
    return StockMovements(count=count or 0, units_in=units_in or 0, units_out=units_out or 0)


async def seller_known(db: Database, seller_id: str) -> bool:
    return bool(
        await _count(
            db,
            """
            SELECT EXISTS (SELECT 1 FROM users WHERE id = ?) OR EXISTS (SELECT 1 FROM products WHERE seller_id = ?)
                OR EXISTS (SELECT 1 FROM orders WHERE seller_id = ?)
            """,
            (seller_id, seller_id, seller_id),
        )
    )


async def seller_metrics(db: Database, seller_id: str, top: int = 5) -> SellerMetrics:
    one = (seller_id,)
    products = await db.fetchone(
        "SELECT COUNT(*), SUM(stock), SUM(low_stock) FROM products WHERE seller_id = ? AND deleted = 0", one
    )
    top_rows = await db.fetchall(
        f"""
        SELECT i.product_id, p.name, SUM(i.quantity) AS units
        FROM order_items i JOIN orders o ON o.id = i.order_id LEFT JOIN products p ON p.id = i.product_id
        WHERE o.seller_id = ? AND {PAID}
        GROUP BY i.product_id ORDER BY units DESC, i.product_id LIMIT ?
        """,
        (seller_id, top),
    )
    return SellerMetrics(
        seller_id=seller_id,
        orders=await _count(db, "SELECT COUNT(*) FROM orders WHERE seller_id = ?", one),
        paid_orders=await _count(db, f"SELECT COUNT(*) FROM orders o WHERE o.seller_id = ? AND {PAID}", one),
        revenue_cents=await _revenue(db, "o.seller_id = ?", one),
        units_sold=await _count(db, f"SELECT SUM(i.quantity) {_ITEMS} WHERE o.seller_id = ? AND {PAID}", one),
        payment_failures=await _count(db, f"SELECT COUNT(*) {_FAILURES} AND o.seller_id = ?", one),
        stock_movements=await _movements(db, "seller_id = ?", one),
        products=int(products[0] or 0) if products else 0,
        current_stock=int(products[1] or 0) if products else 0,
        low_stock_products=int(products[2] or 0) if products else 0,
        notifications_sent=await _count(
            db, f"SELECT COUNT(*) {_NOTIFICATION_SCOPE} AND COALESCE(e.seller_id, o.seller_id, p.seller_id) = ?", one
        ),
        top_products=[
            TopProduct(product_id=row["product_id"], name=row["name"], units_sold=int(row["units"])) for row in top_rows
        ],
    )


async def product_owner(db: Database, product_id: str) -> tuple[bool, str | None]:
    """(whether anything is known about the product, its seller if known)."""
    row = await db.fetchone(
        """
        SELECT (SELECT seller_id FROM products WHERE id = ?) AS listed,
               (SELECT o.seller_id FROM order_items i JOIN orders o ON o.id = i.order_id
                 WHERE i.product_id = ? AND o.seller_id IS NOT NULL LIMIT 1) AS ordered,
               EXISTS (SELECT 1 FROM products WHERE id = ?) OR EXISTS (SELECT 1 FROM order_items WHERE product_id = ?)
                 AS known
        """,
        (product_id, product_id, product_id, product_id),
    )
    if row is None or not row["known"]:
        return False, None
    return True, row["listed"] or row["ordered"]


async def product_metrics(db: Database, product_id: str, seller_id: str | None) -> ProductMetrics:
    one = (product_id,)
    product = await db.fetchone("SELECT name, stock, low_stock FROM products WHERE id = ?", one)
    in_order = "o.id IN (SELECT order_id FROM order_items WHERE product_id = ?)"
    revenue_rows = await db.fetchall(
        f"""
        SELECT COALESCE(o.currency, o.paid_currency, '{NO_CURRENCY}') AS currency,
               SUM(i.quantity * COALESCE(i.unit_price_cents, 0)) AS cents
        FROM order_items i JOIN orders o ON o.id = i.order_id
        WHERE i.product_id = ? AND {PAID} GROUP BY 1 ORDER BY 1
        """,
        one,
    )
    return ProductMetrics(
        product_id=product_id,
        seller_id=seller_id,
        name=product["name"] if product else None,
        orders=await _count(db, "SELECT COUNT(DISTINCT order_id) FROM order_items WHERE product_id = ?", one),
        paid_orders=await _count(db, f"SELECT COUNT(*) FROM orders o WHERE {in_order} AND {PAID}", one),
        revenue_cents={row["currency"]: int(row["cents"]) for row in revenue_rows},
        units_sold=await _count(db, f"SELECT SUM(i.quantity) {_ITEMS} WHERE i.product_id = ? AND {PAID}", one),
        payment_failures=await _count(db, f"SELECT COUNT(*) {_FAILURES} AND {in_order}", one),
        stock_movements=await _movements(db, "product_id = ?", one),
        current_stock=product["stock"] if product else None,
        low_stock=bool(product["low_stock"]) if product else False,
        notifications_sent=await _count(
            db,
            f"""
            SELECT COUNT(*) {_NOTIFICATION_SCOPE} AND (COALESCE(n.product_id, e.product_id) = ?
                OR COALESCE(n.order_id, e.order_id) IN (SELECT order_id FROM order_items WHERE product_id = ?))
            """,
            (product_id, product_id),
        ),
    )


async def summary(db: Database) -> Summary:
    by_type = await db.fetchall("SELECT type, COUNT(*) AS count FROM events GROUP BY type ORDER BY type")
    return Summary(
        orders=await _count(db, "SELECT COUNT(*) FROM orders WHERE created_at IS NOT NULL"),
        paid_orders=await _count(db, f"SELECT COUNT(*) FROM orders o WHERE {PAID}"),
        revenue_cents=await _revenue(db, "1 = 1", ()),
        units_sold=await _count(db, f"SELECT SUM(i.quantity) {_ITEMS} WHERE {PAID}"),
        payment_failures=await _count(db, "SELECT COUNT(*) FROM payments WHERE outcome = 'failed'"),
        stock_movements=await _movements(db, "1 = 1", ()),
        sellers=await _count(
            db,
            """
            SELECT COUNT(*) FROM (
                SELECT id FROM users WHERE role = 'seller'
                UNION SELECT seller_id FROM products WHERE seller_id IS NOT NULL
                UNION SELECT seller_id FROM orders WHERE seller_id IS NOT NULL
            )
            """,
        ),
        products=await _count(db, "SELECT COUNT(*) FROM products WHERE deleted = 0"),
        users=await _count(db, "SELECT COUNT(*) FROM users"),
        notifications_sent=await _count(db, "SELECT COUNT(*) FROM notifications WHERE outcome = 'sent'"),
        notifications_failed=await _count(db, "SELECT COUNT(*) FROM notifications WHERE outcome = 'failed'"),
        events=sum(int(row["count"]) for row in by_type),
        events_by_type={row["type"]: int(row["count"]) for row in by_type},
    )
