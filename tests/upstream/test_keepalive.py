"""Keep-alive: which connections go back to the pool, LIFO reuse, idle connections closed by either side."""
from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from gateway.upstream import UpstreamPool, UpstreamResetError
from tests.conftest import StartUpstream
from tests.upstream.conftest import TIMEOUTS, StartRaw, read_request, until



def peer_port_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=str(request.transport.get_extra_info("peername")[1]))  # type: ignore[union-attr]

    app = web.Application()
    app.router.add_route("*", "/", handler)
    return app


async def test_sequential_requests_share_one_connection(pool: UpstreamPool, start_upstream: StartUpstream) -> None:
    base = await start_upstream(peer_port_app())
    ports = set()
    for method in ("GET", "POST", "HEAD", "GET", "PUT"):
        response = await pool.request(base, method, "/", [], b"x" if method == "PUT" else None, **TIMEOUTS)
        ports.add(await response.read() or b"head")
        response.release()
    ports.discard(b"head")
    assert len(ports) == 1
    assert pool.stats() == {"open": 1, "idle": 1, "in_use": 0, "waiters": 0}


async def test_idle_connections_are_reused_last_in_first_out(pool: UpstreamPool, raw_server: StartRaw) -> None:
    finish = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = str(writer.get_extra_info("peername")[1]).encode()
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(port), port))
            await finish.wait()
            writer.write(b"0\r\n\r\n")

    raw = await raw_server(handler)
    first, second = [await pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS) for _ in range(2)]
    assert pool.stats()["in_use"] == 2
    finish.set()
    ports = [await first.read(), await second.read()]  # the second goes back last: top of the stack
    assert ports[0] != ports[1]
    again = await pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS)
    assert await again.readany() == ports[1]


NOT_REUSED = {
    "connection-close": ("GET", b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"),
    "http-1.0": ("GET", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    "close-among-tokens": ("GET", b"HTTP/1.1 200 OK\r\nConnection: x-custom, close\r\nContent-Length: 2\r\n\r\nok"),
    "head-connection-close": ("HEAD", b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 9\r\n\r\n"),
    "head-http-1.0": ("HEAD", b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\n"),
    "head-with-a-body": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"),
    "204-then-stray-body": ("GET", b"HTTP/1.1 204 No Content\r\n\r\nstray body"),
}
REUSED = {
    "http-1.0-keep-alive": ("GET", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"),
    "http-1.1": ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    "head-http-1.1": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"),
    "head-http-1.0-keep-alive": ("HEAD", b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 9\r\n\r\n"),
}


@pytest.mark.parametrize(
    ("method", "raw_response", "reusable"),
    [*((*r, False) for r in NOT_REUSED.values()), *((*r, True) for r in REUSED.values())],
    ids=[*NOT_REUSED.keys(), *REUSED.keys()],
)
async def test_which_responses_keep_the_connection(
    method: str, raw_response: bytes, reusable: bool, pool: UpstreamPool, raw_server: StartRaw
) -> None:
    """The server never closes: a connection the pool does not reuse is one it dropped itself."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(raw_response)

    raw = await raw_server(handler)
    for _ in range(2):
        response = await pool.request(raw.url, method, "/", [], None, **TIMEOUTS)
        await response.read()
        response.release()
    assert len(raw.peers) == (1 if reusable else 2)
    assert pool.stats()["idle"] == (1 if reusable else 0)


async def test_idle_connection_closed_by_the_server_is_dropped(pool: UpstreamPool, raw_server: StartRaw) -> None:
    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    raw = await raw_server(once_then_close)
    response = await pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS)
    assert await response.read() == b"ok"
    await until(lambda: pool.stats()["open"] == 0, "dropped after the server closed it")
    response = await pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS)
    assert await response.read() == b"ok"
    assert len(raw.peers) == 2


async def test_reused_connection_reset_before_any_response_byte(pool: UpstreamPool, raw_server: StartRaw) -> None:
    """The keep-alive race: the server takes the request on an idle connection and closes without a word."""

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await read_request(reader)

    raw = await raw_server(answer_once)
    response = await pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS)
    assert await response.read() == b"ok"
    with pytest.raises(UpstreamResetError) as caught:
        await pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS)
    assert caught.value.reused is True
    assert caught.value.sent_nothing is False
    assert pool.stats()["open"] == 0


async def test_reset_mid_body_on_a_reused_connection_is_not_retryable(
    pool: UpstreamPool, raw_server: StartRaw
) -> None:
    async def cut_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart")
        await writer.drain()

    raw = await raw_server(cut_second)
    await (await pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS)).read()
    response = await pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS)
    with pytest.raises(UpstreamResetError) as caught:
        await response.read()
    assert caught.value.reused is False  # part of the response came: the request was processed


async def test_idle_timeout_closes_idle_connections(raw_server: StartRaw) -> None:
    server_saw_eof = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.read()
        server_saw_eof.set()

    raw = await raw_server(handler)
    pool = UpstreamPool(idle_timeout=0.1)
    try:
        # No read or total timeout: the idle timeout alone must close it.
        response = await pool.request(
            raw.url, "GET", "/", [], None, connect_timeout=2.0, read_timeout=None, total_timeout=None
        )
        assert await response.read() == b"ok"
        assert pool.stats()["idle"] == 1
        async with asyncio.timeout(3):
            await server_saw_eof.wait()
        assert pool.stats() == {"open": 0, "idle": 0, "in_use": 0, "waiters": 0}
    finally:
        await pool.close()


async def test_close_closes_idle_connections(raw_server: StartRaw) -> None:
    eofs = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal eofs
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.read()
        eofs += 1

    raw = await raw_server(handler)
    pool = UpstreamPool()
    # Concurrent, so that each opens its own connection.
    responses = await asyncio.gather(*(pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS) for _ in range(3)))
    for response in responses:
        await response.read()
    assert pool.stats()["idle"] == 3
    await pool.close()
    assert pool.stats()["open"] == 0
    await until(lambda: eofs == 3, "closed on the server's side")


async def test_release_after_the_body_does_not_touch_the_reused_connection(
    pool: UpstreamPool, start_upstream: StartUpstream
) -> None:
    base = await start_upstream(peer_port_app())
    first = await pool.request(base, "GET", "/", [], None, **TIMEOUTS)
    port = await first.read()
    second = await pool.request(base, "GET", "/", [], None, **TIMEOUTS)  # same connection, body unread
    first.close()  # late: must not close the connection the second exchange now uses
    assert await second.read() == port
