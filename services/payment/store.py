"""payment-service's tables and the queries on them: payments, orders cancelled before they were charged,
and the Idempotency-Keys of POST /payments with the response each one got."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from gateway.envelope import utc_timestamp
from services.kit import Database, Migration, Row, Transaction

MIGRATIONS = (
    Migration(
        1,
        "payments, cancelled orders and idempotency keys",
        """
        CREATE TABLE payments (
            id TEXT PRIMARY KEY,
            order_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            source TEXT NOT NULL CHECK (source IN ('order', 'api')),
            amount_cents INTEGER NOT NULL CHECK (amount_cents >= 0),
            currency TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('succeeded', 'failed', 'refunded')),
            failure_reason TEXT,
            processor TEXT NOT NULL,
            processor_reference TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            refunded_at TEXT
        );
        CREATE UNIQUE INDEX payments_one_per_order ON payments (order_id) WHERE source = 'order';
        CREATE INDEX payments_order ON payments (order_id);
        CREATE INDEX payments_user ON payments (user_id);
        CREATE TABLE cancelled_orders (
            order_id TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE idempotency_keys (
            caller_id TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('in_progress', 'done')),
            status INTEGER,
            body BLOB,
            payment_id TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (caller_id, key)
        );
        CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
        """,
    ),
)

_COLUMNS = (
    "id, order_id, user_id, source, amount_cents, currency, status, failure_reason, processor, "
    "processor_reference, created_at, updated_at, refunded_at"
)


def new_payment_id() -> str:
    return "pay_" + uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class NewPayment:
    order_id: str
    user_id: str
    source: str
    amount_cents: int
    currency: str
    succeeded: bool
    failure_reason: str | None
    processor: str
    processor_reference: str | None


async def insert_payment(tx: Transaction, payment: NewPayment) -> Row:
    now = utc_timestamp()
    payment_id = new_payment_id()
    await tx.execute(
        f"INSERT INTO payments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        (
            payment_id,
            payment.order_id,
            payment.user_id,
            payment.source,
            payment.amount_cents,
            payment.currency,
            "succeeded" if payment.succeeded else "failed",
            payment.failure_reason,
            payment.processor,
            payment.processor_reference,
            now,
            now,
        ),
    )
    row = await payment_by_id(tx, payment_id)
    assert row is not None
    return row


async def payment_by_id(db: Database | Transaction, payment_id: str) -> Row | None:
    return await db.fetchone(f"SELECT {_COLUMNS} FROM payments WHERE id = ?", (payment_id,))


async def order_payment(tx: Transaction, order_id: str) -> Row | None:
    """The payment made for an order's order.created (at most one)."""
    return await tx.fetchone(f"SELECT {_COLUMNS} FROM payments WHERE order_id = ? AND source = 'order'", (order_id,))


async def mark_refunded(tx: Transaction, payment_id: str) -> None:
    now = utc_timestamp()
    await tx.execute(
        "UPDATE payments SET status = 'refunded', refunded_at = ?, updated_at = ? WHERE id = ?", (now, now, payment_id)
    )


async def list_payments(
    db: Database, *, user_id: str | None, order_id: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[Row], int]:
    """One page of payments, newest first, and how many match in all."""
    clauses: list[str] = []
    params: list[object] = []
    for column, value in (("user_id", user_id), ("order_id", order_id), ("status", status)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    where = " AND ".join(clauses) or "1"
    counted = await db.fetchone(f"SELECT COUNT(*) FROM payments WHERE {where}", params)
    rows = await db.fetchall(
        f"SELECT {_COLUMNS} FROM payments WHERE {where} ORDER BY rowid DESC LIMIT ? OFFSET ?", [*params, limit, offset]
    )
    return rows, int(counted[0]) if counted else 0


async def cancel_order(tx: Transaction, order_id: str, reason: str) -> None:
    """Remember that an order must not be charged (its stock could not be reserved)."""
    await tx.execute(
        "INSERT OR IGNORE INTO cancelled_orders (order_id, reason, created_at) VALUES (?, ?, ?)",
        (order_id, reason, utc_timestamp()),
    )


async def cancellation(tx: Transaction, order_id: str) -> str | None:
    row = await tx.fetchone("SELECT reason FROM cancelled_orders WHERE order_id = ?", (order_id,))
    return None if row is None else str(row["reason"])


# Idempotency keys ---------------------------------------------------------------------------------------


async def held_key(tx: Transaction, caller_id: str, key: str, ttl: float) -> Row | None:
    """The record of a caller's key, unless it is older than ttl (expired keys are deleted here)."""
    await tx.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (time.time() - ttl,))
    return await tx.fetchone(
        "SELECT fingerprint, state, status, body, created_at FROM idempotency_keys WHERE caller_id = ? AND key = ?",
        (caller_id, key),
    )


async def hold_key(tx: Transaction, caller_id: str, key: str, fingerprint: str) -> None:
    await tx.execute(
        "INSERT INTO idempotency_keys (caller_id, key, fingerprint, state, created_at) "
        "VALUES (?, ?, ?, 'in_progress', ?)",
        (caller_id, key, fingerprint, time.time()),
    )


async def retake_key(tx: Transaction, caller_id: str, key: str) -> None:
    """Hold a key again from now on (its first request died holding it)."""
    await tx.execute(
        "UPDATE idempotency_keys SET created_at = ? WHERE caller_id = ? AND key = ? AND state = 'in_progress'",
        (time.time(), caller_id, key),
    )


async def release_key(tx: Transaction, caller_id: str, key: str) -> None:
    await tx.execute(
        "DELETE FROM idempotency_keys WHERE caller_id = ? AND key = ? AND state = 'in_progress'", (caller_id, key)
    )


async def complete_key(
    tx: Transaction, caller_id: str, key: str, status: int, body: bytes, payment_id: str
) -> None:
    await tx.execute(
        "UPDATE idempotency_keys SET state = 'done', status = ?, body = ?, payment_id = ? "
        "WHERE caller_id = ? AND key = ?",
        (status, body, payment_id, caller_id, key),
    )
