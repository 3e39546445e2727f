"""The response cache against the real Redis: hits, what is never kept, per-user keys, stale-if-error (an
upstream answering 503, a stopped upstream, an open breaker)."""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from gateway.app import Gateway, create_app
from gateway.config.settings import Settings
from gateway.keys import GATEWAY_KEY
from gateway.tokens import mint_token
from tests.conftest import StartStoppable
from tests.integration.helpers import GatewayClient, StartUpstream, assert_error_envelope, metric_value
from tests.support import free_port, service, write_registry

pytestmark = pytest.mark.redis



class Origin:
    """An upstream whose answer, headers and health the test controls; counts the requests it serves."""

    def __init__(self) -> None:
        self.hits = 0
        self.status = 200
        self.headers: dict[str, str] = {}
        self.users: list[str | None] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.answer)
        return app

    async def answer(self, request: web.Request) -> web.Response:
        self.hits += 1
        self.users.append(request.headers.get("X-User-ID"))
        body = {"hit": self.hits, "path": request.path, "user": request.headers.get("X-User-ID")}
        return web.json_response(body, status=self.status, headers=self.headers)


@pytest.fixture
async def cache_service(redis_server: str) -> AsyncIterator[str]:
    """A service name of this test alone; its cache keys are deleted afterwards."""
    name = f"cached-{os.urandom(4).hex()}"
    yield name
    client = Redis.from_url(redis_server)
    keys = [key async for key in client.scan_iter(f"kadai:cache:{name}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def _gateway(
    registry_path: Path,
    gateway_client: GatewayClient,
    start_upstream: StartUpstream,
    name: str,
    origin: Origin,
    cache: dict[str, Any] | None = None,
    **options: Any,
) -> TestClient[Any, Any]:
    url = await start_upstream(origin.app())
    options.setdefault("retry", False)
    registry = write_registry(
        registry_path, {name: service([url], "/api/v1/things", cache=cache or {"ttl": "10s"}, **options)}
    )
    return await gateway_client(registry)


async def _get(client: TestClient[Any, Any], path: str = "/api/v1/things/1", **headers: str) -> tuple[int, Any, Any]:
    response = await client.get(path, headers=headers)
    return response.status, response.headers, await response.json()


async def _until(condition: Callable[[], Any], timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await _value(condition()):
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _stored(client: TestClient[Any, Any], name: str) -> bool:
    """Whether the gateway's Redis holds an entry of the service (stores run after the response)."""
    redis = client.server.app[GATEWAY_KEY].resources.redis
    assert redis is not None
    return bool([key async for key in redis.scan_iter(f"kadai:cache:{name}:*")])


async def test_a_repeated_get_is_served_from_the_cache_until_its_ttl(
    registry_path: Path, gateway_client: GatewayClient, start_upstream: StartUpstream, cache_service: str
) -> None:
    origin = Origin()
    client = await _gateway(registry_path, gateway_client, start_upstream, cache_service, origin, {"ttl": "400ms"})

    status, headers, first = await _get(client)
    assert (status, headers["X-Cache"], first["hit"]) == (200, "MISS", 1)
    await _until(lambda: _stored(client, cache_service))

    status, headers, second = await _get(client)
    assert (status, headers["X-Cache"], second) == (200, "HIT", first)
    assert headers["Age"] == "0"
    assert headers["X-Gateway-Service"] == cache_service
    assert origin.hits == 1

    status, headers, other = await _get(client, "/api/v1/things/2")
    assert (headers["X-Cache"], other["hit"]) == ("MISS", 2)

    await asyncio.sleep(0.45)
    status, headers, third = await _get(client)
    assert (status, headers["X-Cache"], third["hit"]) == (200, "MISS", 3)

    metrics = await (await client.get("/metrics")).text()
    assert metric_value(metrics, "kadai_gateway_cache_lookups_total", service=cache_service, result="hit") == 1
    assert metric_value(metrics, "kadai_gateway_cache_lookups_total", service=cache_service, result="miss") == 3


@pytest.mark.parametrize(
    "headers",
    [
        {"Cache-Control": "no-store"},
        {"Cache-Control": "private, max-age=60"},
        {"Cache-Control": "no-cache"},
        {"Cache-Control": "max-age=0"},
        {"Set-Cookie": "session=abc"},
        {"Vary": "Accept-Language"},
        {"Vary": "*"},
    ],
    ids=["no-store", "private", "no-cache", "max-age-0", "set-cookie", "vary-other-header", "vary-star"],
)
async def test_responses_the_upstream_marks_uncacheable_are_never_kept(
    registry_path: Path,
    gateway_client: GatewayClient,
    start_upstream: StartUpstream,
    cache_service: str,
    headers: dict[str, str],
) -> None:
    origin = Origin()
    origin.headers = headers
    client = await _gateway(registry_path, gateway_client, start_upstream, cache_service, origin)

    bodies = [(await _get(client))[2]["hit"] for _ in range(3)]

    assert bodies == [1, 2, 3]
    assert not await _stored(client, cache_service)


async def test_upstream_max_age_shortens_the_route_ttl(
    registry_path: Path, gateway_client: GatewayClient, start_upstream: StartUpstream, cache_service: str
) -> None:
    origin = Origin()
    origin.headers = {"Cache-Control": "public, max-age=1"}
    client = await _gateway(registry_path, gateway_client, start_upstream, cache_service, origin, {"ttl": "1h"})

    await _get(client)
    await _until(lambda: _stored(client, cache_service))
    assert (await _get(client))[1]["X-Cache"] == "HIT"
    await asyncio.sleep(1.05)
    assert (await _get(client))[1]["X-Cache"] == "MISS"
    assert origin.hits == 2


async def test_post_and_client_no_store_bypass_and_client_no_cache_revalidates(
    registry_path: Path, gateway_client: GatewayClient, start_upstream: StartUpstream, cache_service: str
) -> None:
    origin = Origin()
    client = await _gateway(registry_path, gateway_client, start_upstream, cache_service, origin)

    await _get(client)
    await _until(lambda: _stored(client, cache_service))
    assert (await _get(client))[2]["hit"] == 1
    assert (await (await client.post("/api/v1/things/1", json={})).json())["hit"] == 2
    assert (await _get(client, **{"Cache-Control": "no-store"}))[2]["hit"] == 3
    status, headers, body = await _get(client, **{"Cache-Control": "no-cache"})
    assert (headers["X-Cache"], body["hit"]) == ("MISS", 4)
    assert origin.hits == 4


async def test_answers_are_kept_per_user(
    registry_path: Path,
    gateway_client: GatewayClient,
    start_upstream: StartUpstream,
    cache_service: str,
    settings: Settings,
) -> None:
    origin = Origin()
    client = await _gateway(registry_path, gateway_client, start_upstream, cache_service, origin, auth=True)
    alice = {"Authorization": f"Bearer {mint_token(settings, 'alice', 'seller')}"}
    bob = {"Authorization": f"Bearer {mint_token(settings, 'bob', 'seller')}"}

    assert (await _get(client, **alice))[2]["user"] == "alice"
    await _until(lambda: _stored(client, cache_service))
    status, headers, body = await _get(client, **bob)
    assert (headers["X-Cache"], body["user"]) == ("MISS", "bob")
    status, headers, body = await _get(client, **alice)
    assert (headers["X-Cache"], body["user"]) == ("HIT", "alice")
    assert origin.users == ["alice", "bob"]


async def test_a_host_sent_by_one_client_never_shapes_the_answer_another_gets(
    registry_path: Path, gateway_client: GatewayClient, start_upstream: StartUpstream, cache_service: str
) -> None:
    """Services build links from X-Forwarded-Host/-Proto, which the gateway derives from the client's Host:
    an unkeyed Host would let anyone plant links to their own site in everybody's cached answer."""
    links: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        link = f"{request.headers['X-Forwarded-Proto']}://{request.headers['X-Forwarded-Host']}/api/v1/things/2"
        links.append(link)
        return web.json_response({"next": link})

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    url = await start_upstream(app)
    registry = write_registry(registry_path, {cache_service: service([url], "/api/v1/things", cache={}, retry=False)})
    client = await gateway_client(registry)
    own = f"{client.server.host}:{client.server.port}"

    poisoned = await client.get("/api/v1/things/1", headers={"Host": "attacker.example"})
    assert (await poisoned.json())["next"] == "http://attacker.example/api/v1/things/2"
    await _until(lambda: _stored(client, cache_service))

    status, headers, body = await _get(client)
    assert (headers["X-Cache"], body["next"]) == ("MISS", f"http://{own}/api/v1/things/2")

    async def both_stored() -> bool:
        return await _entries(client, cache_service) == 2

    await _until(both_stored)
    status, headers, body = await _get(client)
    assert (headers["X-Cache"], body["next"]) == ("HIT", f"http://{own}/api/v1/things/2")
    assert len(links) == 2


async def _entries(client: TestClient[Any, Any], name: str) -> int:
    """How many entries the gateway's Redis holds for the service."""
    redis = client.server.app[GATEWAY_KEY].resources.redis
    assert redis is not None
    return len([key async for key in redis.scan_iter(f"kadai:cache:{name}:*")])


async def _sleep_until(wall_time: float) -> None:
    """Sleep until time.time() (the clock of the cache's Age) reaches wall_time."""
    await asyncio.sleep(max(0.0, wall_time - time.time()))


@pytest.mark.parametrize("failure", ["status-503", "instance-stopped"])
async def test_a_stale_copy_is_served_while_the_upstream_fails(
    registry_path: Path,
    gateway_client: GatewayClient,
    stoppable_upstream: StartStoppable,
    cache_service: str,
    failure: str,
) -> None:
    origin = Origin()
    url, stop = await stoppable_upstream(origin.app())
    registry = write_registry(
        registry_path,
        {cache_service: service([url], "/api/v1/things", cache={"ttl": "1s", "stale_if_error": "1s"}, retry=False)},
    )
    client = await gateway_client(registry)
    asked = time.time()
    fresh = (await _get(client))[2]
    answered = time.time()  # the entry was stored between `asked` and `answered`
    await _until(lambda: _stored(client, cache_service))
    await _sleep_until(answered + 1.05)  # no longer fresh (ttl 1 s), still within stale_if_error

    if failure == "status-503":
        origin.status = 503
    else:
        await stop()

    sent = time.time()
    status, headers, body = await _get(client)
    received = time.time()
    assert (status, body) == (200, fresh)
    assert headers["X-Cache"] == "STALE"
    assert headers["Warning"] == '110 - "Response is Stale"'
    # Age is the entry's whole seconds since it was stored: at least the ttl it outlived.
    age = int(headers["Age"])
    assert 1 <= int(sent - answered) <= age <= received - asked
    assert origin.hits == (2 if failure == "status-503" else 1)

    await _sleep_until(answered + 2.05)  # past ttl + stale_if_error: the failure reaches the client
    response = await client.get("/api/v1/things/1")
    expected = 503 if failure == "status-503" else 502
    assert response.status == expected
    if failure == "instance-stopped":
        assert_error_envelope(await response.json(), 502)
    metrics = await (await client.get("/metrics")).text()
    assert metric_value(metrics, "kadai_gateway_cache_lookups_total", service=cache_service, result="stale") == 1


async def test_a_stale_copy_is_served_while_the_breaker_fails_fast(
    registry_path: Path, gateway_client: GatewayClient, start_upstream: StartUpstream, cache_service: str
) -> None:
    origin = Origin()
    cache, breaker = {"ttl": "200ms", "stale_if_error": "10s"}, {"fail_max": 1, "reset_timeout": "20s"}
    client = await _gateway(
        registry_path, gateway_client, start_upstream, cache_service, origin, cache, breaker=breaker
    )
    fresh = (await _get(client))[2]
    await _until(lambda: _stored(client, cache_service))
    await asyncio.sleep(0.25)  # no longer fresh

    origin.status = 500  # answered stale, and the failure opens the breaker (fail_max 1)
    status, headers, body = await _get(client)
    assert (status, headers["X-Cache"], body) == (200, "STALE", fresh)
    assert origin.hits == 2

    # The open breaker refuses without calling the instance (a 503 of the gateway's own): still stale.
    status, headers, body = await _get(client)
    assert (status, headers["X-Cache"], body) == (200, "STALE", fresh)
    assert headers["Warning"] == '110 - "Response is Stale"'
    assert origin.hits == 2
    # Nothing cached for another path: the breaker's refusal itself.
    response = await client.get("/api/v1/things/2")
    assert response.status == 503
    body = await response.json()
    assert_error_envelope(body, 503)
    assert body["details"] == {"service": cache_service, "reason": "circuit_open"}
    assert origin.hits == 2
    metrics = await (await client.get("/metrics")).text()
    assert metric_value(metrics, "kadai_gateway_breaker_rejections_total", service=cache_service) == 2
    assert metric_value(metrics, "kadai_gateway_cache_lookups_total", service=cache_service, result="stale") == 2


@pytest.mark.parametrize(
    "cache_control",
    ["must-revalidate", "public, proxy-revalidate", "s-maxage=60"],
    ids=["must-revalidate", "proxy-revalidate", "s-maxage"],
)
async def test_an_answer_the_upstream_forbids_to_serve_stale_is_not_served_stale(
    registry_path: Path,
    gateway_client: GatewayClient,
    start_upstream: StartUpstream,
    cache_service: str,
    cache_control: str,
) -> None:
    """RFC 9111, 4.2.4: must-revalidate, and for a shared cache proxy-revalidate and s-maxage, forbid a stale
    answer: the client gets the failure instead (prices or stock levels must never be served out of date)."""
    origin = Origin()
    origin.headers = {"Cache-Control": cache_control}
    url = await start_upstream(origin.app())
    registry = write_registry(
        registry_path,
        {cache_service: service([url], "/api/v1/things", cache={"ttl": "200ms", "stale_if_error": "10s"}, retry=False)},
    )
    client = await gateway_client(registry)
    await _get(client)
    await _until(lambda: _stored(client, cache_service))
    assert (await _get(client))[1]["X-Cache"] == "HIT"  # kept and served while fresh
    await asyncio.sleep(0.25)

    origin.status = 503
    response = await client.get("/api/v1/things/1")

    assert response.status == 503
    assert "X-Cache" not in response.headers
    assert (await response.json())["hit"] == 2


async def _value(result: Any) -> Any:
    return await result if asyncio.iscoroutine(result) else result


async def test_redis_down_means_no_cache_and_no_error(
    registry_path: Path, start_upstream: StartUpstream, aiohttp_client: Any, cache_service: str
) -> None:
    origin = Origin()
    url = await start_upstream(origin.app())
    registry = write_registry(registry_path, {cache_service: service([url], "/api/v1/things", cache={}, retry=False)})
    settings = Settings(reload_interval=0.1, drain_timeout=2.0, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = await aiohttp_client(TestServer(create_app(Gateway(settings, registry)), host="127.0.0.1"))

    started = asyncio.get_running_loop().time()
    hits = [(await _get(client))[2]["hit"] for _ in range(20)]
    elapsed = asyncio.get_running_loop().time() - started

    assert hits == list(range(1, 21))
    metrics = await (await client.get("/metrics")).text()
    # One failed lookup, then the cache steps aside (back-off) instead of costing every request its timeout.
    assert metric_value(metrics, "kadai_gateway_cache_lookups_total", service=cache_service, result="error") == 1
    assert metric_value(metrics, "kadai_gateway_cache_lookups_total", service=cache_service, result="bypass") == 19
    assert elapsed < 20 * 0.05
    detailed = await (await client.get("/api/v1/health/detailed")).json()
    assert detailed["data"]["components"]["responseCache"]["state"] == "backing-off"
