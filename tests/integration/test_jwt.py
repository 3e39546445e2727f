"""The JWT check through an in-process gateway with real loopback upstreams (that echo what they got) and a
real loopback JWKS server: 401/403 envelopes and challenges, identity headers, auth: false routes, RS256
key files, ES256 JWKS keys, JWKS rotation, TTL refreshes in the background, rate-limited refreshes and an
unreachable key server."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import Gateway, create_app
from gateway.config.loader import load_registry
from gateway.config.settings import Settings, load_settings
from gateway.keys import GATEWAY_KEY
from gateway.tokens import mint_token
from tests.integration.helpers import (
    Client,
    GatewayClient,
    Received,
    Recorder,
    StartRecorder,
    StartUpstream,
    assert_error_envelope,
    assert_success_envelope,
    metric_value,
    raw_request,
)
from tests.jwt_support import SECRET, ec_key, forge, jwk, payload, public_pem, rsa_key, sign, write_public_pem
from tests.process.helpers import wait_until
from tests.support import free_port, service, write_registry

USERS = "/api/v1/users/1"
OPEN = "/api/v1/auth/login"
REJECTIONS = "kadai_gateway_auth_rejections_total"
CHALLENGE = 'Bearer realm="kadai"'
CLIENT_MESSAGES = {
    "Bearer token required", "Malformed token", "Malformed Authorization header", "Invalid token signature",
    "Token expired", "Invalid token claims", "Token not yet valid", "Token could not be verified",
}

ServeWith = Callable[[Settings, Path], Awaitable[Client]]


@pytest.fixture
def settings() -> Settings:
    """The gateway_client's settings: a secret of our own, long enough for HS256."""
    return Settings(jwt_secret=SECRET, reload_interval=0.1, drain_timeout=2.0)


@pytest.fixture
def serve_with(aiohttp_client: Any) -> ServeWith:
    """An in-process gateway with settings of the test's own (key files, JWKS URLs)."""

    async def make(settings: Settings, registry: Path) -> Client:
        return await aiohttp_client(TestServer(create_app(Gateway(settings, registry)), host="127.0.0.1"))

    return make


def jwt_registry(path: Path, url: str, users: dict[str, Any] | None = None, **service_options: Any) -> Path:
    """user-service with an open /api/v1/auth and a protected /api/v1/users (plus route options)."""
    routes = [{"prefix": "/api/v1/auth", "auth": False}, {"prefix": "/api/v1/users", **(users or {})}]
    return write_registry(path, {"user-service": service([url], *routes, **service_options)}, defaults={"auth": True})


def proxied(recorder: Recorder) -> list[Received]:
    """What the gateway forwarded for the test's requests (not its own background calls to the instance)."""
    return [seen for seen in recorder.received if seen.raw_path.startswith(("/users", "/auth", "/public"))]


def last(recorder: Recorder) -> Received:
    forwarded = proxied(recorder)
    assert forwarded, f"{recorder.name} was forwarded no request"
    return forwarded[-1]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _gateway(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, **options: Any
) -> tuple[Client, Recorder]:
    users = await start_recorder("users")
    return await gateway_client(jwt_registry(registry_path, users.url, **options)), users


async def assert_unauthorized(response: Any, challenge_error: bool) -> dict[str, Any]:
    assert response.status == 401
    body = await response.json()
    assert_error_envelope(body, 401, response.headers["X-Request-ID"])
    assert body["error"] in CLIENT_MESSAGES
    challenge = response.headers["WWW-Authenticate"]
    if challenge_error:
        assert challenge.startswith(f'{CHALLENGE}, error="invalid_token", error_description="')
    else:
        assert challenge == CHALLENGE
    return body


