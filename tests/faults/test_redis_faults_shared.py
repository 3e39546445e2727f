"""Two real gateway processes sharing one Redis, under concurrent load from several clients for a few
seconds: no client is admitted more than its buckets allow, burst plus refill (limit + limit x elapsed /
window for every tier). The over-admission is printed; with Redis healthy it must be zero."""
from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.integration.test_rate_limit import RedisServer, limits, private_redis  # noqa: F401 - a fixture
from tests.process.conftest import _clean_gateway_environment  # noqa: F401 - autouse: a clean environment
from tests.support import GatewayProcess, service, write_registry

pytestmark = [pytest.mark.slow, pytest.mark.redis]

TIERS = {"fast": (10, 1.0), "slow": (30, 10.0)}
"""name: (limit, window in seconds). Over a few seconds both bind: 10 + 10/s against 30 + 3/s."""
CLIENTS = ("198.51.100.1", "198.51.100.2", "198.51.100.3")
WORKERS_PER_CLIENT_AND_GATEWAY = 2
DURATION = 3.0


def allowance(elapsed: float) -> int:
    """The most a client may be admitted in `elapsed` seconds: each tier's burst plus its refill, the
    tightest tier deciding. Tokens are fractional, admissions whole."""
    return min(math.floor(limit + limit * elapsed / window) for limit, window in TIERS.values())


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def test_two_gateways_never_admit_a_client_more_than_burst_plus_refill(
    tmp_path: Path,
    start_upstream: StartUpstream,
    gateway_process: Callable[..., GatewayProcess],
    private_redis: RedisServer,
) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _ok)
    base = await start_upstream(app)
    tiers = {name: (limit, f"{window:g}s") for name, (limit, window) in TIERS.items()}
    # fail_open false: a request Redis did not decide would be a 503 here, never an uncounted admission.
    route = {"prefix": "/api/v1/echo", "rate_limit": limits(tiers, timeout="1s", fail_open=False)}
    registry = write_registry(
        tmp_path / "registry.yaml",
        {"echo": service([base], route)},
        gateway={"trusted_proxies": ["127.0.0.1/32"]},  # X-Forwarded-For names the client
    )
    env = {"REDIS_URL": private_redis.url}
    gateways = [gateway_process(registry, env=env), gateway_process(registry, env=env)]

    statuses: dict[str, collections.Counter[int]] = {client: collections.Counter() for client in CLIENTS}
    errors: list[str] = []

    async def worker(session: aiohttp.ClientSession, gateway: GatewayProcess, client: str, deadline: float) -> None:
        count = 0
        while time.monotonic() < deadline:
            count += 1
            url = f"{gateway.url}/api/v1/echo/{client}/{count}"
            try:
                async with session.get(url, headers={"X-Forwarded-For": client}) as response:
                    await response.read()
                    statuses[client][response.status] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors.append(f"{url}: {exc!r}")

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        started = time.monotonic()  # before any request of the run: an upper bound of the buckets' time
        deadline = started + DURATION
        await asyncio.gather(
            *(
                worker(session, gateway, client, deadline)
                for client in CLIENTS
                for gateway in gateways
                for _ in range(WORKERS_PER_CLIENT_AND_GATEWAY)
            )
        )
        elapsed = time.monotonic() - started  # after the last answer

    allowed = allowance(elapsed)
    over = {client: max(0, counts[200] - allowed) for client, counts in statuses.items()}
    print(
        f"\n{elapsed:.2f}s, allowance {allowed} per client (burst + refill of the tightest tier); "
        + "; ".join(
            f"{client}: admitted {counts[200]} of {sum(counts.values())}, over-admission {over[client]}"
            for client, counts in statuses.items()
        )
    )
    assert errors == [], errors[:10]
    for client, counts in statuses.items():
        assert set(counts) <= {200, 429}, (client, counts)
        assert counts[429] > 0, f"{client} was never limited: the load did not reach the limit"
        # More than the burst alone: the buckets did refill during the run, so the rate part is measured.
        assert counts[200] > TIERS["fast"][0], (client, counts)
    assert over == {client: 0 for client in CLIENTS}
