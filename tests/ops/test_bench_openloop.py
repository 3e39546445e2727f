"""The open-loop client of the benchmark (ops/bench/openloop.py) against real servers on loopback: a stall
is charged to every request it held up, and a dropped connection is an error, then replaced."""
from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.support import REPO

sys.path.insert(0, str(REPO / "ops" / "bench"))  # the bench's modules import one another as scripts do

import openloop  # noqa: E402


@pytest.fixture
async def stalling_server() -> AsyncIterator[int]:
    """Answers at once, except the 20th request, which it holds for half a second."""
    seen = 0

    async def answer(request: web.Request) -> web.Response:
        nonlocal seen
        seen += 1
        if seen == 20:
            await asyncio.sleep(0.5)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def test_requests_held_up_by_a_stall_are_timed_from_when_they_were_due(stalling_server: int) -> None:
    # One connection at 100 req/s: requests due during the 0.5 s stall wait for it. A closed-loop client
    # would record one slow request; from their due times, those due in its first 0.3 s took >= 0.2 s.
    client = openloop.Client(f"http://127.0.0.1:{stalling_server}/", [], rate=100, duration=1.0, warmup=0,
                             connections=1)
    result = await client.run(drain_timeout=5)
    assert result["requests"] == result["completed"] == 100
    assert result["errors"] == {"status": 0, "connection": 0, "timeout": 0}
    held_up = [value for value in client.stats.latencies if value >= 0.2]
    assert len(held_up) >= 25
    assert max(client.stats.latencies) >= 0.5
    assert result["send_lag_ms"]["max"] >= 200  # they left late, and that lateness is in their latency


@pytest.fixture
async def raw_server(request: pytest.FixtureRequest) -> AsyncIterator[int]:
    """A keep-alive HTTP/1.1 server that, at the 5th request, closes the connection ("drop") or never
    answers ("hang")."""
    seen = 0
    hung: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                seen += 1
                if seen == 5:
                    if request.param == "hang":
                        hung.append(writer)
                        return
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in hung:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize(
    ("raw_server", "completed", "errors"),
    [
        # The dropped request is an error; every later one goes out on a new connection.
        ("drop", 19, {"status": 0, "connection": 1, "timeout": 0}),
        # With one connection, the unanswered request holds up all later ones: each is a timeout, once.
        ("hang", 4, {"status": 0, "connection": 0, "timeout": 16}),
    ],
    ids=["dropped-connection", "unanswered-request"],
    indirect=["raw_server"],
)
async def test_failures_are_counted_once(raw_server: int, completed: int, errors: dict[str, int]) -> None:
    client = openloop.Client(f"http://127.0.0.1:{raw_server}/", ["X-Bench: 1"], rate=50, duration=0.4,
                             warmup=0, connections=1)
    result = await client.run(drain_timeout=0.3)
    assert result["requests"] == 20
    assert result["completed"] == completed
    assert result["errors"] == errors
