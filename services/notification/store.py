"""notification-service's tables: local copies of users and orders (from events), and the notifications."""
from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.envelope import utc_timestamp
from services.kit import Database, Migration, Row, Transaction

MIGRATIONS = (
    Migration(
        1,
        "users, orders and notifications",
        """
        CREATE TABLE users (
            id TEXT PRIMARY KEY,
            email TEXT,
            phone TEXT,
            name TEXT,
            role TEXT,
            seen_at TEXT NOT NULL
        );
        CREATE INDEX users_email ON users (email COLLATE NOCASE);
        CREATE TABLE orders (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            seller_id TEXT,
            amount_cents INTEGER,
            currency TEXT,
            phone TEXT
        );
        CREATE TABLE notifications (
            id TEXT PRIMARY KEY,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            request_id TEXT,
            recipient TEXT NOT NULL,
            user_id TEXT,
            address TEXT NOT NULL,
            address_kind TEXT NOT NULL CHECK (address_kind IN ('phone', 'email', 'user')),
            channel TEXT NOT NULL DEFAULT 'sms',
            template TEXT NOT NULL,
            body TEXT NOT NULL,
            campaign_id TEXT,
            order_id TEXT,
            product_id TEXT,
            status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error TEXT,
            provider TEXT,
            provider_message_id TEXT,
            created_at TEXT NOT NULL,
            sent_at TEXT,
            UNIQUE (event_id, recipient)
        );
        CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';
        CREATE INDEX notifications_user ON notifications (user_id, created_at);
        CREATE INDEX notifications_campaign ON notifications (campaign_id) WHERE campaign_id IS NOT NULL;
        CREATE INDEX notifications_created ON notifications (created_at);
        """,
    ),
)


@dataclass(frozen=True, slots=True)
class NewNotification:
    event_id: str
    event_type: str
    request_id: str | None
    recipient: str
    """Who, as the event named them: a user ID, or the address itself. Unique per event."""
    user_id: str | None
    address: str
    address_kind: str
    template: str
    body: str
    campaign_id: str | None = None
    order_id: str | None = None
    product_id: str | None = None


def new_notification_id() -> str:
    return "ntf_" + uuid.uuid4().hex


async def upsert_user(
    tx: Transaction, user_id: str, *, email: str | None, phone: str | None, name: str | None, role: str | None, at: str
) -> None:
    """Keep the newest facts about a user: an older event (redelivered late) does not undo a newer one."""
    await tx.execute(
        """
        INSERT INTO users (id, email, phone, name, role, seen_at) VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (id) DO UPDATE SET
            email = COALESCE(excluded.email, email),
            phone = COALESCE(excluded.phone, phone),
            name = COALESCE(excluded.name, name),
            role = COALESCE(excluded.role, role),
            seen_at = excluded.seen_at
        WHERE excluded.seen_at >= users.seen_at
        """,
        (user_id, email, phone, name, role, at),
    )


async def user(tx: Transaction, user_id: str) -> Row | None:
    return await tx.fetchone("SELECT id, email, phone FROM users WHERE id = ?", (user_id,))


async def user_id_by_email(tx: Transaction, email: str) -> str | None:
    row = await tx.fetchone("SELECT id FROM users WHERE email = ? COLLATE NOCASE ORDER BY seen_at DESC", (email,))
    return str(row["id"]) if row else None


async def remember_order(
    tx: Transaction,
    order_id: str,
    *,
    user_id: str,
    seller_id: str | None,
    amount_cents: int | None,
    currency: str | None,
    phone: str | None,
) -> None:
    await tx.execute(
        """
        INSERT INTO orders (id, user_id, seller_id, amount_cents, currency, phone) VALUES (?, ?, ?, ?, ?, ?)
        ON CONFLICT (id) DO NOTHING
        """,
        (order_id, user_id, seller_id, amount_cents, currency, phone),
    )


