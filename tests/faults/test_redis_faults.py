"""The rate limiter of a real gateway process under load while its Redis (a private redis-server) is paused
(CLIENT PAUSE), stopped (SIGSTOP) and killed then restarted with an empty script cache: it degrades as the
route says (fail open: the request goes through; fail closed: 503), never answers another 5xx, and recovers."""
from __future__ import annotations

import asyncio
import collections
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis

from gateway.ratelimit.redis_backend import SCRIPT_SHA
from tests.conftest import StartUpstream
from tests.integration.test_rate_limit import RedisServer, limits, private_redis  # noqa: F401 - a fixture
from tests.process.conftest import _clean_gateway_environment  # noqa: F401 - autouse: a clean environment
from tests.process.helpers import json_lines, wait_until
from tests.support import GatewayProcess, service, write_registry

pytestmark = [pytest.mark.slow, pytest.mark.redis]

WORKERS = 6
LIMITER = {"timeout": "200ms", "backoff": "50ms", "backoff_max": "200ms"}
"""A timeout a loaded two-core machine meets while Redis is healthy; short back-offs, so recovery is quick."""


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@dataclass
class Load:
    """Workers sending GETs back to back; every answer is filed under the phase it arrived in."""

    session: aiohttp.ClientSession
    url: str
    fail_open: bool
    phase: str = "healthy"
    seen: collections.defaultdict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    wrong: list[str] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, index: int) -> None:
        count = 0
        while not self.stopping.is_set():
            count += 1
            try:
                async with self.session.get(f"{self.url}/api/v1/echo/w{index}-{count}") as response:
                    self.seen[self.phase][await self._outcome(response)] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self.wrong.append(f"{self.phase}: {exc!r}")
            await asyncio.sleep(0.005)

    async def _outcome(self, response: aiohttp.ClientResponse) -> str:
        """limited (Redis decided), skipped (failed open), refused (failed closed), or what was wrong."""
        body: Any = await response.json()
        if response.status == 200 and body == {"ok": True}:
            return "limited" if "RateLimit-Limit" in response.headers else "skipped"
        if (
            response.status == 503
            and not self.fail_open
            and body["details"] == {"reason": "rateLimiterUnavailable"}
            and body["statusCode"] == 503
            and response.headers.get("Retry-After") == "1"
        ):
            return "refused"
        self.wrong.append(f"{self.phase}: {response.status} {body}")
        return "wrong"

    def count(self, outcome: str) -> int:
        return self.seen[self.phase][outcome]

    def reached(self, outcome: str, count: int) -> bool:
        """Whether `count` answers of this phase were `outcome`; fails at once on a wrong answer."""
        assert not self.wrong, self.wrong[:10]
        return self.count(outcome) >= count


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
async def test_the_limiter_degrades_as_configured_through_redis_faults_and_recovers(
    tmp_path: Path,
    start_upstream: StartUpstream,
    gateway_process: Callable[..., GatewayProcess],
    private_redis: RedisServer,
    fail_open: bool,
) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _ok)
    base = await start_upstream(app)
    settings = {**LIMITER, "fail_open": fail_open}
    registry = write_registry(
        tmp_path / "registry.yaml",
        {
            "echo": service(
                [base],
                {"prefix": "/api/v1/echo", "rate_limit": limits({"load": (1_000_000, "1h")}, **settings)},
                {"prefix": "/api/v1/tight", "rate_limit": limits({"tight": (3, "1h")}, **settings)},
            )
        },
    )
    gateway = gateway_process(registry, env={"REDIS_URL": private_redis.url})
    degraded = "skipped" if fail_open else "refused"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        load = Load(session, gateway.url, fail_open)

        async def limiter_status() -> str:
            async with session.get(f"{gateway.url}/api/v1/health/detailed") as response:
                return str((await response.json())["data"]["components"]["rateLimiter"]["status"])

        async def recovered() -> bool:
            """Redis decides again: the limiter says ok and the latest answers carry the limit headers."""
            before = load.count("limited")
            if await limiter_status() != "ok":
                return False
            await asyncio.sleep(0.1)
            return load.reached("limited", before + 5)

        async def fault(name: str, start: Callable[[], Any], end: Callable[[], Any]) -> None:
            load.phase = name
            result = start()
            if asyncio.iscoroutine(result):
                await result
            await wait_until(lambda: load.reached(degraded, 5), 10.0, f"requests to be {degraded} ({name})")
            result = end()
            if asyncio.iscoroutine(result):
                await result
            load.phase = f"after {name}"
            await wait_until(recovered, 10.0, f"the limiter to recover ({name})")

        async with Redis.from_url(private_redis.url) as admin:

            async def pause() -> None:
                await admin.execute_command("CLIENT", "PAUSE", "1000", "ALL")

            async def unpause() -> None:
                await admin.execute_command("CLIENT", "UNPAUSE")

            workers = [asyncio.create_task(load.worker(index)) for index in range(WORKERS)]
            try:
                await wait_until(lambda: load.reached("limited", 30), 10.0, "load with a healthy Redis")
                assert private_redis.proc is not None
                await fault("paused", pause, unpause)
                await fault(
                    "stopped",
                    lambda: private_redis.proc.send_signal(signal.SIGSTOP),  # type: ignore[union-attr]
                    lambda: private_redis.proc.send_signal(signal.SIGCONT),  # type: ignore[union-attr]
                )
            finally:
                if private_redis.proc is not None:
                    private_redis.proc.send_signal(signal.SIGCONT)
        try:
            await fault("killed", private_redis.kill, private_redis.start)
        finally:
            load.stopping.set()
            await asyncio.gather(*workers)

        # The restarted Redis has neither buckets nor the script: the gateway loaded it again and enforces.
        async with Redis.from_url(private_redis.url) as admin:
            assert await admin.script_exists(SCRIPT_SHA) == [True]
        tight = []
        for index in range(4):
            async with session.get(f"{gateway.url}/api/v1/tight/{index}") as response:
                await response.read()
                tight.append(response.status)
        assert tight == [200, 200, 200, 429]
        assert await limiter_status() == "ok"

    print(f"\nfail_open={fail_open}: " + "; ".join(f"{phase}: {dict(counts)}" for phase, counts in load.seen.items()))
    assert load.wrong == [], load.wrong[:10]
    for phase in ("paused", "stopped", "killed"):
        assert load.seen[phase][degraded] >= 5, (phase, load.seen[phase])
    records = json_lines(gateway.output())
    down = [r for r in records if r.get("message", "").startswith("rate limiter backend unavailable")]
    back = [r for r in records if r.get("message") == "rate limiter backend answers again"]
    assert len(down) == len(back) >= 3, (len(down), len(back))
    assert {r["level"] for r in down} == {"warning"}
