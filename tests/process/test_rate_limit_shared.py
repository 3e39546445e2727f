"""Two real gateway processes on one Redis enforce one rate limit between them, under concurrent load."""
from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from gateway.middleware.rate_limit import SPEC_TIERS
from tests.conftest import StartUpstream
from tests.integration.helpers import metric_value
from tests.support import GatewayProcess, service, write_registry

pytestmark = [pytest.mark.slow, pytest.mark.redis]

LIMIT = 40
REQUESTS_PER_GATEWAY = 100
DECISIONS = "kadai_gateway_ratelimit_decisions_total"


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def tier_name(redis_server: str) -> AsyncIterator[str]:
    """A tier of this test's own, so its buckets are its own on a shared Redis; removed afterwards."""
    name = f"shared_{secrets.token_hex(4)}"
    yield name
    async with Redis.from_url(redis_server) as redis:
        keys = [key async for key in redis.scan_iter(match=f"kadai:ratelimit:{name}.*")]
        if keys:
            await redis.delete(*keys)


async def _hammer(session: aiohttp.ClientSession, gateway: GatewayProcess) -> Counter[int]:
    async def one() -> int:
        async with session.get(f"{gateway.url}/api/v1/echo/x") as response:
            await response.read()
            return response.status

    return Counter(await asyncio.gather(*(one() for _ in range(REQUESTS_PER_GATEWAY))))


async def test_two_gateways_admit_exactly_the_limit_between_them(
    tmp_path: Path,
    start_upstream: StartUpstream,
    gateway_process: Callable[..., GatewayProcess],
    redis_server: str,
    tier_name: str,
) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _ok)
    base = await start_upstream(app)
    # One hour for LIMIT tokens: a refill during the test would be under a hundredth of a token.
    rate_limit = {
        **{name: False for name in SPEC_TIERS},
        tier_name: {"limit": LIMIT, "window": "1h"},
        "timeout": "2s",
        "fail_open": False,
    }
    route = {"prefix": "/api/v1/echo", "auth": False, "rate_limit": rate_limit}
    registry = write_registry(tmp_path / "registry.yaml", {"echo": service([base], route)})
    env = {"REDIS_URL": redis_server}
    first, second = gateway_process(registry, env=env), gateway_process(registry, env=env)

    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(connector=connector) as session:
        results = await asyncio.gather(_hammer(session, first), _hammer(session, second))
        totals = results[0] + results[1]
        assert set(totals) <= {200, 429}, totals
        assert totals[200] == LIMIT, f"admitted {totals[200]} for a limit of {LIMIT}: {results}"

        for gateway in (first, second):
            async with session.get(f"{gateway.url}/metrics") as response:
                text = await response.text()
            decided = sum(
                metric_value(text, DECISIONS, service="echo", outcome=outcome, tier=tier)
                for outcome, tier in (("allowed", "-"), ("rejected", tier_name))
            )
            assert decided == REQUESTS_PER_GATEWAY
