"""Verify a bearer token against the configured keys and return its claims.

The one place that decides whether a JWT is good: the gateway's jwt middleware and every service's
kit call `TokenVerifier.verify`, so both sides accept exactly the same tokens.

    token -> cache hit? -> Claims
          -> shape and header checks (no crypto: size, segments, alg allow-list, crit, kid)
          -> key (secret, PEM file, or JWKS by kid) -> signature and claims (pyjwt) -> Claims, cached
"""
from __future__ import annotations

import base64
import binascii
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from jwt.warnings import InsecureKeyLengthWarning

from gateway.auth.cache import VerifiedTokenCache
from gateway.auth.jwks import JwksKeys, KeysUnavailable
from gateway.auth.keys import (
    HMAC_MIN_SECRET,
    SUPPORTED_ALGORITHMS,
    PublicKey,
    VerificationKey,
    describe_key,
    is_hmac,
    load_public_key_file,
)
from gateway.config.settings import DEV_JWT_SECRET, Settings, public_url

MAX_TOKEN_LENGTH = 8192
MAX_HEADER_SEGMENT = 1024
"""A JOSE header of ours is under 200 characters; anything far larger is an attack, refused undecoded."""
MAX_KID_LENGTH = 256
MAX_IDENTITY_LENGTH = 256
"""Longest sub or role passed upstream in a header."""

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_KID = re.compile(r"[\x21-\x7e]+")


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
    claims, unavailable); the message is safe to show to the client.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _malformed() -> TokenRejected:
    return TokenRejected("malformed", "Malformed token")


def _bad_signature() -> TokenRejected:
    return TokenRejected("signature", "Invalid token signature")


def _bad_claims(message: str = "Invalid token claims") -> TokenRejected:
    return TokenRejected("claims", message)


