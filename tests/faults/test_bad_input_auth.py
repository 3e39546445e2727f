"""Token attacks and spoofed identity against a real gateway process, with both HTTP parsers: every bad
token is a 401 envelope with a challenge and never reaches the service; a client's own X-Forwarded-For,
X-User-ID or X-User-Role is never passed on as truth and cannot move it into another rate-limit bucket.

The gateways verify RS256 tokens with a public key file and check issuer and audience (see
test_bad_input.gateway); the in-process JWT tests (tests/integration/test_jwt.py) cover key sources.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from redis.asyncio import Redis

from tests.faults.test_bad_input import (  # noqa: F401 - the module's gateway and upstream fixtures
    AUDIENCE,
    ISSUER,
    LIMITED_TIER_LIMIT,
    BadInputGateway,
    assert_refused,
    assert_serves_next,
    build,
    gateway,
    gateway_token,
    send,
    upstream,
)
from tests.jwt_support import b64, forge, payload, public_pem, rsa_key, sign

pytestmark = pytest.mark.slow

SECURE = "/api/v1/secure/x"
CHALLENGE = 'Bearer realm="kadai"'


def _claims(**changes: Any) -> dict[str, Any]:
    """Claims the gateways accept, changed (None removes a claim)."""
    claims = payload(sub="attacker", iss=ISSUER, aud=AUDIENCE)
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def _rs256(claims: dict[str, Any], key: str = "a", **headers: Any) -> str:
    return sign(claims, rsa_key(key), "RS256", **headers)


def _none(alg: str, signature: str) -> str:
    return forge({"alg": alg, "typ": "JWT"}, _claims(), signature=signature)


def _rs256_raw(body: bytes) -> str:
    """A correctly signed RS256 token whose payload is these bytes."""
    return jwt.PyJWS().encode(body, rsa_key("a"), algorithm="RS256")


KID_WITH_NEWLINE = "a\nb"
ARRAY_HEADER = b'["RS256"]'


HOUR = 3600
MALFORMED, SIGNATURE, CLAIMS = "Malformed token", "Invalid token signature", "Invalid token claims"
ATTACKS: list[tuple[str, Callable[[], list[str]], str]] = [
    ("alg-none", lambda: [f"Bearer {_none('none', '')}"], MALFORMED),
    ("alg-None-signed", lambda: [f"Bearer {_none('None', 'c2ln')}"], SIGNATURE),
    ("alg-NONE-signed", lambda: [f"Bearer {_none('NONE', 'c2ln')}"], SIGNATURE),
    ("alg-nOnE-signed", lambda: [f"Bearer {_none('nOnE', 'c2ln')}"], SIGNATURE),
    ("hs256-signed-with-the-rs256-public-key",
     lambda: [f"Bearer {forge({'alg': 'HS256', 'typ': 'JWT'}, _claims(), public_pem(rsa_key('a')))}"], SIGNATURE),
    ("another-rsa-key", lambda: [f"Bearer {_rs256(_claims(), key='b')}"], SIGNATURE),
    ("expired", lambda: [f"Bearer {_rs256(_claims(exp=int(time.time()) - HOUR))}"], "Token expired"),
    ("nbf-in-the-future", lambda: [f"Bearer {_rs256(_claims(nbf=int(time.time()) + HOUR))}"], "Token not yet valid"),
    ("missing-exp", lambda: [f"Bearer {_rs256(_claims(exp=None))}"], CLAIMS),
    ("wrong-iss", lambda: [f"Bearer {_rs256(_claims(iss='https://evil.example'))}"], CLAIMS),
    ("missing-iss", lambda: [f"Bearer {_rs256(_claims(iss=None))}"], CLAIMS),
    ("wrong-aud", lambda: [f"Bearer {_rs256(_claims(aud='another-api'))}"], CLAIMS),
    ("missing-aud", lambda: [f"Bearer {_rs256(_claims(aud=None))}"], CLAIMS),
    ("two-segments", lambda: ["Bearer aGVhZA.Ym9keQ"], MALFORMED),
    ("four-segments", lambda: [f"Bearer {_rs256(_claims())}.extra"], MALFORMED),
    ("empty-segments", lambda: ["Bearer .."], MALFORMED),
    ("not-base64url", lambda: [f"Bearer {_rs256(_claims()).replace('.', '$.', 1)}"], MALFORMED),
    ("padded-base64", lambda: [f"Bearer {b64(b'{}')}==.{b64(b'{}')}.c2ln"], MALFORMED),
    ("non-json-header", lambda: [f"Bearer {forge(b'not json', _claims())}"], MALFORMED),
    ("header-not-an-object", lambda: [f"Bearer {forge(ARRAY_HEADER, _claims())}"], MALFORMED),
    ("non-json-payload", lambda: [f"Bearer {_rs256_raw(b'not json')}"], MALFORMED),
    ("unknown-crit", lambda: [f"Bearer {_rs256(_claims(), crit=['x-kadai'], **{'x-kadai': 1})}"], MALFORMED),
    ("kid-path-with-hs256-and-an-empty-key",
     lambda: [f"Bearer {forge({'alg': 'HS256', 'kid': '../../../../dev/null'}, _claims(), b'')}"], SIGNATURE),
    ("kid-path-with-another-key", lambda: [f"Bearer {_rs256(_claims(), key='b', kid='/etc/passwd')}"], SIGNATURE),
    ("kid-with-a-newline", lambda: [f"Bearer {_rs256(_claims(), kid=KID_WITH_NEWLINE)}"], MALFORMED),
    ("huge-token", lambda: [f"Bearer {'A' * 7_000}.{'B' * 1_000}.c2ln"], MALFORMED),
    ("two-authorization-headers", lambda: [f"Bearer {gateway_token('u-1')}"] * 2, "Malformed Authorization header"),
    ("valid-and-invalid-authorization", lambda: [f"Bearer {gateway_token('u-1')}", "Bearer x.y.z"],
     "Malformed Authorization header"),
    ("bearer-without-token", lambda: ["Bearer "], "Malformed Authorization header"),
    ("basic-credentials", lambda: ["Basic dXNlcjpwYXNz"], "Bearer token required"),
]


@pytest.mark.parametrize(("authorizations", "error"), [c[1:] for c in ATTACKS], ids=[c[0] for c in ATTACKS])
async def test_token_attacks_are_401_and_never_forwarded(
    gateway: BadInputGateway, authorizations: Callable[[], list[str]], error: str
) -> None:
    headers = [("Authorization", value) for value in authorizations()]
    response, forwarded = await send(gateway, build(SECURE, headers=headers))
    body = assert_refused(response, 401, forwarded)
    assert body["error"] == error
    assert response.headers["WWW-Authenticate"].startswith(CHALLENGE)
    await assert_serves_next(gateway)


async def test_a_good_token_passes_and_an_oversized_one_is_refused_by_the_parser(gateway: BadInputGateway) -> None:
    good = [("Authorization", f"Bearer {gateway_token('u-7')}")]
    response, forwarded = await send(gateway, build(SECURE, headers=good))
    assert response.status == 200
    assert [seen.all("X-User-ID") for seen in forwarded] == [["u-7"]]

    huge = f"Bearer {'A' * 10_000}.{'B' * 10_000}.c2ln"  # past the 8 KiB header line limit
    response, forwarded = await send(gateway, build(SECURE, headers=[("Authorization", huge)]))
    assert_refused(response, 400, forwarded)
    await assert_serves_next(gateway)


SPOOFS: list[tuple[str, str]] = [
    ("X-Forwarded-For", "198.51.100.1"),
    ("X-Forwarded-For", "198.51.100.2, 10.0.0.1"),
    ("X-Real-IP", "198.51.100.3"),
    ("Forwarded", "for=198.51.100.4"),
    ("X-User-ID", "admin-1"),
    ("X-User-Role", "admin"),
]


@pytest.mark.redis
async def test_spoofed_client_headers_are_not_truth_and_do_not_move_the_bucket(
    gateway: BadInputGateway, redis_server: str
) -> None:
    """Anonymous requests share one bucket (the peer address) whatever they claim; a token's subject is
    its own bucket, whatever X-User-ID says."""
    path = "/api/v1/limited/x"
    statuses = []
    for name, value in SPOOFS:
        response, forwarded = await send(gateway, build(path, headers=[(name, value), ("X-User-Role", "admin")]))
        statuses.append(response.status)
        for seen in forwarded:
            assert seen.all("X-User-ID") == [] and seen.all("X-User-Role") == []
            assert seen.all("X-Real-IP") == [] and seen.all("Forwarded") == []
            # The last hop is the gateway's: the address the connection came from.
            assert seen.header("X-Forwarded-For").rsplit(", ", 1)[-1] == "127.0.0.1"  # type: ignore[union-attr]
        if response.status == 429:
            assert_refused(response, 429, forwarded)
    assert statuses == [200] * LIMITED_TIER_LIMIT + [429] * (len(SPOOFS) - LIMITED_TIER_LIMIT)

    # A verified subject has a bucket of its own, whatever identity headers come with its token.
    token = gateway_token("u-spoof", role="customer")
    headers = [("Authorization", f"Bearer {token}"), ("X-User-ID", "admin-1"), ("X-User-Role", "admin")]
    response, forwarded = await send(gateway, build(path, headers=headers))
    assert response.status == 200
    assert [(seen.all("X-User-ID"), seen.all("X-User-Role")) for seen in forwarded] == [(["u-spoof"], ["customer"])]

    async with Redis.from_url(redis_server) as redis:
        keys = [key.decode() async for key in redis.scan_iter(match=f"kadai:ratelimit:{gateway.tier}.*")]
    clients = {key.rsplit(":{", 1)[1] for key in keys}
    assert clients == {"ip:127.0.0.1}", "sub:u-spoof}"}
    await assert_serves_next(gateway)
