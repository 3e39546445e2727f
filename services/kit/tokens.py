"""Signing the platform's JWTs: user tokens (user-service's login) and service tokens (calls between services).

Both are signed with the key the gateway and every service verify with: JWT_SECRET with the platform's
HS* algorithm (HS256 by default), or JWT_PRIVATE_KEY_FILE (RS*/PS*/ES*) when the platform verifies with
a public key (JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL). JWT_ISSUER and JWT_AUDIENCE, when the verifiers
require them, go into every token. A service without a key the platform verifies cannot sign: it fetches
its service tokens from user-service (POST /service-tokens, services/kit/client.py). Unlike
gateway.tokens (development tokens for curl), this signer works in production; production refuses to
start with the development secret (gateway.config.settings), so it never signs with that one there.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from jwt.warnings import InsecureKeyLengthWarning

from gateway.config.settings import DEV_JWT_SECRET
from services.kit.settings import ServiceSettings, signing_algorithm

SERVICE_ROLE = "service"
SERVICE_SUBJECT_PREFIX = "service:"


@dataclass(frozen=True, slots=True)
class SignedToken:
    token: str
    expires_at: int
    """Unix time of the token's exp claim."""


class SigningUnavailable(RuntimeError):
    """This process has no key the platform verifies: tokens are verified with public keys and
    JWT_PRIVATE_KEY_FILE is not set."""


class TokenSigner:
    """Signs claims with the platform key, adding the issuer and audience the verifiers require; one per process."""

    def __init__(self, settings: ServiceSettings) -> None:
        platform = settings.platform
        allowed = tuple(getattr(platform, "jwt_algorithms", ("HS256",)))
        audience = tuple(getattr(platform, "jwt_audience", ()))
        self._registered: dict[str, object] = {}
        if issuer := getattr(platform, "jwt_issuer", None):
            self._registered["iss"] = issuer
        if audience:
            self._registered["aud"] = audience[0]
        self._headers: dict[str, str] | None = None
        self.unavailable: str | None = None
        self._key: object = None
        if settings.private_key_pem is not None:
            key = load_pem_private_key(settings.private_key_pem, password=None)
            self._key, self.algorithm = key, signing_algorithm(key, allowed)
            if settings.key_id:
                self._headers = {"kid": settings.key_id}
        else:
            hmac = next((name for name in allowed if name.startswith("HS")), None)
            self.algorithm, self._key = hmac or "HS256", platform.jwt_secret
            if hmac is None or not platform.jwt_secret:
                if settings.fetches_tokens:
                    self.unavailable = (
                        "tokens are verified with public keys and JWT_PRIVATE_KEY_FILE is not set "
                        "(service tokens are fetched from KADAI_TOKEN_URL instead)"
                    )
                else:
                    self.unavailable = (
                        "tokens are verified with public keys: set JWT_PRIVATE_KEY_FILE to sign them, "
                        "or KADAI_TOKEN_URL and KADAI_SERVICE_CREDENTIAL to fetch service tokens from user-service"
                    )
        self._dev_secret = self._key == DEV_JWT_SECRET

    def sign(self, claims: dict[str, object], ttl: int) -> SignedToken:
        """Sign claims with iat and exp set from ttl (seconds); SigningUnavailable without a usable key."""
        if self.unavailable is not None:
            raise SigningUnavailable(self.unavailable)
        if ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        now = int(time.time())
        payload = {**self._registered, **claims, "iat": now, "exp": now + ttl}
        with warnings.catch_warnings():
            if self._dev_secret:
                # The spec's development secret is 29 bytes; production refuses it, development accepts it.
                warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            key: Any = self._key  # a secret or a private key object: pyjwt takes either
            token = jwt.encode(payload, key, algorithm=self.algorithm, headers=self._headers)
        return SignedToken(token, now + ttl)

    def user_token(self, user_id: str, email: str, role: str, ttl: int) -> SignedToken:
        """The spec's payload: sub, email, role, iat, exp."""
        if role == SERVICE_ROLE or user_id.startswith(SERVICE_SUBJECT_PREFIX):
            raise ValueError("a user token cannot carry the service role or a service subject")
        return self.sign({"sub": user_id, "email": email, "role": role}, ttl)

    def service_token(self, service: str, ttl: int) -> SignedToken:
        """A token naming the calling service: sub "service:<name>", role "service"."""
        return self.sign({"sub": SERVICE_SUBJECT_PREFIX + service, "role": SERVICE_ROLE}, ttl)
