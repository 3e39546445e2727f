"""Verify a bearer token against the configured keys and return its claims.

The one place that decides whether a JWT is good: the gateway's jwt middleware and every service's
kit call `TokenVerifier.verify`, so both sides accept exactly the same tokens.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from gateway.config.settings import DEV_JWT_SECRET, Settings

MAX_TOKEN_LENGTH = 8192


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified identity a token carries."""

    sub: str
    role: str
    exp: int
    email: str | None = None


class TokenRejected(Exception):
    """The token is missing, malformed, expired, badly signed or has wrong claims.

    `reason` is a short machine word for metrics and logs (missing, malformed, expired, signature,
    claims); the message is safe to show to the client.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class TokenVerifier:
    """HS256 with the shared secret of the settings."""

    def __init__(self, settings: Settings) -> None:
        self.secret = settings.jwt_secret
        self.leeway = 5.0

    async def verify(self, token: str) -> Claims:
        if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise TokenRejected("malformed", "Malformed token")
        try:
            with warnings.catch_warnings():
                if self.secret == DEV_JWT_SECRET:
                    warnings.simplefilter("ignore", InsecureKeyLengthWarning)
                payload = jwt.decode(
                    token,
                    self.secret,
                    algorithms=["HS256"],
                    options={"require": ["exp", "sub"]},
                    leeway=self.leeway,
                )
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejected("expired", "Token expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenRejected("signature", "Invalid token signature") from exc
        except jwt.DecodeError as exc:
            raise TokenRejected("malformed", "Malformed token") from exc
        except jwt.PyJWTError as exc:
            raise TokenRejected("claims", "Invalid token claims") from exc
        return Claims(
            sub=str(payload["sub"]),
            role=str(payload.get("role", "")),
            exp=int(payload["exp"]),
            email=payload.get("email"),
        )