class TokenVerifier:
    """Verifies tokens with the key source of the settings; one per process, so its cache is shared.

    HS* tokens are checked with JWT_SECRET; RS/PS/ES* tokens with a PEM public key or the keys of a
    JWKS URL (call `start()` to fetch them early and `close()` at the end; `verify` fetches on demand).
    """

    def __init__(self, settings: Settings) -> None:
        self.algorithms = frozenset(settings.jwt_algorithms)
        if not self.algorithms or not self.algorithms <= set(SUPPORTED_ALGORITHMS):
            # Settings built in code skip load_settings' checks; `none` must not slip in that way.
            raise ValueError(f"JWT algorithms must be among {', '.join(SUPPORTED_ALGORITHMS)}")
        self.source = settings.jwt_key_source
        self.issuer = settings.jwt_issuer
        self.audience = list(settings.jwt_audience) or None
        self.leeway = settings.jwt_leeway
        self.cache = VerifiedTokenCache(settings.jwt_cache_size)
        self._options: dict[str, Any] = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}
        self._secret: bytes | None = None
        self._dev_secret = False
        self._short_secret: frozenset[str] = frozenset()
        self._key: VerificationKey | None = None
        self._key_file = settings.jwt_public_key_file
        self.jwks: JwksKeys | None = None
        if is_hmac(self.algorithms):
            if not self.algorithms <= set(HMAC_MIN_SECRET):
                raise ValueError("HS* and RS/PS/ES* algorithms cannot be allowed together (key confusion)")
            if self.source != "secret":
                raise ValueError("HS* algorithms verify with the shared secret, not with public keys")
            if not settings.jwt_secret:
                raise ValueError("HS* algorithms need JWT_SECRET")
            self._secret = settings.jwt_secret.encode()
            self._dev_secret = settings.jwt_secret == DEV_JWT_SECRET
            # Settings allow a short secret outside production only; pyjwt would warn on every decode.
            self._short_secret = frozenset(
                name for name in self.algorithms if len(self._secret) < HMAC_MIN_SECRET[name]
            )
        elif self.source == "publicKeyFile":
            assert settings.jwt_public_key_file is not None
            self._key = load_public_key_file(settings.jwt_public_key_file, self.algorithms)
        elif self.source == "jwks":
            assert settings.jwt_jwks_url is not None
            self.jwks = JwksKeys(
                settings.jwt_jwks_url,
                sorted(self.algorithms),
                ttl=settings.jwt_jwks_ttl,
                min_interval=settings.jwt_jwks_refresh_interval,
                on_rotation=self.cache.clear,
            )
        else:
            raise ValueError("RS/PS/ES* algorithms need a public key file or a JWKS URL")

    async def start(self) -> None:
        if self.jwks is not None:
            await self.jwks.start()

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    def cached(self, token: str) -> Claims | None:
        """The claims of a token verified before and not yet expired, without awaiting anything."""
        return self.cache.get(token, time.time())

    async def verify(self, token: str) -> Claims:
        return self.cached(token) or await self.verify_uncached(token)

    async def verify_uncached(self, token: str) -> Claims:
        """Check a token cached() did not know, and remember its claims."""
        now = time.time()
        header = _checked_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            # `none` in any spelling, and HS* where public keys verify (and the reverse), end here.
            raise _bad_signature()
        key = await self._key_for(alg, header.get("kid"))
        claims = self._decode(token, key, alg)
        self.cache.put(token, claims, now)
        return claims

    async def _key_for(self, alg: str, kid: str | None) -> bytes | PublicKey:
        if self._secret is not None:
            return self._secret
        if self._key is not None:
            if alg not in self._key.algorithms:
                raise _bad_signature()
            return self._key.key
        assert self.jwks is not None
        try:
            found = await self.jwks.key_for(kid)
        except KeysUnavailable as exc:
            raise TokenRejected("unavailable", "Token could not be verified") from exc
        if found is None or alg not in found.algorithms:
            raise _bad_signature()
        return found.key

    def _decode(self, token: str, key: bytes | PublicKey, alg: str) -> Claims:
        try:
            if alg in self._short_secret:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", InsecureKeyLengthWarning)
                    payload = self._pyjwt_decode(token, key, alg)
            else:
                payload = self._pyjwt_decode(token, key, alg)
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejected("expired", "Token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise _bad_claims("Token not yet valid") from exc
        except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError, jwt.InvalidKeyError) as exc:
            raise _bad_signature() from exc
        except jwt.DecodeError as exc:
            raise _malformed() from exc
        except jwt.PyJWTError as exc:
            raise _bad_claims() from exc
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            # Whatever a hostile payload makes the libraries trip over is the token's fault, never a 500.
            raise _malformed() from exc
        return _claims(payload)

    def _pyjwt_decode(self, token: str, key: bytes | PublicKey, alg: str) -> dict[str, Any]:
        return jwt.decode(
            token,
            key,
            algorithms=[alg],
            options=self._options,  # type: ignore[arg-type]
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway,
        )

    def describe(self) -> dict[str, object]:
        """The key source's state for /api/v1/health/detailed; never the secret."""
        report: dict[str, object] = {
            "algorithms": sorted(self.algorithms),
            "keySource": self.source,
            "issuer": self.issuer,
            "audience": self.audience or [],
            "leewaySeconds": self.leeway,
            "cache": self.cache.describe(),
        }
        if self._secret is not None:
            report["secret"] = "development default" if self._dev_secret else "set"
        if self._key is not None:
            report["publicKeyFile"] = {"path": self._key_file, "key": describe_key(self._key.key)}
        if self.jwks is not None:
            report["jwks"] = self.jwks.describe()
            report["status"] = "ok" if self.jwks.count and self.jwks.last_error is None else (
                "stale" if self.jwks.count else "unavailable"
            )
        else:
            report["status"] = "ok"
        return report

    def __repr__(self) -> str:
        where = public_url(self.jwks.url) if self.jwks is not None else self.source
        return f"TokenVerifier({sorted(self.algorithms)}, {where})"


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _checked_header(token: str) -> dict[str, Any]:
    """The JOSE header, after the checks that cost no crypto; raises TokenRejected."""
    if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
        raise _malformed()
    head, body, signature = token.split(".")
    if len(head) > MAX_HEADER_SEGMENT or not all(_SEGMENT.fullmatch(part) for part in (head, body, signature)):
        raise _malformed()
    try:
        header = orjson.loads(_b64decode(head))
    except (binascii.Error, ValueError) as exc:
        raise _malformed() from exc
    if not isinstance(header, dict):
        raise _malformed()
    if "crit" in header:
        # No extension is understood here, so none may be critical (RFC 7515, 4.1.11); this also refuses
        # b64=false (unencoded payloads).
        raise _malformed()
    if header.get("b64", True) is not True:
        raise _malformed()
    kid = header.get("kid")
    if kid is not None and not (isinstance(kid, str) and len(kid) <= MAX_KID_LENGTH and _KID.fullmatch(kid)):
        raise _malformed()
    return header


def _identity(value: object) -> str | None:
    """A claim fit to travel in a header: a short printable string (no CR/LF, no control characters)."""
    if isinstance(value, str) and 0 < len(value) <= MAX_IDENTITY_LENGTH and value.isprintable():
        return value
    return None


def _claims(payload: dict[str, Any]) -> Claims:
    sub = _identity(payload.get("sub"))
    exp = payload.get("exp")
    if sub is None or isinstance(exp, bool) or not isinstance(exp, (int, float)):
        raise _bad_claims()
    role = payload.get("role", "")
    if role != "" and _identity(role) is None:
        raise _bad_claims()
    email = payload.get("email")
    return Claims(sub=sub, role=role, exp=int(exp), email=email if isinstance(email, str) else None)