async def test_missing_token_is_401_with_a_challenge_and_never_reaches_the_service(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client, users = await _gateway(registry_path, start_recorder, gateway_client)
    body = await assert_unauthorized(await client.get(USERS), challenge_error=False)
    assert body["error"] == "Bearer token required"
    assert proxied(users) == []


BAD_CREDENTIALS: list[tuple[str, Callable[[], str], str, bool]] = [
    ("garbage", lambda: "Bearer not-a-jwt", "malformed", True),
    ("empty-bearer", lambda: "Bearer", "malformed", True),
    ("expired", lambda: f"Bearer {_expired()}", "expired", True),
    ("bad-signature", lambda: f"Bearer {sign(payload(), 'another-secret-0123456789-abcdefghijkl')}", "signature",
     True),
    ("alg-none", lambda: f"Bearer {forge({'alg': 'none'}, payload(), signature='x')}", "signature", True),
    ("basic", lambda: "Basic dXNlcjpwYXNz", "missing", False),
]


def _expired() -> str:
    return sign(payload(exp=int(time.time()) - 60))


@pytest.mark.parametrize(
    ("credential", "reason", "challenge_error"),
    [case[1:] for case in BAD_CREDENTIALS],
    ids=[case[0] for case in BAD_CREDENTIALS],
)
async def test_bad_credentials_are_401_and_counted(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    credential: Callable[[], str],
    reason: str,
    challenge_error: bool,
) -> None:
    client, users = await _gateway(registry_path, start_recorder, gateway_client)
    await assert_unauthorized(await client.get(USERS, headers={"Authorization": credential()}), challenge_error)
    assert proxied(users) == []
    metrics = await (await client.get("/metrics")).text()
    assert metric_value(metrics, REJECTIONS, service="user-service", reason=reason) == 1.0


async def test_two_authorization_headers_are_401_even_when_both_are_valid(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, settings: Settings
) -> None:
    client, users = await _gateway(registry_path, start_recorder, gateway_client)
    token = mint_token(settings, "u-1", "admin")
    response = await raw_request(client, USERS, headers=[("Authorization", f"Bearer {token}")] * 2)
    assert response.status == 401
    assert_error_envelope(response.json(), 401)
    assert response.headers["WWW-Authenticate"].startswith(f'{CHALLENGE}, error="invalid_token"')
    assert proxied(users) == []


async def test_verified_identity_reaches_the_service_and_client_copies_do_not(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, settings: Settings
) -> None:
    client, users = await _gateway(registry_path, start_recorder, gateway_client)
    token = mint_token(settings, "u-42", "seller")
    spoofed = {**bearer(token), "X-User-ID": "admin-1", "X-User-Role": "admin", "x-user-id": "root"}
    response = await client.get(USERS, headers=spoofed)
    assert response.status == 200
    seen = last(users)
    assert seen.all("X-User-ID") == ["u-42"]
    assert seen.all("X-User-Role") == ["seller"]
    assert seen.all("Authorization") == [f"Bearer {token}"]


async def test_token_without_role_sends_no_role_header(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client, users = await _gateway(registry_path, start_recorder, gateway_client)
    token = sign({"sub": "svc-1", "exp": int(time.time()) + 60})
    response = await client.get(USERS, headers={**bearer(token), "X-User-Role": "admin"})
    assert response.status == 200
    assert last(users).all("X-User-ID") == ["svc-1"] and last(users).all("X-User-Role") == []


async def test_open_route_passes_without_a_token_and_with_a_bad_one(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client, users = await _gateway(registry_path, start_recorder, gateway_client)
    response = await client.post(OPEN, headers={"X-User-ID": "admin-1", "X-User-Role": "admin"})
    assert response.status == 200
    assert (last(users).header("X-User-ID"), last(users).header("X-User-Role")) == (None, None)

    expired = _expired()
    response = await client.post(OPEN, headers={"Authorization": f"Bearer {expired}", "X-User-ID": "admin-1"})
    assert response.status == 200
    assert last(users).header("X-User-ID") is None
    # Not ours to judge on an open route: the service gets the header as sent.
    assert last(users).header("Authorization") == f"Bearer {expired}"
    metrics = await (await client.get("/metrics")).text()
    assert metric_value(metrics, REJECTIONS, service="user-service", reason="expired") == 0.0


async def test_open_route_identifies_a_valid_token_unless_switched_off(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, settings: Settings
) -> None:
    users = await start_recorder("users")
    routes = [
        {"prefix": "/api/v1/auth", "auth": False},
        {"prefix": "/api/v1/public", "auth": False, "jwt": {"identify_optional": False}},
    ]
    registry = write_registry(registry_path, {"user-service": service([users.url], *routes)})
    client = await gateway_client(registry)
    token = mint_token(settings, "u-9", "customer")

    assert (await client.get(OPEN, headers=bearer(token))).status == 200
    assert (last(users).header("X-User-ID"), last(users).header("X-User-Role")) == ("u-9", "customer")
    assert (await client.get("/api/v1/public/x", headers={**bearer(token), "X-User-ID": "forged"})).status == 200
    assert last(users).header("X-User-ID") is None


async def test_roles_cascade_from_service_to_route_and_a_missing_role_is_403(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, settings: Settings
) -> None:
    users = await start_recorder("users")
    routes = [
        {"prefix": "/api/v1/auth", "auth": False},
        {"prefix": "/api/v1/users"},
        {"prefix": "/api/v1/users/admin", "jwt": {"roles": ["admin"]}},
    ]
    svc = service([users.url], *routes, jwt={"roles": ["admin", "seller"]})
    client = await gateway_client(write_registry(registry_path, {"user-service": svc}, defaults={"auth": True}))
    seller, admin = mint_token(settings, "s-1", "seller"), mint_token(settings, "a-1", "admin")
    roleless = sign({"sub": "x", "exp": int(time.time()) + 60})

    assert (await client.get(USERS, headers=bearer(seller))).status == 200
    assert (await client.get("/api/v1/users/admin/x", headers=bearer(admin))).status == 200
    received = len(proxied(users))
    customer = mint_token(settings, "c-1", "customer")
    for token, path in [(seller, "/api/v1/users/admin/x"), (roleless, USERS), (customer, USERS)]:
        response = await client.get(path, headers=bearer(token))
        assert response.status == 403
        body = await response.json()
        assert_error_envelope(body, 403)
        assert body["error"] == "Your role is not allowed on this route"
        assert response.headers["WWW-Authenticate"] == f'{CHALLENGE}, error="insufficient_scope"'
    assert len(proxied(users)) == received
    # Roles need a token first: no token is still 401, and an open route ignores roles.
    assert (await client.get("/api/v1/users/admin/x")).status == 401
    assert (await client.get(OPEN)).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert metric_value(metrics, REJECTIONS, service="user-service", reason="role") == 3.0


async def test_health_reports_the_key_source_without_the_secret(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client, _ = await _gateway(registry_path, start_recorder, gateway_client)
    response = await client.get("/api/v1/health/detailed")
    text = await response.text()
    assert SECRET not in text
    report = assert_success_envelope(await response.json())["components"]["jwt"]
    assert report["algorithms"] == ["HS256"] and report["keySource"] == "secret"
    assert (report["secret"], report["status"]) == ("set", "ok")
    assert report["cache"]["capacity"] == 10_000


async def test_verifier_and_its_cache_survive_a_registry_reload(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, settings: Settings
) -> None:
    client, users = await _gateway(registry_path, start_recorder, gateway_client)
    gw: Gateway = client.app[GATEWAY_KEY]
    verifier = gw.resources.verifier
    assert verifier is not None
    token = mint_token(settings, "u-1", "admin")
    assert (await client.get(USERS, headers=bearer(token))).status == 200
    gw.apply(load_registry(jwt_registry(registry_path, users.url, users={"jwt": {"roles": ["admin"]}})))
    assert (await client.get(USERS, headers=bearer(token))).status == 200
    assert gw.resources.verifier is verifier
    assert (verifier.cache.hits, verifier.cache.misses) == (1, 1)


async def test_rs256_with_a_public_key_file(
    tmp_path: Path, registry_path: Path, start_recorder: StartRecorder, serve_with: ServeWith
) -> None:
    users = await start_recorder("users")
    pem = write_public_pem(tmp_path / "jwt.pem", rsa_key("a"))
    settings = Settings(jwt_algorithms=("RS256",), jwt_public_key_file=str(pem))
    client = await serve_with(settings, jwt_registry(registry_path, users.url))

    good = sign(payload(sub="rsa-user", role="admin"), rsa_key("a"), "RS256")
    assert (await client.get(USERS, headers=bearer(good))).status == 200
    assert last(users).header("X-User-ID") == "rsa-user"
    confused = forge({"alg": "HS256"}, payload(), public_pem(rsa_key("a")))
    await assert_unauthorized(await client.get(USERS, headers=bearer(confused)), challenge_error=True)
    other_key = sign(payload(), rsa_key("b"), "RS256")
    await assert_unauthorized(await client.get(USERS, headers=bearer(other_key)), challenge_error=True)
    report = assert_success_envelope(await (await client.get("/api/v1/health/detailed")).json())["components"]["jwt"]
    assert report["publicKeyFile"] == {"path": str(pem), "key": "RSA 2048 bits"}


@dataclass
class JwksServer:
    """A loopback JWKS endpoint whose keys (and health) a test changes at will."""

    keys: list[dict[str, Any]]
    status: int = 200
    delay: float = 0.0
    fetches: int = 0
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow identity provider
        if self.status != 200:
            return web.Response(status=self.status, text="unavailable")
        return web.json_response({"keys": self.keys})


StartJwks = Callable[[list[dict[str, Any]]], Awaitable[JwksServer]]


@pytest.fixture
def start_jwks(start_upstream: StartUpstream) -> StartJwks:
    async def start(keys: list[dict[str, Any]]) -> JwksServer:
        server = JwksServer(keys)
        server.url = await start_upstream(server.app()) + "/.well-known/jwks.json"
        return server

    return start


def jwks_settings(url: str, refresh_interval: float) -> Settings:
    return Settings(jwt_algorithms=("RS256",), jwt_jwks_url=url, jwt_jwks_refresh_interval=refresh_interval)


def rs_token(name: str, kid: str, **claims: Any) -> str:
    return sign(payload(**claims), rsa_key(name), "RS256", kid=kid)


async def jwt_report(client: Client) -> dict[str, Any]:
    return assert_success_envelope(await (await client.get("/api/v1/health/detailed")).json())["components"]["jwt"]


async def test_jwks_rotation_fetches_new_keys_and_drops_verdicts_of_removed_ones(
    registry_path: Path, start_recorder: StartRecorder, start_jwks: StartJwks, serve_with: ServeWith
) -> None:
    users = await start_recorder("users")
    jwks = await start_jwks([jwk(rsa_key("a"), "key-a")])
    client = await serve_with(jwks_settings(jwks.url, 0.001), jwt_registry(registry_path, users.url))
    assert jwks.fetches == 1  # fetched at start-up

    old = rs_token("a", "key-a", sub="u-a")
    assert (await client.get(USERS, headers=bearer(old))).status == 200
    assert jwks.fetches == 1

    jwks.keys = [jwk(rsa_key("b"), "key-b")]
    assert (await client.get(USERS, headers=bearer(rs_token("b", "key-b", sub="u-b")))).status == 200
    assert last(users).header("X-User-ID") == "u-b"
    assert jwks.fetches == 2
    # key-a left the set: its token, though cached as valid before, is refused now.
    await assert_unauthorized(await client.get(USERS, headers=bearer(old)), challenge_error=True)
    report = await jwt_report(client)
    assert report["jwks"]["kids"] == ["key-b"] and report["status"] == "ok"
    assert report["jwks"]["url"] == jwks.url


async def test_a_kid_that_comes_back_with_another_key_drops_the_verdicts_of_the_old_one(
    registry_path: Path, start_recorder: StartRecorder, start_jwks: StartJwks, serve_with: ServeWith
) -> None:
    """An issuer replacing a (leaked) key under the same kid: tokens of the old key, even cached ones, are out."""
    users = await start_recorder("users")
    jwks = await start_jwks([jwk(rsa_key("a"), "signing")])
    client = await serve_with(jwks_settings(jwks.url, 0.001), jwt_registry(registry_path, users.url))
    old = rs_token("a", "signing", sub="u-old")
    assert (await client.get(USERS, headers=bearer(old))).status == 200

    jwks.keys = [jwk(rsa_key("b"), "signing"), jwk(rsa_key("c"), "other")]
    assert (await client.get(USERS, headers=bearer(rs_token("c", "other")))).status == 200  # fetches the set
    assert jwks.fetches == 2

    await assert_unauthorized(await client.get(USERS, headers=bearer(old)), challenge_error=True)
    assert (await client.get(USERS, headers=bearer(rs_token("b", "signing", sub="u-new")))).status == 200
    assert last(users).header("X-User-ID") == "u-new"


async def test_unknown_kids_refresh_at_most_once_per_interval(
    registry_path: Path, start_recorder: StartRecorder, start_jwks: StartJwks, serve_with: ServeWith
) -> None:
    users = await start_recorder("users")
    jwks = await start_jwks([jwk(rsa_key("a"), "key-a")])
    client = await serve_with(jwks_settings(jwks.url, 1.0), jwt_registry(registry_path, users.url))
    jwks.keys = [jwk(rsa_key("a"), "key-a"), jwk(rsa_key("b"), "key-b")]
    new = rs_token("b", "key-b")

    # Within the interval after the start-up fetch: a flood of unknown kids fetches nothing.
    floods = [rs_token("a", f"random-{n}") for n in range(20)]
    responses = await asyncio.gather(*(client.get(USERS, headers=bearer(token)) for token in floods))
    assert [response.status for response in responses] == [401] * 20
    assert (await client.get(USERS, headers=bearer(new))).status == 401
    assert jwks.fetches == 1

    deadline = time.monotonic() + 5
    while (status := (await client.get(USERS, headers=bearer(new))).status) != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert status == 200
    assert jwks.fetches == 2


async def test_concurrent_unknown_kids_share_one_fetch(
    registry_path: Path, start_recorder: StartRecorder, start_jwks: StartJwks, serve_with: ServeWith
) -> None:
    users = await start_recorder("users")
    jwks = await start_jwks([jwk(rsa_key("a"), "key-a")])
    client = await serve_with(jwks_settings(jwks.url, 0.001), jwt_registry(registry_path, users.url))
    jwks.keys, jwks.delay = [jwk(rsa_key("b"), "key-b")], 0.2
    tokens = [rs_token("b", "key-b", sub=f"u-{n}") for n in range(20)]
    responses = await asyncio.gather(*(client.get(USERS, headers=bearer(token)) for token in tokens))
    assert [response.status for response in responses] == [200] * 20
    assert jwks.fetches == 2


async def test_unreachable_jwks_is_401_not_500_and_open_routes_still_work(
    registry_path: Path, start_recorder: StartRecorder, serve_with: ServeWith
) -> None:
    users = await start_recorder("users")
    url = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"
    client = await serve_with(jwks_settings(url, 0.001), jwt_registry(registry_path, users.url))

    body = await assert_unauthorized(await client.get(USERS, headers=bearer(rs_token("a", "key-a"))), True)
    assert body["error"] == "Token could not be verified"
    assert (await client.get(OPEN, headers=bearer(rs_token("a", "key-a")))).status == 200
    report = await jwt_report(client)
    assert report["status"] == "unavailable" and report["jwks"]["keys"] == 0
    assert report["jwks"]["lastError"].startswith("cannot connect")
    metrics = await (await client.get("/metrics")).text()
    assert metric_value(metrics, REJECTIONS, service="user-service", reason="unavailable") == 1.0


async def test_jwks_failing_at_start_is_retried_once_it_recovers(
    registry_path: Path, start_recorder: StartRecorder, start_jwks: StartJwks, serve_with: ServeWith
) -> None:
    users = await start_recorder("users")
    jwks = await start_jwks([jwk(rsa_key("a"), "key-a")])
    jwks.status = 503
    client = await serve_with(jwks_settings(jwks.url, 0.2), jwt_registry(registry_path, users.url))
    token = rs_token("a", "key-a")
    await assert_unauthorized(await client.get(USERS, headers=bearer(token)), challenge_error=True)
    assert (await jwt_report(client))["jwks"]["lastError"] == "HTTP 503"

    jwks.status = 200
    deadline = time.monotonic() + 5
    while (status := (await client.get(USERS, headers=bearer(token))).status) != 200 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert status == 200
    report = await jwt_report(client)
    assert report["status"] == "ok" and report["jwks"]["lastError"] is None


def es_settings(url: str, **env: str) -> Settings:
    """Settings read from the environment as the gateway reads them: ES256 keys from a JWKS URL."""
    return load_settings(
        {
            "JWT_ALGORITHMS": "ES256",
            "JWT_JWKS_URL": url,
            "KADAI_RELOAD_INTERVAL": "100ms",
            "KADAI_DRAIN_TIMEOUT": "2s",
            **env,
        }
    )


def es_token(name: str, kid: str, **claims: Any) -> str:
    return sign(payload(**claims), ec_key(name), "ES256", kid=kid)


async def test_es256_keys_from_a_jwks_url(
    registry_path: Path, start_recorder: StartRecorder, start_jwks: StartJwks, serve_with: ServeWith
) -> None:
    users = await start_recorder("users")
    jwks = await start_jwks([jwk(ec_key("a"), "ec-a")])
    client = await serve_with(es_settings(jwks.url), jwt_registry(registry_path, users.url))

    assert (await client.get(USERS, headers=bearer(es_token("a", "ec-a", sub="ec-user")))).status == 200
    assert last(users).header("X-User-ID") == "ec-user"
    # Another EC key under the same kid: the signature does not verify.
    other = sign(payload(), ec_key("b"), "ES256", kid="ec-a")
    await assert_unauthorized(await client.get(USERS, headers=bearer(other)), challenge_error=True)
    # An RS256 token is outside the allow-list even though the kid is known.
    rsa_signed = sign(payload(), rsa_key("a"), "RS256", kid="ec-a")
    await assert_unauthorized(await client.get(USERS, headers=bearer(rsa_signed)), challenge_error=True)
    assert len(proxied(users)) == 1
    report = await jwt_report(client)
    assert report["algorithms"] == ["ES256"] and report["jwks"]["kids"] == ["ec-a"]
    metrics = await (await client.get("/metrics")).text()
    assert metric_value(metrics, REJECTIONS, service="user-service", reason="signature") == 2


async def test_jwks_keys_are_refreshed_in_the_background_once_their_ttl_passes(
    registry_path: Path, start_recorder: StartRecorder, start_jwks: StartJwks, serve_with: ServeWith
) -> None:
    users = await start_recorder("users")
    jwks = await start_jwks([jwk(ec_key("a"), "ec-a")])
    settings = es_settings(jwks.url, JWT_JWKS_CACHE_TTL="1s", JWT_JWKS_REFRESH_INTERVAL="200ms")
    client = await serve_with(settings, jwt_registry(registry_path, users.url))
    assert jwks.fetches == 1
    jwks.keys = [jwk(ec_key("a"), "ec-a"), jwk(ec_key("b"), "ec-b")]

    # Within the TTL a token of a known kid fetches nothing.
    assert (await client.get(USERS, headers=bearer(es_token("a", "ec-a", sub="u-1")))).status == 200
    assert jwks.fetches == 1
    await asyncio.sleep(1.1)
    # Past it, the next token of a known kid (not a cached one) starts a fetch in the background and is
    # verified with the old keys meanwhile: it does not wait for a slow identity provider.
    jwks.delay = 1.5
    started = time.monotonic()
    assert (await client.get(USERS, headers=bearer(es_token("a", "ec-a", sub="u-2")))).status == 200
    assert time.monotonic() - started < 0.75
    await wait_until(lambda: jwks.fetches == 2, 5.0, "the background JWKS refresh to start")

    async def refreshed() -> bool:
        return bool((await jwt_report(client))["jwks"]["kids"] == ["ec-a", "ec-b"])

    await wait_until(refreshed, 5.0, "the refreshed key set")
    # The new key came with the refresh: its token needs no unknown-kid fetch.
    assert (await client.get(USERS, headers=bearer(es_token("b", "ec-b", sub="u-3")))).status == 200
    assert last(users).header("X-User-ID") == "u-3"
    assert jwks.fetches == 2
