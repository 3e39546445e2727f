"""Unit tests of gateway.auth: the token verifier against forged and broken tokens, its cache, and keys."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest

from gateway.auth import Claims, TokenRejected, TokenVerifier
from gateway.auth.cache import VerifiedTokenCache
from gateway.auth.keys import KeyProblem, key_from_jwk, parse_algorithms
from gateway.auth.verifier import MAX_TOKEN_LENGTH
from gateway.config.settings import DEV_JWT_SECRET, Settings
from gateway.tokens import mint_token
from tests.jwt_support import (
    SECRET,
    b64,
    ec_key,
    forge,
    jwk,
    payload,
    public_pem,
    rsa_key,
    sign,
    write_public_pem,
)

HS = Settings(jwt_secret=SECRET)
HEADER = {"alg": "HS256", "typ": "JWT"}


def now() -> int:
    """Read when a case builds its token, not at import: the suite may run minutes after collection."""
    return int(time.time())


async def outcome(verifier: TokenVerifier, token: str) -> str:
    """"ok" or the rejection reason."""
    try:
        await verifier.verify(token)
    except TokenRejected as rejected:
        return rejected.reason
    return "ok"


def rsa_settings(tmp_path: Path, **overrides: Any) -> Settings:
    path = write_public_pem(tmp_path / "public.pem", rsa_key("a"))
    return replace(Settings(jwt_algorithms=("RS256",), jwt_public_key_file=str(path)), **overrides)


# Every case is a token an attacker or a broken client could send to an HS256 gateway, and what must happen.
HS_CASES: list[tuple[str, Any, str]] = [
    ("valid", lambda: sign(payload()), "ok"),
    ("alg-none", lambda: forge({"alg": "none"}, payload(), signature=""), "malformed"),
    ("alg-none-signed", lambda: forge({"alg": "none"}, payload()), "signature"),
    ("alg-None", lambda: forge({"alg": "None"}, payload()), "signature"),
    ("alg-NONE", lambda: forge({"alg": "NONE"}, payload()), "signature"),
    ("alg-nOnE", lambda: forge({"alg": "nOnE"}, payload()), "signature"),
    ("alg-hs256-lowercase", lambda: forge({"alg": "hs256"}, payload()), "signature"),
    ("alg-missing", lambda: forge({"typ": "JWT"}, payload()), "signature"),
    ("alg-empty", lambda: forge({"alg": ""}, payload()), "signature"),
    ("alg-list", lambda: forge({"alg": ["HS256"]}, payload()), "signature"),
    ("alg-rs256-signed-by-rsa", lambda: sign(payload(), rsa_key("a"), "RS256"), "signature"),
    ("wrong-secret", lambda: sign(payload(), "another-secret-0123456789-abcdefghijkl"), "signature"),
    ("tampered-payload", lambda: _tampered(), "signature"),
    ("expired", lambda: sign(payload(exp=now() - 60)), "expired"),
    ("expired-within-leeway", lambda: sign(payload(exp=now() - 2)), "ok"),
    ("nbf-in-future", lambda: sign(payload(nbf=now() + 60)), "claims"),
    ("nbf-within-leeway", lambda: sign(payload(nbf=now() + 2)), "ok"),
    ("iat-in-future", lambda: sign(payload(iat=now() + 3600)), "claims"),
    ("missing-exp", lambda: sign({"sub": "u", "role": "r"}), "claims"),
    ("exp-as-string", lambda: sign(payload(exp=str(now() + 600))), "claims"),
    ("exp-not-a-number", lambda: sign(payload(exp="soon")), "malformed"),
    ("missing-sub", lambda: sign({"role": "r", "exp": now() + 600}), "claims"),
    ("sub-not-a-string", lambda: sign(payload(sub=12345)), "claims"),  # type: ignore[arg-type]
    ("sub-with-crlf", lambda: sign(payload(sub="u\r\nX-User-Role: admin")), "claims"),
    ("sub-too-long", lambda: sign(payload(sub="u" * 300)), "claims"),
    ("role-not-a-string", lambda: sign(payload(role=["admin"])), "claims"),  # type: ignore[arg-type]
    ("role-with-newline", lambda: sign(payload(role="admin\n")), "claims"),
    ("aud-without-configured-audience", lambda: sign(payload(aud="someone")), "ok"),
    ("empty", lambda: "", "malformed"),
    ("one-segment", lambda: "abc", "malformed"),
    ("two-segments", lambda: "abc.def", "malformed"),
    ("four-segments", lambda: sign(payload()) + ".x", "malformed"),
    ("empty-signature", lambda: sign(payload()).rsplit(".", 1)[0] + ".", "malformed"),
    ("plus-in-segment", lambda: "a+b." + sign(payload()).split(".", 1)[1], "malformed"),
    ("padded-segments", lambda: sign(payload()).replace(".", "=."), "malformed"),
    ("header-bad-base64", lambda: "A." + sign(payload()).split(".", 1)[1], "malformed"),
    ("header-not-json", lambda: forge(b"not json", payload()), "malformed"),
    ("header-json-array", lambda: forge(b'["HS256"]', payload()), "malformed"),
    ("header-json-string", lambda: forge(b'"HS256"', payload()), "malformed"),
    ("header-deep-json", lambda: forge(b"[" * 300 + b"]" * 300, payload()), "malformed"),
    ("payload-not-json", lambda: forge(HEADER, b"not json"), "malformed"),
    ("payload-json-array", lambda: forge(HEADER, b"[1, 2]"), "malformed"),
    ("crit-unknown", lambda: forge({**HEADER, "crit": ["exp-ext"], "exp-ext": 1}, payload()), "malformed"),
    ("crit-b64-false", lambda: forge({**HEADER, "crit": ["b64"], "b64": False}, payload()), "malformed"),
    ("b64-false-without-crit", lambda: forge({**HEADER, "b64": False}, payload()), "malformed"),
    ("kid-path-signed-with-empty-key", lambda: forge({**HEADER, "kid": "../../../../dev/null"}, payload(), b""),
     "signature"),
    ("kid-path-signed-with-secret", lambda: forge({**HEADER, "kid": "../../../../etc/passwd"}, payload()), "ok"),
    ("kid-too-long", lambda: forge({**HEADER, "kid": "k" * 300}, payload()), "malformed"),
    ("kid-object", lambda: forge({**HEADER, "kid": {"path": "/etc/passwd"}}, payload()), "malformed"),
    ("kid-control-chars", lambda: forge({**HEADER, "kid": "a\nb"}, payload()), "malformed"),
    ("kid-sql", lambda: forge({**HEADER, "kid": "x' UNION SELECT 'key"}, payload()), "malformed"),
    ("huge-token", lambda: sign(payload(pad="x" * MAX_TOKEN_LENGTH)), "malformed"),
    ("huge-header", lambda: forge({**HEADER, "pad": "x" * 2000}, payload()), "malformed"),
]


def _tampered() -> str:
    head, _, signature = sign(payload(role="customer")).split(".")
    return f"{head}.{b64(orjson.dumps(payload(role='admin')))}.{signature}"


@pytest.mark.parametrize(("token", "expected"), [case[1:] for case in HS_CASES], ids=[case[0] for case in HS_CASES])
async def test_hs256_verifier_against_attacks(token: Any, expected: str) -> None:
    assert await outcome(TokenVerifier(HS), token()) == expected


async def test_rejection_messages_do_not_leak_internals() -> None:
    verifier = TokenVerifier(HS)
    messages = set()
    for _, token, expected in HS_CASES:
        if expected != "ok":
            with pytest.raises(TokenRejected) as caught:
                await verifier.verify(token())
            messages.add(caught.value.message)
    assert messages == {"Malformed token", "Invalid token signature", "Token expired", "Invalid token claims",
                        "Token not yet valid"}


async def test_valid_token_gives_its_claims() -> None:
    claims = await TokenVerifier(HS).verify(sign(payload(sub="u-7", role="seller", email="s@example.com")))
    assert (claims.sub, claims.role, claims.email) == ("u-7", "seller", "s@example.com")
    assert claims.exp > time.time()


async def test_token_without_role_has_an_empty_role() -> None:
    claims = await TokenVerifier(HS).verify(sign({"sub": "svc", "exp": now() + 60}))
    assert claims.role == ""


async def test_development_tokens_verify_with_the_development_secret() -> None:
    settings = Settings()
    assert settings.jwt_secret == DEV_JWT_SECRET
    claims = await TokenVerifier(settings).verify(mint_token(settings, "u-1", "admin"))
    assert (claims.sub, claims.role) == ("u-1", "admin")


@pytest.mark.parametrize(
    ("leeway", "exp_offset", "expected"),
    [(5.0, -2, "ok"), (5.0, -10, "expired"), (0.0, -2, "expired"), (60.0, -30, "ok")],
    ids=["inside-default", "outside-default", "no-leeway", "wide-leeway"],
)
async def test_leeway_is_configurable(leeway: float, exp_offset: int, expected: str) -> None:
    verifier = TokenVerifier(replace(HS, jwt_leeway=leeway, jwt_cache_size=0))
    assert await outcome(verifier, sign(payload(exp=int(time.time()) + exp_offset))) == expected


ISSUER_CASES = [
    ("right-iss-and-aud", {"iss": "https://id.kadai", "aud": "gateway"}, "ok"),
    ("aud-list-with-ours", {"iss": "https://id.kadai", "aud": ["other", "gateway"]}, "ok"),
    ("wrong-iss", {"iss": "https://evil", "aud": "gateway"}, "claims"),
    ("missing-iss", {"aud": "gateway"}, "claims"),
    ("iss-not-a-string", {"iss": ["https://id.kadai"], "aud": "gateway"}, "claims"),
    ("wrong-aud", {"iss": "https://id.kadai", "aud": "billing"}, "claims"),
    ("missing-aud", {"iss": "https://id.kadai"}, "claims"),
]


@pytest.mark.parametrize(("claims", "expected"), [c[1:] for c in ISSUER_CASES], ids=[c[0] for c in ISSUER_CASES])
async def test_issuer_and_audience_when_configured(claims: dict[str, Any], expected: str) -> None:
    verifier = TokenVerifier(replace(HS, jwt_issuer="https://id.kadai", jwt_audience=("gateway", "admin-ui")))
    # forge, not pyjwt: pyjwt will not even encode a non-string iss.
    assert await outcome(verifier, forge(HEADER, payload(**claims))) == expected


RSA_CASES: list[tuple[str, Any, str]] = [
    ("rs256", lambda: sign(payload(), rsa_key("a"), "RS256"), "ok"),
    ("rs256-kid-ignored", lambda: sign(payload(), rsa_key("a"), "RS256", kid="../../etc/passwd"), "ok"),
    ("hs256-with-public-pem-as-secret", lambda: forge(HEADER, payload(), public_pem(rsa_key("a"))), "signature"),
    ("ps256-not-allowed", lambda: sign(payload(), rsa_key("a"), "PS256"), "signature"),
    ("rs256-other-key", lambda: sign(payload(), rsa_key("b"), "RS256"), "signature"),
    ("es256-not-allowed", lambda: sign(payload(), ec_key("a"), "ES256"), "signature"),
    ("alg-none", lambda: forge({"alg": "none"}, payload()), "signature"),
    ("expired", lambda: sign(payload(exp=now() - 60), rsa_key("a"), "RS256"), "expired"),
]


@pytest.mark.parametrize(("token", "expected"), [c[1:] for c in RSA_CASES], ids=[c[0] for c in RSA_CASES])
async def test_rs256_public_key_file(tmp_path: Path, token: Any, expected: str) -> None:
    assert await outcome(TokenVerifier(rsa_settings(tmp_path)), token()) == expected


async def test_es256_public_key_file(tmp_path: Path) -> None:
    path = write_public_pem(tmp_path / "ec.pem", ec_key("a"))
    verifier = TokenVerifier(Settings(jwt_algorithms=("ES256",), jwt_public_key_file=str(path)))
    assert await outcome(verifier, sign(payload(), ec_key("a"), "ES256")) == "ok"
    assert await outcome(verifier, sign(payload(), ec_key("b"), "ES256")) == "signature"
    assert await outcome(verifier, forge(HEADER, payload(), public_pem(ec_key("a")))) == "signature"


@pytest.mark.parametrize(
    "settings",
    [
        Settings(jwt_algorithms=("none",)),
        Settings(jwt_algorithms=()),
        Settings(jwt_algorithms=("HS256", "RS256")),
        Settings(jwt_algorithms=("HS256",), jwt_jwks_url="https://id.example/jwks"),
        Settings(jwt_algorithms=("RS256",)),
        Settings(jwt_secret="", jwt_algorithms=("HS256",)),
    ],
    ids=["none", "empty", "mixed", "hs-with-jwks", "rs-without-keys", "hs-without-secret"],
)
def test_verifier_refuses_unsafe_settings_built_in_code(settings: Settings) -> None:
    with pytest.raises(ValueError):
        TokenVerifier(settings)


async def test_malformed_tokens_are_refused_before_any_key_is_fetched() -> None:
    # Port 9 (discard) on loopback: nothing answers, and nothing must even be tried.
    settings = Settings(jwt_algorithms=("RS256",), jwt_jwks_url="http://127.0.0.1:9/jwks", jwt_secret=SECRET)
    verifier = TokenVerifier(settings)
    assert verifier.jwks is not None
    try:
        for token, expected in [
            ("x" * (MAX_TOKEN_LENGTH + 1), "malformed"),
            (forge({"alg": "none"}, payload()), "signature"),
            (forge({"alg": "HS256", "kid": "a"}, payload()), "signature"),
            (forge({"alg": "RS256", "crit": ["x"], "x": 1}, payload()), "malformed"),
            (forge({"alg": "RS256", "kid": "k" * 1000}, payload()), "malformed"),
        ]:
            assert await outcome(verifier, token) == expected
        assert verifier.jwks.fetches == 0
    finally:
        await verifier.close()


async def test_verified_tokens_are_cached_and_rejections_are_not() -> None:
    verifier = TokenVerifier(HS)
    token = sign(payload())
    first = await verifier.verify(token)
    assert await verifier.verify(token) is first
    assert (verifier.cache.hits, verifier.cache.misses, len(verifier.cache)) == (1, 1, 1)
    bad = sign(payload(exp=now() - 60))
    for _ in range(2):
        assert await outcome(verifier, bad) == "expired"
    assert len(verifier.cache) == 1


async def test_cached_token_is_not_served_after_its_exp() -> None:
    verifier = TokenVerifier(replace(HS, jwt_leeway=0.0))
    token = sign(payload())
    claims = await verifier.verify(token)
    # The cached verdict is checked against exp: an expired entry is verified again (and refused).
    verifier.cache.put(token, replace(claims, exp=int(time.time()) - 1))
    assert verifier.cache.get(token, time.time()) is None
    assert len(verifier.cache) == 0


def claims_until(exp: float) -> Claims:
    return Claims(sub="u", role="r", exp=int(exp))


def test_cache_is_a_bounded_lru() -> None:
    cache = VerifiedTokenCache(2)
    later = time.time() + 60
    cache.put("a", claims_until(later))
    cache.put("b", claims_until(later))
    assert cache.get("a", time.time()) is not None  # a is now the most recent
    cache.put("c", claims_until(later))
    assert cache.get("b", time.time()) is None
    assert cache.get("a", time.time()) is not None and cache.get("c", time.time()) is not None
    assert len(cache) == 2
    assert cache.describe() == {"entries": 2, "capacity": 2, "hits": 3, "misses": 1}


def test_cache_of_size_zero_keeps_nothing() -> None:
    cache = VerifiedTokenCache(0)
    cache.put("a", claims_until(time.time() + 60))
    assert cache.get("a", time.time()) is None and len(cache) == 0


def test_cache_refuses_a_negative_capacity() -> None:
    with pytest.raises(ValueError):
        VerifiedTokenCache(-1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("HS256", ("HS256",)), ("rs256, PS256,RS256", ("RS256", "PS256")), ("es256,ES384", ("ES256", "ES384"))],
    ids=["one", "normalised-and-deduplicated", "ec"],
)
def test_parse_algorithms(text: str, expected: tuple[str, ...]) -> None:
    assert parse_algorithms(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [("none", "never accepted"), ("HS256,None", "never accepted"), ("HS256,RS256", "key confusion"),
     ("XS256", "unsupported algorithm"), (" , ", "at least one")],
    ids=["none", "none-in-list", "mixed-families", "unknown", "empty"],
)
def test_parse_algorithms_refuses(text: str, reason: str) -> None:
    with pytest.raises(KeyProblem, match=reason):
        parse_algorithms(text)


JWK_CASES: list[tuple[str, Any, str]] = [
    ("symmetric-key", lambda: {"kty": "oct", "k": "c2VjcmV0", "kid": "s"}, "not used"),
    ("encryption-key", lambda: jwk(rsa_key("a"), "e", use="enc"), "not a signing key"),
    ("alg-not-allowed", lambda: jwk(rsa_key("a"), "p", alg="PS256"), "none of the allowed"),
    ("ec-key-for-rs256", lambda: jwk(ec_key("a"), "ec"), "none of the allowed"),
    ("small-rsa-key", lambda: jwk(rsa_key("small", 1024), "small"), "at least 2048"),
    ("alg-none", lambda: {**jwk(rsa_key("a"), "n"), "alg": "none"}, "not supported"),
    ("broken-modulus", lambda: {**jwk(rsa_key("a"), "m"), "n": "!!"}, "unusable"),
    ("kid-not-a-string", lambda: {**jwk(rsa_key("a"), None), "kid": 5}, "kid"),
]


@pytest.mark.parametrize(("entry", "reason"), [c[1:] for c in JWK_CASES], ids=[c[0] for c in JWK_CASES])
def test_unusable_jwks_entries_are_refused(entry: Any, reason: str) -> None:
    with pytest.raises(KeyProblem, match=reason):
        key_from_jwk(entry(), ("RS256",))


def test_jwk_with_private_parts_only_verifies() -> None:
    entry = {**jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key("a"), as_dict=True), "kid": "priv"}
    assert "d" in entry
    key = key_from_jwk(entry, ("RS256",))
    assert not hasattr(key.key, "sign")
    assert key.algorithms == frozenset({"RS256"}) and key.kid == "priv"


def test_cache_drops_tokens_gone_idle_or_expired_as_new_ones_arrive() -> None:
    cache = VerifiedTokenCache(100, idle=300)
    start = 1_000_000.0
    cache.put("login-1", claims_until(start + 3600), start)
    cache.put("short", claims_until(start + 10), start)
    cache.put("in-use", claims_until(start + 3600), start)
    assert cache.get("in-use", start + 200) is not None  # used: it stays

    cache.put("login-2", claims_until(start + 3600), start + 301)

    # login-1 sat idle past 300 s and "short" expired: gone; the token in use and the new one stay.
    assert len(cache) == 2
    assert cache.get("in-use", start + 302) is not None and cache.get("login-2", start + 302) is not None
    assert cache.get("login-1", start + 302) is None


def test_cache_size_follows_the_tokens_in_use_not_every_login() -> None:
    cache = VerifiedTokenCache(10_000, idle=300)
    now = 1_000_000.0
    for login in range(2_000):  # a login every 2 s for over an hour, each token used for a minute
        now += 2
        cache.put(f"token-{login}", claims_until(now + 3600), now)
        for earlier in range(max(0, login - 30), login):
            cache.get(f"token-{earlier}", now)
    assert len(cache) <= 300 // 2 + 31  # tokens used within the idle window, not 2,000
