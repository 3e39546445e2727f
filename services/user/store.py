"""user-service's tables and the queries on them."""
from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from gateway.envelope import utc_timestamp
from services.kit import Conflict, Database, Migration, Row, Transaction

MIGRATIONS = (
    Migration(
        1,
        "users and refresh tokens",
        """
        CREATE TABLE users (
            id TEXT PRIMARY KEY,
            email TEXT NOT NULL UNIQUE COLLATE NOCASE,
            name TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('customer', 'seller', 'admin')),
            password_hash TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE refresh_tokens (
            token_hash TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            family TEXT NOT NULL,
            expires_at REAL NOT NULL,
            created_at REAL NOT NULL,
            revoked_at REAL
        );
        CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
        CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
        """,
    ),
)

_USER_COLUMNS = "id, email, name, role, password_hash, created_at, updated_at"


def new_user_id() -> str:
    return "user_" + uuid.uuid4().hex


async def insert_user(tx: Transaction, email: str, name: str, role: str, password_hash: str) -> Row:
    now = utc_timestamp()
    user_id = new_user_id()
    try:
        await tx.execute(
            f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (user_id, email, name, role, password_hash, now, now),
        )
    except sqlite3.IntegrityError:
        raise Conflict("This email is already registered", details={"field": "email"}) from None
    row = await tx.fetchone(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,))
    assert row is not None
    return row


async def user_by_email(db: Database, email: str) -> Row | None:
    return await db.fetchone(f"SELECT {_USER_COLUMNS} FROM users WHERE email = ?", (email,))


async def user_by_id(db: Database | Transaction, user_id: str) -> Row | None:
    return await db.fetchone(f"SELECT {_USER_COLUMNS} FROM users WHERE id = ?", (user_id,))


async def update_user(tx: Transaction, user_id: str, changes: dict[str, str]) -> Row:
    """Apply column -> value changes; Conflict when the new email is taken."""
    assignments = ", ".join(f"{column} = ?" for column in changes)
    try:
        await tx.execute(
            f"UPDATE users SET {assignments}, updated_at = ? WHERE id = ?",
            (*changes.values(), utc_timestamp(), user_id),
        )
    except sqlite3.IntegrityError:
        raise Conflict("This email is already registered", details={"field": "email"}) from None
    row = await user_by_id(tx, user_id)
    assert row is not None
    return row


async def set_password_hash(tx: Transaction, user_id: str, password_hash: str) -> None:
    await tx.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))


def _digest(token: str) -> str:
    # Only the hash is stored: a copy of the database does not hand out sessions.
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_refresh_token(tx: Transaction, user_id: str, ttl: float, family: str | None = None) -> str:
    """A new refresh token; a family groups a login's successive tokens, so reuse revokes them all."""
    token = "rt_" + secrets.token_urlsafe(32)
    now = time.time()
    await tx.execute(
        "INSERT INTO refresh_tokens (token_hash, user_id, family, expires_at, created_at) VALUES (?, ?, ?, ?, ?)",
        (_digest(token), user_id, family or uuid.uuid4().hex, now + ttl, now),
    )
    return token


@dataclass(frozen=True, slots=True)
class Rotation:
    outcome: Literal["ok", "unknown", "expired", "reused"]
    user: Row | None = None
    token: str | None = None


async def rotate_refresh_token(tx: Transaction, token: str, ttl: float) -> Rotation:
    """Spend a refresh token and issue its successor. A token used twice means it was copied: the
    whole family is revoked, and the legitimate holder logs in again."""
    row = await tx.fetchone(
        "SELECT user_id, family, expires_at, revoked_at FROM refresh_tokens WHERE token_hash = ?", (_digest(token),)
    )
    if row is None:
        return Rotation("unknown")
    now = time.time()
    if row["revoked_at"] is not None:
        await tx.execute(
            "UPDATE refresh_tokens SET revoked_at = ? WHERE family = ? AND revoked_at IS NULL", (now, row["family"])
        )
        return Rotation("reused")
    if row["expires_at"] <= now:
        return Rotation("expired")
    user = await user_by_id(tx, row["user_id"])
    if user is None:
        return Rotation("unknown")
    await tx.execute("UPDATE refresh_tokens SET revoked_at = ? WHERE token_hash = ?", (now, _digest(token)))
    return Rotation("ok", user, await issue_refresh_token(tx, user["id"], ttl, row["family"]))


async def revoke_refresh_tokens(tx: Transaction, user_id: str) -> None:
    await tx.execute(
        "UPDATE refresh_tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", (time.time(), user_id)
    )
