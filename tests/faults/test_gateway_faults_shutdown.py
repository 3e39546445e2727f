"""SIGTERM to a real gateway process in the middle of a burst of slow requests: every request it accepted
is answered in full; the others are refused at the connection, never half served."""
from __future__ import annotations

import asyncio
import collections
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.process.conftest import _clean_gateway_environment  # noqa: F401 - autouse: a clean environment
from tests.process.helpers import json_lines, wait_exit, wait_until
from tests.support import GatewayProcess, service, write_registry

pytestmark = pytest.mark.slow

WORKERS = 16
UPSTREAM_DELAY = 0.4
PREFIX = "/api/v1/slow"


def _body_for(path: str) -> bytes:
    """A ~20 KB body that differs per request."""
    return (path.encode() + b"|") * (20_000 // (len(path) + 1))


@dataclass
class SlowUpstream:
    """Answers every request after UPSTREAM_DELAY; remembers the path of every request that reached it."""

    arrived: set[str] = field(default_factory=set)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived.add(request.path)
        await asyncio.sleep(UPSTREAM_DELAY)
        return web.Response(body=_body_for(request.path), content_type="application/octet-stream")


@dataclass
class Burst:
    """Workers sending slow GETs back to back until the gateway refuses their connection.

    Half of them keep their connection alive between requests, half open a new one for each."""

    base: str
    outcomes: dict[str, str] = field(default_factory=dict)
    """Upstream path -> "ok", or what went wrong."""

    async def run(self, index: int) -> None:
        keep_alive = index % 2 == 0
        connector = aiohttp.TCPConnector(limit=1, force_close=not keep_alive)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15)) as session:
            await asyncio.sleep(index * UPSTREAM_DELAY / WORKERS)  # spread the arrivals over time
            count = 0
            while True:
                count += 1
                path = f"/slow/w{index}-{count}"
                try:
                    async with session.get(self.base + "/api/v1" + path) as response:
                        body = await response.read()
                        ok = response.status == 200 and body == _body_for(path)
                        self.outcomes[path] = "ok" if ok else f"status {response.status}, {len(body)} bytes"
                except aiohttp.ClientConnectorError:
                    self.outcomes[path] = "refused"
                    return  # the listener is closed: the burst is over for this worker
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    self.outcomes[path] = exc.__class__.__name__


@pytest.mark.parametrize("drain_delay", ["0s", "500ms"], ids=["no-drain-delay", "drain-delay"])
async def test_sigterm_during_a_burst_fails_no_accepted_request(
    tmp_path: Path,
    start_upstream: StartUpstream,
    gateway_process: Callable[..., GatewayProcess],
    drain_delay: str,
) -> None:
    upstream = SlowUpstream()
    base = await start_upstream(upstream.app())
    registry = write_registry(
        tmp_path / "registry.yaml", {"slow": service([base], {"prefix": PREFIX, "timeouts": {"read": "10s"}})}
    )
    gateway = gateway_process(registry, env={"KADAI_DRAIN_TIMEOUT": "10s", "KADAI_DRAIN_DELAY": drain_delay})
    burst = Burst(gateway.url)
    workers = [asyncio.create_task(burst.run(index)) for index in range(WORKERS)]
    try:
        await wait_until(lambda: len(upstream.arrived) >= 2 * WORKERS, 10.0, "the burst to reach steady state")
        gateway.signal(signal.SIGTERM)
        code, _ = await wait_exit(gateway, 15.0)
        await asyncio.wait_for(asyncio.gather(*workers), 15.0)
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    assert code == 0, gateway.output()[-3000:]

    logged = {
        r["path"].removeprefix("/api/v1"): r["status"]
        for r in json_lines(gateway.output())
        if r.get("path", "").startswith(PREFIX)
    }
    accepted = upstream.arrived | set(logged)
    failed_accepted = {path: burst.outcomes.get(path, "no outcome") for path in accepted}
    failed_accepted = {path: outcome for path, outcome in failed_accepted.items() if outcome != "ok"}
    not_accepted = collections.Counter(
        outcome for path, outcome in burst.outcomes.items() if path not in accepted
    )
    print(
        f"\n{len(burst.outcomes)} requests: {len(accepted)} accepted and answered in full,"
        f" {sum(not_accepted.values())} not accepted ({dict(not_accepted)})"
    )
    assert failed_accepted == {}, failed_accepted
    assert set(logged.values()) == {200}
    # Whatever was not accepted failed at the connection, with no response at all: never a half-served one.
    assert set(not_accepted) <= {"refused", "ServerDisconnectedError", "ClientOSError"}, not_accepted
    # The burst went on past the signal: every worker saw its connection refused at the end.
    assert not_accepted["refused"] == WORKERS
    assert all(outcome == "ok" for path, outcome in burst.outcomes.items() if path in accepted)
