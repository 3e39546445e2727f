"""Password hashing with hashlib.scrypt: a random salt per password, the parameters stored with the hash,
constant-time comparison. Hashing runs in a worker thread: it is meant to be slow.

Stored form: scrypt$<log2 N>$<r>$<p>$<salt, base64>$<key, base64>
"""
from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import os

R = 8
P = 1
KEY_BYTES = 32
SALT_BYTES = 16


def _derive(password: str, salt: bytes, cost: int, r: int, p: int) -> bytes:
    n = 1 << cost
    # OpenSSL's default memory cap (32 MiB) is below what N=2^15 and up need.
    maxmem = 128 * r * (n + p + 2) + (1 << 20)
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES, maxmem=maxmem)


def hash_password(password: str, cost: int) -> str:
    salt = os.urandom(SALT_BYTES)
    key = _derive(password, salt, cost, R, P)
    return f"scrypt${cost}${R}${P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, cost, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key)
        actual = _derive(password, base64.b64decode(salt), int(cost), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def needs_rehash(stored: str, cost: int) -> bool:
    """Whether the hash was made with weaker parameters than the current ones."""
    parts = stored.split("$")
    try:
        return len(parts) != 6 or parts[0] != "scrypt" or int(parts[1]) < cost or int(parts[2]) != R
    except ValueError:
        return True


@functools.cache
def _dummy_hash(cost: int) -> str:
    return hash_password(os.urandom(16).hex(), cost)


async def hash_password_async(password: str, cost: int) -> str:
    return await asyncio.to_thread(hash_password, password, cost)


async def verify_password_async(password: str, stored: str | None, cost: int) -> bool:
    """Verify against stored; with no stored hash (unknown account) spend the same time and say no."""
    if stored is None:
        await asyncio.to_thread(verify_password, password, _dummy_hash(cost))
        return False
    return await asyncio.to_thread(verify_password, password, stored)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
