"""broadcast-service's tables: campaigns, the deliveries reported for them, and a local copy of users."""
from __future__ import annotations

import time
import uuid

import orjson

from gateway.envelope import utc_timestamp
from services.kit import Database, Migration, Row, Transaction

MIGRATIONS = (
    Migration(
        1,
        "campaigns, deliveries and users",
        """
        CREATE TABLE campaigns (
            id TEXT PRIMARY KEY,
            owner_id TEXT NOT NULL,
            name TEXT NOT NULL,
            message TEXT NOT NULL,
            audience TEXT NOT NULL CHECK (audience IN ('all-customers', 'list')),
            recipient_list TEXT,
            status TEXT NOT NULL CHECK (status IN ('draft', 'scheduled', 'sending', 'sent')),
            scheduled_at TEXT,
            scheduled_epoch REAL,
            recipients INTEGER NOT NULL DEFAULT 0,
            delivered INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            requested_at TEXT,
            completed_at TEXT
        );
        CREATE INDEX campaigns_due ON campaigns (scheduled_epoch) WHERE status = 'scheduled';
        CREATE INDEX campaigns_owner ON campaigns (owner_id, created_at);
        CREATE TABLE deliveries (
            notification_id TEXT PRIMARY KEY,
            campaign_id TEXT NOT NULL REFERENCES campaigns (id),
            outcome TEXT NOT NULL CHECK (outcome IN ('delivered', 'failed')),
            recorded_at TEXT NOT NULL
        );
        CREATE INDEX deliveries_campaign ON deliveries (campaign_id);
        CREATE TABLE users (
            id TEXT PRIMARY KEY,
            email TEXT,
            role TEXT,
            seen_at TEXT NOT NULL
        );
        CREATE INDEX users_role ON users (role);
        """,
    ),
)

_COLUMNS = (
    "id, owner_id, name, message, audience, recipient_list, status, scheduled_at, recipients, delivered, failed, "
    "created_at, updated_at, requested_at, completed_at"
)


def new_campaign_id() -> str:
    return "bc_" + uuid.uuid4().hex


async def insert_campaign(
    tx: Transaction,
    *,
    owner_id: str,
    name: str,
    message: str,
    recipient_list: list[str] | None,
    scheduled_at: str | None,
    scheduled_epoch: float | None,
) -> Row:
    campaign_id, now = new_campaign_id(), utc_timestamp()
    await tx.execute(
        """
        INSERT INTO campaigns (id, owner_id, name, message, audience, recipient_list, status, scheduled_at,
            scheduled_epoch, created_at, updated_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        """,
        (
            campaign_id,
            owner_id,
            name,
            message,
            "all-customers" if recipient_list is None else "list",
            None if recipient_list is None else orjson.dumps(recipient_list).decode(),
            "draft" if scheduled_at is None else "scheduled",
            scheduled_at,
            scheduled_epoch,
            now,
            now,
        ),
    )
    row = await campaign(tx, campaign_id)
    assert row is not None
    return row


async def campaign(db: Database | Transaction, campaign_id: str) -> Row | None:
    return await db.fetchone(f"SELECT {_COLUMNS} FROM campaigns WHERE id = ?", (campaign_id,))


async def due_campaigns(db: Database) -> list[str]:
    rows = await db.fetchall(
        "SELECT id FROM campaigns WHERE status = 'scheduled' AND scheduled_epoch <= ? ORDER BY scheduled_epoch",
        (time.time(),),
    )
    return [row["id"] for row in rows]


async def customers(tx: Transaction) -> list[str]:
    rows = await tx.fetchall("SELECT id FROM users WHERE role = 'customer' ORDER BY id")
    return [row["id"] for row in rows]


async def mark_sending(tx: Transaction, campaign_id: str, recipients: int) -> None:
    """Hand-off recorded; a campaign without recipients has nothing to wait for and is sent at once."""
    now = utc_timestamp()
    await tx.execute(
        """
        UPDATE campaigns SET status = CASE WHEN ? = 0 THEN 'sent' ELSE 'sending' END, recipients = ?,
            requested_at = ?, completed_at = CASE WHEN ? = 0 THEN ? END, updated_at = ?
        WHERE id = ?
        """,
        (recipients, recipients, now, recipients, now, now, campaign_id),
    )


async def record_delivery(tx: Transaction, notification_id: str, campaign_id: str, outcome: str) -> bool:
    """Count one recipient's outcome (once per notification); the campaign is sent when all are in."""
    inserted = await tx.execute(
        """
        INSERT INTO deliveries (notification_id, campaign_id, outcome, recorded_at)
        SELECT ?, id, ?, ? FROM campaigns WHERE id = ?
        ON CONFLICT (notification_id) DO NOTHING
        """,
        (notification_id, outcome, utc_timestamp(), campaign_id),
    )
    if inserted.rowcount != 1:
        return False
    now = utc_timestamp()
    column = "delivered" if outcome == "delivered" else "failed"
    await tx.execute(f"UPDATE campaigns SET {column} = {column} + 1, updated_at = ? WHERE id = ?", (now, campaign_id))
    await tx.execute(
        """
        UPDATE campaigns SET status = 'sent', completed_at = ?
        WHERE id = ? AND status = 'sending' AND delivered + failed >= recipients
        """,
        (now, campaign_id),
    )
    return True


async def upsert_user(tx: Transaction, user_id: str, *, email: str | None, role: str | None, at: str) -> None:
    """Keep the newest facts about a user: an older event (redelivered late) does not undo a newer one."""
    await tx.execute(
        """
        INSERT INTO users (id, email, role, seen_at) VALUES (?, ?, ?, ?)
        ON CONFLICT (id) DO UPDATE SET
            email = COALESCE(excluded.email, email), role = COALESCE(excluded.role, role), seen_at = excluded.seen_at
        WHERE excluded.seen_at >= users.seen_at
        """,
        (user_id, email, role, at),
    )


async def list_campaigns(
    db: Database, *, owner_id: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[Row], int]:
    conditions, params = [], []
    for column, value in (("owner_id", owner_id), ("status", status)):
        if value is not None:
            conditions.append(f"{column} = ?")
            params.append(value)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    count = await db.fetchone(f"SELECT COUNT(*) FROM campaigns {where}", params)
    rows = await db.fetchall(
        f"SELECT {_COLUMNS} FROM campaigns {where} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
        (*params, limit, offset),
    )
    return rows, int(count[0]) if count else 0
