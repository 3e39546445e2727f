"""Graceful shutdown of a real gateway process: SIGTERM/SIGINT drain in-flight requests, then exit 0."""
from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.process.helpers import connect_refused, json_lines, wait_exit, wait_until
from tests.support import GatewayProcess, service, write_registry

pytestmark = pytest.mark.slow

IN_FLIGHT = 20
UPSTREAM_DELAY = 1.5


def _body_for(path: str) -> bytes:
    """A deterministic ~100 KB body that differs per request path."""
    return (path.encode() + b"|") * (100_000 // (len(path) + 1))


class SlowUpstream:
    """Answers every GET after a delay, counting arrivals and completions."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.arrived = 0
        self.completed = 0
        self.release = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived += 1
        try:
            await asyncio.wait_for(self.release.wait(), self.delay)
        except asyncio.TimeoutError:
            pass
        self.completed += 1
        return web.Response(body=_body_for(request.path), content_type="application/octet-stream")


async def _fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as response:
        return response.status, await response.read()


async def _start(
    tmp_path: Path,
    start_upstream: StartUpstream,
    gateway_process: Callable[..., GatewayProcess],
    upstream: SlowUpstream,
    drain: str,
) -> GatewayProcess:
    base = await start_upstream(upstream.app())
    registry = write_registry(
        tmp_path / "registry.yaml",
        {"slow": service([base], {"prefix": "/api/v1/slow", "timeouts": {"read": "30s", "total": "60s"}})},
    )
    return gateway_process(registry, env={"KADAI_DRAIN_TIMEOUT": drain})


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_drains_in_flight_requests_then_exits_0(
    tmp_path: Path,
    start_upstream: StartUpstream,
    gateway_process: Callable[..., GatewayProcess],
    signum: signal.Signals,
) -> None:
    drain_timeout = 10.0
    upstream = SlowUpstream(UPSTREAM_DELAY)
    gw = await _start(tmp_path, start_upstream, gateway_process, upstream, f"{drain_timeout:g}s")
    paths = [f"/api/v1/slow/item/{i}" for i in range(IN_FLIGHT)]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=IN_FLIGHT * 2)) as session:
        tasks = [asyncio.create_task(_fetch(session, gw.url + path)) for path in paths]
        try:
            await wait_until(lambda: upstream.arrived == IN_FLIGHT, 5.0, "all requests to reach the upstream")
            await asyncio.sleep(0.3)
            assert upstream.completed == 0 and not any(task.done() for task in tasks), "not in flight any more"
            gw.signal(signum)
            signalled = time.monotonic()

            await asyncio.sleep(0.2)
            assert await connect_refused(gw.port), "a new connection was accepted after the signal"
            assert not any(task.done() for task in tasks), "a request finished before its upstream answered"

            results = await asyncio.wait_for(asyncio.gather(*tasks), drain_timeout)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    for path, (status, body) in zip(paths, results, strict=True):
        assert status == 200, (path, status, body[:200])
        expected = _body_for(path.removeprefix("/api/v1"))
        assert body == expected, f"{path}: body of {len(body)} bytes, not the upstream's {len(expected)}"
    code, _ = await wait_exit(gw, drain_timeout)
    exited_after = time.monotonic() - signalled
    assert code == 0, gw.output()[-3000:]
    # It waited for the requests (they had ~1.2 s to go) and no longer than that plus a margin.
    assert 0.5 < exited_after < UPSTREAM_DELAY + 3.0, f"exited {exited_after:.2f}s after the signal"

    records = json_lines(gw.output())
    messages = [r["message"] for r in records]
    assert "shutting down: draining in-flight requests" in messages
    assert messages[-1] == "gateway stopped"
    served = [r for r in records if r.get("path", "").startswith("/api/v1/slow/item/")]
    assert sorted(r["path"] for r in served) == sorted(paths)
    assert {r["status"] for r in served} == {200}
    assert all("failure" not in r for r in served)


async def test_drain_is_bounded_by_kadai_drain_timeout(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    upstream = SlowUpstream(10.0)
    gw = await _start(tmp_path, start_upstream, gateway_process, upstream, "1s")
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(_fetch(session, f"{gw.url}/api/v1/slow/stuck/{i}")) for i in range(3)]
        try:
            await wait_until(lambda: upstream.arrived == 3, 5.0, "the requests to reach the upstream")
            gw.signal(signal.SIGTERM)
            code, waited = await wait_exit(gw, 8.0)
            completed_when_gateway_exited = upstream.completed
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5.0)
        finally:
            upstream.release.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    assert code == 0, gw.output()[-3000:]
    assert 0.8 <= waited <= 4.0, f"exited {waited:.2f}s after SIGTERM with a 1s drain timeout"
    assert completed_when_gateway_exited == 0, "the upstream answered: the drain was not cut short"
    for outcome in outcomes:
        # Cut off: the client must not be handed a complete-looking 200.
        assert isinstance(outcome, aiohttp.ClientError), outcome


async def test_idle_keep_alive_connection_does_not_delay_exit(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    upstream = SlowUpstream(0.0)
    gw = await _start(tmp_path, start_upstream, gateway_process, upstream, "10s")
    async with aiohttp.ClientSession() as session:
        status, body = await _fetch(session, f"{gw.url}/api/v1/slow/once")
        assert status == 200 and body == _body_for("/slow/once")
        # The session now holds an idle keep-alive connection to the gateway.
        gw.signal(signal.SIGTERM)
        code, waited = await wait_exit(gw, 5.0)
    assert code == 0
    assert waited < 2.0, f"an idle keep-alive connection held the exit for {waited:.2f}s"


async def test_drain_delay_reports_draining_while_still_serving(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    """With KADAI_DRAIN_DELAY, health says 503 "draining" and traffic is still served, then the listener closes."""
    upstream = SlowUpstream(0.0)
    base = await start_upstream(upstream.app())
    registry = write_registry(tmp_path / "registry.yaml", {"slow": service([base], "/api/v1/slow")})
    gw = gateway_process(registry, env={"KADAI_DRAIN_DELAY": "1500ms", "KADAI_DRAIN_TIMEOUT": "5s"})
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/api/v1/health") as before:
            assert before.status == 200
        gw.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        async with session.get(f"{gw.url}/api/v1/health") as health:
            assert health.status == 503
            assert (await health.json())["data"]["status"] == "draining"
        async with session.get(f"{gw.url}/api/v1/slow/during-delay") as proxied:
            assert proxied.status == 200
    code, waited = await wait_exit(gw, 10.0)
    assert code == 0
    assert 1.0 <= waited + 0.3 <= 6.0, f"exited {waited + 0.3:.2f}s after the signal"
