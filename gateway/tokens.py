"""Development tokens (HS256 with JWT_SECRET) in the spec's payload shape, for curl and tests."""
from __future__ import annotations

import time

import jwt

from gateway.config.settings import Settings


class TokenRefused(Exception):
    """Minting development tokens is not allowed in this mode."""


def mint_token(settings: Settings, sub: str, role: str, ttl: int = 3600, email: str | None = None) -> str:
    if settings.production:
        raise TokenRefused("development tokens are not minted when KADAI_ENV=production")
    if ttl <= 0:
        raise ValueError("ttl must be a positive number of seconds")
    now = int(time.time())
    payload: dict[str, object] = {"sub": sub, "role": role, "iat": now, "exp": now + ttl}
    if email:
        payload["email"] = email
    return jwt.encode(payload, settings.jwt_secret, algorithm="HS256")
