"""Who is calling: taken from a verified bearer token only, never from X-User-ID-style headers.

A service trusts the gateway's X-User-ID / X-User-Role headers no more than a client's: anyone inside
the network can send them. The token is verified again here (defence in depth) with the gateway's own
verifier, so both accept exactly the same tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.auth import Claims, TokenRejected, TokenVerifier
from services.kit.errors import Unauthorized
from services.kit.tokens import SERVICE_ROLE, SERVICE_SUBJECT_PREFIX

_CHALLENGE = 'Bearer realm="kadai"'


@dataclass(frozen=True, slots=True)
class Caller:
    """The verified identity of a request: a user, or another service."""

    id: str
    """The token's sub: a user ID, or "service:<name>" for a service."""
    role: str
    email: str | None
    token: str
    """The bearer token itself, to call another service on the caller's behalf."""

    @property
    def is_service(self) -> bool:
        return self.role == SERVICE_ROLE

    @property
    def service(self) -> str | None:
        """The calling service's name, for a service token."""
        return self.id.removeprefix(SERVICE_SUBJECT_PREFIX) if self.is_service else None

    @classmethod
    def from_claims(cls, claims: Claims, token: str) -> Caller:
        # A service subject with a user role (or the reverse) is a token no part of the platform signs.
        if (claims.role == SERVICE_ROLE) != claims.sub.startswith(SERVICE_SUBJECT_PREFIX):
            raise TokenRejected("claims", "Invalid token claims")
        return cls(id=claims.sub, role=claims.role, email=claims.email, token=token)


def bearer_token(request: web.BaseRequest) -> str | None:
    """The token of the Authorization header; None without one; Unauthorized when it is not a single Bearer."""
    values = request.headers.getall("Authorization", [])
    if not values:
        return None
    if len(values) > 1:
        raise Unauthorized("Several Authorization headers", headers={"WWW-Authenticate": _CHALLENGE})
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Expected an Authorization: Bearer token", headers={"WWW-Authenticate": _CHALLENGE})
    return token.strip()


async def authenticate(request: web.BaseRequest, verifier: TokenVerifier, *, required: bool) -> Caller | None:
    """The caller of a request. Required: Unauthorized without a good token. Not required (public routes):
    a good token still names the caller; a bad or missing one makes it anonymous."""
    try:
        token = bearer_token(request)
    except Unauthorized:
        if required:
            raise
        return None
    if token is None:
        if required:
            raise Unauthorized("Missing bearer token", headers={"WWW-Authenticate": _CHALLENGE})
        return None
    try:
        return Caller.from_claims(await verifier.verify(token), token)
    except TokenRejected as exc:
        if not required:
            return None
        raise Unauthorized(exc.message, headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'}) from None
