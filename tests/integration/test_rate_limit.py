"""Rate limiting against a real Redis: tiers, refill, atomicity, headers, 429s, client identity, NOSCRIPT,
and a Redis that dies, stalls and comes back (a private redis-server started by the test)."""
from __future__ import annotations

import asyncio
import logging
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from redis.asyncio import Redis

from gateway.app import Gateway, create_app
from gateway.config.settings import Settings
from gateway.keys import GATEWAY_KEY
from gateway.middleware.rate_limit import SPEC_TIERS
from gateway.ratelimit import COMPONENT, BatchedRedisBackend, Limiter
from gateway.tokens import mint_token
from tests import backends
from tests.backends import redis_answers
from tests.integration.helpers import (
    Client,
    GatewayClient,
    StartRecorder,
    assert_error_envelope,
    assert_success_envelope,
    metric_value,
)
from tests.support import free_port, service, write_registry

pytestmark = pytest.mark.redis

USERS = "/api/v1/users/1"
DECISIONS = "kadai_gateway_ratelimit_decisions_total"
BACKEND_ERRORS = "kadai_gateway_ratelimit_backend_errors_total"
NO_SPEC_TIERS = {name: False for name in SPEC_TIERS}

TierName = Callable[[str], str]
MakeClient = Callable[[Path, str], Awaitable[Client]]


@pytest.fixture
def settings(redis_server: str) -> Settings:
    return Settings(redis_url=redis_server, reload_interval=0.1, drain_timeout=2.0)


@pytest.fixture
async def redis(redis_server: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server)
    yield client
    await client.aclose()


@pytest.fixture
async def tier(redis: Redis) -> AsyncIterator[TierName]:
    """Tier names unique to this test: its buckets are its own even when others share the Redis."""
    tag = secrets.token_hex(4)
    yield lambda name: f"{name}_{tag}"
    keys = [key async for key in redis.scan_iter(match=f"kadai:ratelimit:*_{tag}.*", count=1000)]
    if keys:
        await redis.delete(*keys)


@pytest.fixture
def make_client(aiohttp_client: Callable[..., Awaitable[Client]]) -> MakeClient:
    """A gateway on a registry whose Redis is redis_url (gateway_client uses the shared Redis)."""

    async def make(registry: Path, redis_url: str) -> Client:
        gw = Gateway(Settings(redis_url=redis_url, reload_interval=0.1, drain_timeout=2.0), registry)
        return await aiohttp_client(TestServer(create_app(gw), host="127.0.0.1"))

    return make


def limits(tiers: dict[str, tuple[int, str]], **settings: Any) -> dict[str, Any]:
    """rate_limit settings with exactly these tiers ({name: (limit, window)})."""
    return {**NO_SPEC_TIERS, **{name: {"limit": n, "window": w} for name, (n, w) in tiers.items()}, **settings}


def users_registry(path: Path, url: str, rate_limit: dict[str, Any], auth: bool = False, **top: Any) -> Path:
    route = {"prefix": "/api/v1/users", "auth": auth, "rate_limit": rate_limit}
    return write_registry(path, {"user-service": service([url], route)}, **top)


def bucket_key(name: str, limit: int, window_ms: int, client: str = "ip:127.0.0.1") -> str:
    return f"kadai:ratelimit:{name}.{limit}per{window_ms}ms:{{{client}}}"


def limiter_of(client: Client) -> Limiter:
    limiter = client.app[GATEWAY_KEY].resources.components[COMPONENT]
    assert isinstance(limiter, Limiter)
    return limiter


async def statuses(client: Client, count: int, path: str = USERS, **kwargs: Any) -> list[int]:
    result = []
    for _ in range(count):
        async with client.get(path, **kwargs) as response:
            await response.read()
            result.append(response.status)
    return result


async def metrics_text(client: Client) -> str:
    async with client.get("/metrics") as response:
        assert response.status == 200
        return await response.text()


async def limiter_report(client: Client) -> dict[str, Any]:
    async with client.get("/api/v1/health/detailed") as response:
        data = assert_success_envelope(await response.json())
    report: dict[str, Any] = data["components"][COMPONENT]
    return report


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


