"""The benchmark's floor proxy forwards a GET and writes the upstream's answer back (it is a reference row,
so what it measures must be a real round trip through the gateway's upstream pool)."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.support import REPO, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[tuple[str, str, str | None]]]]:
    seen: list[tuple[str, str, str | None]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append((request.method, request.raw_path, request.headers.get("X-Probe")))
        return web.Response(status=201, body=b'{"ok":true}', content_type="application/json",
                            headers={"X-Upstream": "yes", "Connection": "keep-alive"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_floor_proxy_round_trips_through_the_pool(upstream: tuple[str, list[tuple[str, str, str | None]]]) -> None:
    url, seen = upstream
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "ops/bench/floor_proxy.py"), "--port", str(port),
                             "--upstream", url], stderr=subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/api/v1/users/1?x=2",
                                           headers={"X-Probe": "p"}) as reply:
                        body = await reply.read()
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the floor proxy did not listen within 5 s")
            assert reply.status == 201
            assert body == b'{"ok":true}'
            assert reply.headers["X-Upstream"] == "yes"
            assert reply.headers["Content-Type"] == "application/json"
            # Two more on the same keep-alive connection: the floor keeps connections open as wrk expects.
            for _ in range(2):
                async with session.get(f"http://127.0.0.1:{port}/again") as again:
                    assert again.status == 201 and await again.read() == b'{"ok":true}'
        assert seen == [("GET", "/api/v1/users/1?x=2", "p"), ("GET", "/again", None), ("GET", "/again", None)]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # also closes the stderr pipe
