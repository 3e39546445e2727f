"""Development tokens (HS256 with JWT_SECRET) in the spec's payload shape, for curl and tests."""
from __future__ import annotations

import time
import warnings

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from gateway.config.settings import DEV_JWT_SECRET, Settings


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
    with warnings.catch_warnings():
        if settings.jwt_secret == DEV_JWT_SECRET:
            # The spec's development secret is 29 bytes; production refuses it and anything under 32.
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(payload, settings.jwt_secret, algorithm="HS256")