# --- tiers, refill, atomicity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tiers", "allowed", "tripped"),
    [
        ({"a": (3, "1m"), "b": (10, "1m"), "c": (20, "1h")}, 3, "a"),
        ({"a": (10, "1m"), "b": (3, "1m"), "c": (20, "1h")}, 3, "b"),
        ({"a": (10, "10s"), "b": (20, "1m"), "c": (4, "1h")}, 4, "c"),
    ],
    ids=["first-tier", "middle-tier", "last-tier"],
)
async def test_each_tier_trips_at_its_limit(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    tier: TierName,
    tiers: dict[str, tuple[int, str]],
    allowed: int,
    tripped: str,
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(
        users_registry(registry_path, users.url, limits({tier(name): spec for name, spec in tiers.items()}))
    )

    assert await statuses(client, allowed + 2) == [200] * allowed + [429] * 2
    async with client.get(USERS) as response:
        assert (await response.json())["details"]["tier"] == tier(tripped)
    assert len(users.received) == allowed


async def test_a_tier_refills_at_its_rate_and_idle_buckets_expire(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, tier: TierName, redis: Redis
) -> None:
    users = await start_recorder("users")
    name = tier("fast")
    client = await gateway_client(users_registry(registry_path, users.url, limits({name: (4, "400ms")})))

    first_sent = time.monotonic()
    assert await statuses(client, 4) == [200] * 4  # one token back per 100 ms
    spent = time.monotonic()
    assert await statuses(client, 1) == [429]

    async def admitted() -> bool:
        return await statuses(client, 1) == [200]

    await wait_for(admitted, 2.0, "a token to come back")
    back = time.monotonic()
    assert back - first_sent >= 0.1
    assert back - spent < 0.3  # well before the whole window (400 ms) has passed
    assert await statuses(client, 1) == [429]  # one token, not more

    key = bucket_key(name, 4, 400)
    assert 0 < await redis.pttl(key) <= 401

    async def expired() -> bool:
        return not await redis.exists(key)

    assert 0.25 <= await wait_for(expired, 2.0, "the idle bucket to expire") <= 1.0
    assert await statuses(client, 5) == [200] * 4 + [429]


async def test_a_request_refused_by_one_tier_takes_nothing_from_the_others(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, tier: TierName, redis: Redis
) -> None:
    users = await start_recorder("users")
    wide, narrow = tier("wide"), tier("narrow")
    client = await gateway_client(
        users_registry(registry_path, users.url, limits({wide: (5, "1m"), narrow: (2, "1h")}))
    )

    assert await statuses(client, 2) == [200, 200]
    wide_key, narrow_key = bucket_key(wide, 5, 60_000), bucket_key(narrow, 2, 3_600_000)
    wide_before, narrow_before = await redis.hgetall(wide_key), await redis.hgetall(narrow_key)
    assert 3.0 <= float(wide_before[b"tokens"]) < 3.01
    assert float(narrow_before[b"tokens"]) < 0.01

    assert await statuses(client, 5) == [429] * 5
    assert await redis.hgetall(wide_key) == wide_before
    assert await redis.hgetall(narrow_key) == narrow_before
    async with client.get(USERS) as response:
        assert (await response.json())["details"]["tier"] == narrow


async def redis_now_us(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1_000_000 + int(micros)


async def test_buckets_run_on_the_redis_server_clock(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    tier: TierName,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bucket's `ts` is Redis's TIME, so gateways whose own clocks disagree still share one timeline."""
    users = await start_recorder("users")
    name = tier("clock")
    client = await gateway_client(users_registry(registry_path, users.url, limits({name: (5, "1m")})))
    # This process's wall clock a day ahead: a bucket stamped by the gateway would show it.
    wall_clock = time.time
    monkeypatch.setattr(time, "time", lambda: wall_clock() + 86_400)

    before = await redis_now_us(redis)
    assert await statuses(client, 1) == [200]
    after = await redis_now_us(redis)

    bucket = await redis.hgetall(bucket_key(name, 5, 60_000))
    assert set(bucket) == {b"tokens", b"ts"}
    stamped = int(bucket[b"ts"])
    assert before <= stamped <= after, (before, stamped, after)
    assert after - before < 1_000_000
    assert 3.99 < float(bucket[b"tokens"]) < 4.01


# --- what the client sees ----------------------------------------------------------------------------------


async def test_allowed_responses_carry_the_tightest_tier_headers(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, tier: TierName
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(
        users_registry(registry_path, users.url, limits({tier("second"): (10, "1s"), tier("minute"): (3, "1m")}))
    )

    seen = []
    for _ in range(3):
        async with client.get(USERS) as response:
            assert response.status == 200
            seen.append(tuple(response.headers[h] for h in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")))
    # The minute tier (one token per 20 s) is the tightest; Reset is the time until its bucket is full.
    assert seen == [("3", "2", "20"), ("3", "1", "40"), ("3", "0", "60")]


async def test_rejection_is_a_429_envelope_with_retry_after_and_the_tier(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, tier: TierName
) -> None:
    users = await start_recorder("users")
    name = tier("slow")
    client = await gateway_client(users_registry(registry_path, users.url, limits({name: (1, "2500ms")})))

    assert await statuses(client, 1) == [200]
    async with client.get(USERS, headers={"X-Request-ID": "rl-test-1"}) as response:
        assert response.status == 429
        body = await response.json()
        headers = response.headers
    assert_error_envelope(body, 429, "rl-test-1")
    assert body["error"] == f"Rate limit exceeded ({name}: 1 per 2500ms)"
    assert body["details"] == {"tier": name, "limit": 1, "windowSeconds": 2.5, "retryAfterSeconds": 3}
    assert headers["Retry-After"] == "3"  # about 2.5 s, rounded up
    assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"], headers["RateLimit-Reset"]) == ("1", "0", "3")
    assert headers["X-Request-ID"] == "rl-test-1"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert len(users.received) == 1

    text = await metrics_text(client)
    labels = {"service": "user-service", "tier": name}
    assert metric_value(text, DECISIONS, outcome="rejected", **labels) == 1
    assert metric_value(text, DECISIONS, service="user-service", outcome="allowed", tier="-") == 1


async def test_gateway_endpoints_are_not_limited(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, tier: TierName
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url, limits({tier("t"): (1, "1m")})))
    assert await statuses(client, 2) == [200, 429]
    assert await statuses(client, 3, "/api/v1/health") == [200] * 3


# --- who the client is -------------------------------------------------------------------------------------


async def test_a_spoofed_forwarded_for_does_not_move_a_direct_client(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, tier: TierName, redis: Redis
) -> None:
    users = await start_recorder("users")
    name = tier("t")
    client = await gateway_client(users_registry(registry_path, users.url, limits({name: (2, "1m")})))

    result = [
        (await statuses(client, 1, headers={"X-Forwarded-For": f"203.0.113.{index}"}))[0] for index in range(4)
    ]
    assert result == [200, 200, 429, 429]
    assert await redis.exists(bucket_key(name, 2, 60_000))


async def test_behind_a_trusted_proxy_the_client_is_the_address_the_proxy_appended(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, tier: TierName, redis: Redis
) -> None:
    users = await start_recorder("users")
    name = tier("t")
    registry = users_registry(
        registry_path, users.url, limits({name: (2, "1m")}), gateway={"trusted_proxies": ["127.0.0.1/32"]}
    )
    client = await gateway_client(registry)

    async def from_client(real: str, spoofed: str | None = None) -> int:
        # The load balancer appends the address it saw to whatever the client sent.
        forwarded = f"{spoofed}, {real}" if spoofed else real
        return (await statuses(client, 1, headers={"X-Forwarded-For": forwarded}))[0]

    assert [await from_client("198.51.100.7", f"192.0.2.{i}") for i in range(3)] == [200, 200, 429]
    assert await from_client("198.51.100.8") == 200
    assert await from_client("198.51.100.7") == 429
    assert await redis.exists(bucket_key(name, 2, 60_000, "ip:198.51.100.7"))
    assert not await redis.exists(bucket_key(name, 2, 60_000, "ip:127.0.0.1"))


async def test_an_authenticated_client_is_limited_by_its_token_subject(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    tier: TierName,
    redis: Redis,
    settings: Settings,
) -> None:
    users = await start_recorder("users")
    name = tier("t")
    client = await gateway_client(users_registry(registry_path, users.url, limits({name: (2, "1m")}), auth=True))
    alice, bob = f"alice-{secrets.token_hex(4)}", f"bob-{secrets.token_hex(4)}"

    def bearer(sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(settings, sub, 'user')}"}

    assert await statuses(client, 3, headers=bearer(alice)) == [200, 200, 429]
    assert await statuses(client, 1, headers=bearer(bob)) == [200]  # same address, other subject
    assert await redis.exists(bucket_key(name, 2, 60_000, f"sub:{alice}"))
    assert not await redis.exists(bucket_key(name, 2, 60_000))


# --- Redis's script cache, Redis down or slow --------------------------------------------------------------


class RedisServer:
    """A redis-server of this test's own on a loopback port, which the test may kill, pause and restart."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not redis_answers(self.url, timeout=0.2):
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not answer on port {self.port} within {timeout}s")
            await asyncio.sleep(0.01)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
async def private_redis() -> AsyncIterator[RedisServer]:
    binary = backends.redis_server_binary("the Redis fault tests")
    server = RedisServer(binary)
    await server.start()
    yield server
    server.kill()


def fault_registry(path: Path, url: str, name: str, *, fail_open: bool = True, timeout: str = "200ms") -> Path:
    settings = {"fail_open": fail_open, "timeout": timeout, "backoff": "50ms", "backoff_max": "200ms"}
    return users_registry(path, url, limits({name: (1000, "1m")}, **settings))


async def has_limit_headers(client: Client) -> bool:
    async with client.get(USERS) as response:
        await response.read()
        return response.status == 200 and "RateLimit-Limit" in response.headers


@pytest.mark.slow
async def test_script_is_loaded_once_and_again_after_script_flush(
    registry_path: Path, start_recorder: StartRecorder, make_client: MakeClient, private_redis: RedisServer
) -> None:
    users = await start_recorder("users")
    client = await make_client(users_registry(registry_path, users.url, limits({"t": (5, "1m")})), private_redis.url)
    backend = limiter_of(client).backend
    assert isinstance(backend, BatchedRedisBackend)  # what a redis:// URL gets

    assert await statuses(client, 2) == [200, 200]
    assert backend.script_loads == 1
    async with Redis.from_url(private_redis.url) as admin:
        await admin.script_flush()
    async with client.get(USERS) as response:
        assert response.status == 200
        assert response.headers["RateLimit-Remaining"] == "2"  # the buckets survived, the script did not
    assert backend.script_loads == 2
    assert await statuses(client, 3) == [200, 200, 429]
    text = await metrics_text(client)
    assert [metric_value(text, BACKEND_ERRORS, kind=kind) for kind in ("timeout", "connection", "error")] == [0, 0, 0]
    assert limiter_of(client)()["status"] == "ok"


@pytest.mark.slow
async def test_fails_open_while_redis_is_down_and_recovers_when_it_returns(
    registry_path: Path,
    start_recorder: StartRecorder,
    make_client: MakeClient,
    private_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.ratelimit")
    users = await start_recorder("users")
    client = await make_client(fault_registry(registry_path, users.url, "t"), private_redis.url)
    assert await has_limit_headers(client)
    assert (await limiter_report(client))["status"] == "ok"

    private_redis.kill()
    for _ in range(10):
        async with client.get(USERS) as response:
            assert response.status == 200
            assert "RateLimit-Limit" not in response.headers
    report = await limiter_report(client)
    assert report["status"] == "down" and report["backend"] == "redis"
    assert report["lastError"].startswith("connection: ")
    text = await metrics_text(client)
    assert metric_value(text, DECISIONS, service="user-service", outcome="failed_open", tier="-") == 10
    assert 1 <= metric_value(text, BACKEND_ERRORS, kind="connection") < 10  # the back-off skips Redis

    await private_redis.start()
    await wait_for(lambda: has_limit_headers(client), 5.0, "the limiter to use Redis again")
    assert (await limiter_report(client))["status"] == "ok"
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "gateway.ratelimit"]
    assert records == [
        (logging.WARNING, records[0][1]),
        (logging.INFO, "rate limiter backend answers again"),
    ]
    assert records[0][1].startswith("rate limiter backend unavailable")


@pytest.mark.slow
async def test_fails_closed_with_a_503_envelope_when_configured(
    registry_path: Path, start_recorder: StartRecorder, make_client: MakeClient, private_redis: RedisServer
) -> None:
    users = await start_recorder("users")
    client = await make_client(fault_registry(registry_path, users.url, "t", fail_open=False), private_redis.url)
    assert await statuses(client, 1) == [200]

    private_redis.kill()
    async with client.get(USERS) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        body = await response.json()
    assert_error_envelope(body, 503)
    assert body["details"] == {"reason": "rateLimiterUnavailable"}
    assert await statuses(client, 3) == [503] * 3
    assert len(users.received) == 1
    text = await metrics_text(client)
    assert metric_value(text, DECISIONS, service="user-service", outcome="failed_closed", tier="-") == 4

    await private_redis.start()
    await wait_for(lambda: has_limit_headers(client), 5.0, "the limiter to use Redis again")


@pytest.mark.slow
async def test_a_stalled_redis_costs_a_request_no_more_than_the_timeout(
    registry_path: Path, start_recorder: StartRecorder, make_client: MakeClient, private_redis: RedisServer
) -> None:
    users = await start_recorder("users")
    client = await make_client(fault_registry(registry_path, users.url, "t", timeout="50ms"), private_redis.url)
    assert await has_limit_headers(client)

    async with Redis.from_url(private_redis.url) as admin:
        await admin.execute_command("CLIENT", "PAUSE", "700", "ALL")
        started = time.monotonic()
        async with client.get(USERS) as response:
            assert response.status == 200
            assert "RateLimit-Limit" not in response.headers
        assert time.monotonic() - started < 0.5
        report = await limiter_report(client)
        assert report["status"] == "down" and report["lastError"].startswith("timeout: ")
        assert metric_value(await metrics_text(client), BACKEND_ERRORS, kind="timeout") == 1
    await wait_for(lambda: has_limit_headers(client), 5.0, "the pause to end and the limiter to recover")


async def test_start_up_does_not_need_redis(
    registry_path: Path, start_recorder: StartRecorder, make_client: MakeClient
) -> None:
    users = await start_recorder("users")
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    client = await make_client(fault_registry(registry_path, users.url, "t"), nowhere)
    assert await statuses(client, 3) == [200] * 3
    assert (await limiter_report(client))["status"] == "down"
