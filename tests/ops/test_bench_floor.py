"""The benchmark's floor proxy forwards a GET and writes the upstream's answer back (it is a reference row,
so what it measures must be a real round trip through the gateway's upstream pool)."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.support import REPO, free_port

pytestmark = pytest.mark.slow


Seen = list[tuple[str, str, str | None]]


@pytest.fixture
async def upstream(start_upstream: StartUpstream) -> tuple[str, Seen]:
    seen: Seen = []

    async def answer(request: web.Request) -> web.Response:
        seen.append((request.method, request.raw_path, request.headers.get("X-Probe")))
        return web.Response(status=201, body=b'{"ok":true}', content_type="application/json",
                            headers={"X-Upstream": "yes", "Connection": "keep-alive"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return await start_upstream(app), seen


async def test_floor_proxy_round_trips_through_the_pool(upstream: tuple[str, Seen]) -> None:
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
