"""Keys and tokens for the JWT tests: real RSA/EC keys from `cryptography`, and hand-made tokens that
pyjwt itself would refuse to produce (alg none, bad segments, unknown crit headers)."""
from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = "jwt-test-secret-0123456789-abcdefghijklmnop"
"""A shared secret long enough for HS256 without warnings."""


@functools.cache
def rsa_key(name: str = "a", bits: int = 2048) -> rsa.RSAPrivateKey:
    """One RSA key per name for the whole session (generation is the slow part)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def ec_key(name: str = "a", curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
    return ec.generate_private_key(curves[curve])


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_public_pem(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(public_pem(key))
    return path


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    """The public half of a key as a JWKS entry."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        entry = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    else:
        entry = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        entry["kid"] = kid
    return {**entry, "use": "sig", **extra}


def payload(sub: str = "user-1", role: str = "customer", ttl: int = 600, **claims: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "role": role, "iat": now, "exp": now + ttl, **claims}


def sign(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256", **headers: Any) -> str:
    """A token signed by pyjwt (any header fields given are added)."""
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers or None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(
    header: dict[str, Any] | bytes,
    claims: dict[str, Any] | bytes,
    secret: bytes | None = SECRET.encode(),
    signature: str | None = None,
) -> str:
    """A token built by hand: raw header/payload bytes or objects, HMAC-SHA256 signed with `secret`
    (or carrying the given `signature` text)."""
    head = b64(header if isinstance(header, bytes) else orjson.dumps(header))
    body = b64(claims if isinstance(claims, bytes) else orjson.dumps(claims))
    if signature is None:
        assert secret is not None
        signature = b64(hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest())
    return f"{head}.{body}.{signature}"
