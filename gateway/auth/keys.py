"""Signing algorithms the gateway accepts and the public keys that verify them (PEM files and JWKs).

Each key is bound to the algorithms its type can verify, so a token can never make one kind of key
act as another (the HS256-with-the-RSA-public-key confusion).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
SUPPORTED_ALGORITHMS = (*HMAC_ALGORITHMS, *RSA_ALGORITHMS, *EC_ALGORITHMS.values())

HMAC_MIN_SECRET = {"HS256": 32, "HS384": 48, "HS512": 64}
"""Shortest secret (bytes) per HMAC algorithm: its digest size (RFC 7518, 3.2)."""
RSA_MIN_BITS = 2048

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


class KeyProblem(ValueError):
    """A key file or JWK that cannot be used; the message is fit for an operator."""


def parse_algorithms(text: str) -> tuple[str, ...]:
    """JWT_ALGORITHMS ("RS256, PS256") as canonical names; raises KeyProblem for none, unknown or mixed."""
    canonical = {name.lower(): name for name in SUPPORTED_ALGORITHMS}
    names: list[str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if item.lower() == "none":
            raise KeyProblem("'none' (unsigned tokens) is never accepted")
        name = canonical.get(item.lower())
        if name is None:
            raise KeyProblem(f"unsupported algorithm {item!r} (supported: {', '.join(SUPPORTED_ALGORITHMS)})")
        if name not in names:
            names.append(name)
    if not names:
        raise KeyProblem("name at least one algorithm")
    if is_hmac(names) and not all(name in HMAC_ALGORITHMS for name in names):
        raise KeyProblem("HS* and RS/PS/ES* algorithms cannot be allowed together (key confusion)")
    return tuple(names)


def is_hmac(algorithms: Iterable[str]) -> bool:
    return any(name in HMAC_ALGORITHMS for name in algorithms)


def algorithms_for(key: PublicKey) -> tuple[str, ...]:
    """Every algorithm a public key of this type can verify."""
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    curve = _CURVES.get(key.curve.name)
    return (EC_ALGORITHMS[curve],) if curve else ()


def describe_key(key: PublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size} bits"
    return f"EC {_CURVES.get(key.curve.name, key.curve.name)}"


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key and the algorithms (from the allow-list) it may verify."""

    key: PublicKey
    algorithms: frozenset[str]
    kid: str | None = None


def bind_key(
    key: PublicKey, allowed: Iterable[str], stated_alg: str | None = None, kid: str | None = None
) -> VerificationKey:
    """The key with the allowed algorithms its type supports (only `stated_alg` when the key names one)."""
    allowed = tuple(allowed)
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < RSA_MIN_BITS:
        raise KeyProblem(f"RSA key of {key.key_size} bits; at least {RSA_MIN_BITS} are required")
    usable = set(algorithms_for(key)) & set(allowed)
    if stated_alg is not None:
        usable &= {stated_alg}
    if not usable:
        listed = ", ".join(allowed)
        raise KeyProblem(f"the key ({describe_key(key)}) verifies none of the allowed algorithms ({listed})")
    return VerificationKey(key, frozenset(usable), kid)


def load_public_key_file(path: str | Path, allowed: Iterable[str]) -> VerificationKey:
    """Read a PEM public key (SubjectPublicKeyInfo or PKCS#1 RSA) and bind it to the allowed algorithms."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyProblem(f"cannot read {path}: {exc.strerror or exc}") from exc
    if b"PRIVATE KEY" in data:
        # A private key on the gateway would let anyone who reads its disk mint tokens.
        raise KeyProblem(f"{path} holds a private key; give the gateway the public key only")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise KeyProblem(f"{path} is not a PEM public key") from exc
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise KeyProblem(f"{path}: only RSA and EC (P-256, P-384, P-521) keys are supported")
    return bind_key(key, allowed)


def key_from_jwk(jwk: Mapping[str, Any], allowed: Iterable[str]) -> VerificationKey:
    """One JWKS entry as a VerificationKey; raises KeyProblem for keys we must not or cannot use."""
    kty = jwk.get("kty")
    if kty not in ("RSA", "EC"):
        raise KeyProblem(f"key type {kty!r} is not used (RSA and EC only)")
    if jwk.get("use", "sig") != "sig":
        raise KeyProblem("not a signing key (use is not 'sig')")
    kid = jwk.get("kid")
    if kid is not None and not (isinstance(kid, str) and 0 < len(kid) <= 256):
        raise KeyProblem("kid is not a short string")
    stated = jwk.get("alg")
    if stated is not None and stated not in SUPPORTED_ALGORITHMS:
        raise KeyProblem(f"alg {stated!r} is not supported")
    try:
        parsed = jwt.PyJWK(dict(jwk), algorithm=stated or ("RS256" if kty == "RSA" else None)).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise KeyProblem(f"unusable {kty} key: {exc.__class__.__name__}") from exc
    # A JWKS that leaks private parts still only gives us verification.
    public = parsed.public_key() if isinstance(parsed, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) else parsed
    if not isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise KeyProblem(f"unusable {kty} key")
    return bind_key(public, allowed, stated, kid)