async def order(tx: Transaction, order_id: str) -> Row | None:
    return await tx.fetchone(
        "SELECT id, user_id, seller_id, amount_cents, currency, phone FROM orders WHERE id = ?", (order_id,)
    )


async def add_notifications(tx: Transaction, items: Sequence[NewNotification]) -> int:
    """Record messages to send; one per (event, recipient), so a recipient named twice gets one. Returns
    how many were new."""
    now, stamp = time.time(), utc_timestamp()
    result = await tx.executemany(
        """
        INSERT INTO notifications (
            id, event_id, event_type, request_id, recipient, user_id, address, address_kind, template, body,
            campaign_id, order_id, product_id, status, next_attempt_at, created_at
        ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?)
        ON CONFLICT (event_id, recipient) DO NOTHING
        """,
        [
            (
                new_notification_id(),
                item.event_id,
                item.event_type,
                item.request_id,
                item.recipient,
                item.user_id,
                item.address,
                item.address_kind,
                item.template,
                item.body,
                item.campaign_id,
                item.order_id,
                item.product_id,
                now,
                stamp,
            )
            for item in items
        ],
    )
    return max(result.rowcount, 0)


async def due(db: Database, limit: int) -> list[Row]:
    """Pending messages whose time has come, oldest first."""
    return await db.fetchall(
        f"SELECT {_COLUMNS} FROM notifications WHERE status = 'pending' AND next_attempt_at <= ? "
        "ORDER BY next_attempt_at, rowid LIMIT ?",
        (time.time(), limit),
    )


async def mark_sent(tx: Transaction, notification_id: str, provider: str, message_id: str | None) -> bool:
    result = await tx.execute(
        """
        UPDATE notifications SET status = 'sent', attempts = attempts + 1, sent_at = ?, provider = ?,
            provider_message_id = ?, last_error = NULL
        WHERE id = ? AND status = 'pending'
        """,
        (utc_timestamp(), provider, message_id, notification_id),
    )
    return result.rowcount == 1


async def mark_retry(tx: Transaction, notification_id: str, error: str, next_attempt_at: float) -> None:
    await tx.execute(
        """
        UPDATE notifications SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?
        WHERE id = ? AND status = 'pending'
        """,
        (error, next_attempt_at, notification_id),
    )


async def mark_failed(tx: Transaction, notification_id: str, provider: str, error: str) -> bool:
    result = await tx.execute(
        """
        UPDATE notifications SET status = 'failed', attempts = attempts + 1, last_error = ?, provider = ?
        WHERE id = ? AND status = 'pending'
        """,
        (error, provider, notification_id),
    )
    return result.rowcount == 1


_COLUMNS = (
    "id, event_id, event_type, request_id, recipient, user_id, address, address_kind, channel, template, body, "
    "campaign_id, order_id, product_id, status, attempts, last_error, provider, created_at, sent_at"
)

FILTERS = {
    "user_id": "user_id = ?",
    "status": "status = ?",
    "template": "template = ?",
    "campaign_id": "campaign_id = ?",
    "order_id": "order_id = ?",
    "event_type": "event_type = ?",
}
"""Query filter -> SQL condition (names are the list query's fields)."""


async def list_notifications(
    db: Database, filters: dict[str, str], *, limit: int, offset: int
) -> tuple[list[Row], int]:
    """A page of notifications, newest first, and how many match in all."""
    conditions = [FILTERS[name] for name in filters]
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    params = tuple(filters.values())
    count = await db.fetchone(f"SELECT COUNT(*) FROM notifications {where}", params)
    rows = await db.fetchall(
        f"SELECT {_COLUMNS} FROM notifications {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
        (*params, limit, offset),
    )
    return rows, int(count[0]) if count else 0


async def get_notification(db: Database, notification_id: str) -> Row | None:
    return await db.fetchone(f"SELECT {_COLUMNS} FROM notifications WHERE id = ?", (notification_id,))
