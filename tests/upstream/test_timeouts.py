"""Connect, read and total timeouts, and a refused connection."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.upstream import UpstreamConnectError, UpstreamError, UpstreamPool, UpstreamTimeout
from tests.support import free_port
from tests.upstream.conftest import StartRaw, read_request


async def test_refused_port_is_a_connect_error(pool: UpstreamPool) -> None:
    with pytest.raises(UpstreamConnectError):
        await pool.request(
            f"http://127.0.0.1:{free_port()}", "GET", "/", [], None,
            connect_timeout=2.0, read_timeout=2.0, total_timeout=5.0,
        )
    assert pool.stats() == {"open": 0, "idle": 0, "in_use": 0, "waiters": 0}


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts, reads the request, never answers."""
    await read_request(reader)
    await reader.read()


async def test_no_answer_is_a_read_timeout(pool: UpstreamPool, raw_server: StartRaw) -> None:
    raw = await raw_server(silent)
    with pytest.raises(UpstreamTimeout) as caught:
        await pool.request(raw.url, "GET", "/", [], None, connect_timeout=2.0, read_timeout=0.2, total_timeout=10.0)
    assert caught.value.phase == "read"
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, UpstreamError)
    assert pool.stats()["open"] == 0


async def test_a_stall_mid_body_is_a_read_timeout(pool: UpstreamPool, raw_server: StartRaw) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await reader.read()

    raw = await raw_server(stall)
    response = await pool.request(
        raw.url, "GET", "/", [], None, connect_timeout=2.0, read_timeout=0.2, total_timeout=10.0
    )
    assert await response.content.readany() == b"abc"
    with pytest.raises(UpstreamTimeout) as caught:
        await response.content.readany()
    assert caught.value.phase == "read"
    assert pool.stats()["open"] == 0


async def test_a_trickle_is_cut_by_the_total_timeout(pool: UpstreamPool, raw_server: StartRaw) -> None:
    """Every byte comes well within the read timeout; the whole exchange still has its bound."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):
            writer.write(b"x")
            await asyncio.sleep(0.02)

    raw = await raw_server(trickle)
    response = await pool.request(
        raw.url, "GET", "/", [], None, connect_timeout=2.0, read_timeout=1.0, total_timeout=0.4
    )
    with pytest.raises(UpstreamTimeout) as caught:
        await response.read()
    assert caught.value.phase == "total"
    assert pool.stats()["open"] == 0


async def test_a_stalled_upload_is_cut_by_the_total_timeout(pool: UpstreamPool, raw_server: StartRaw) -> None:
    """The caller's body iterator waits forever (a client that stopped sending): only the total bound ends it."""
    raw = await raw_server(silent)
    stuck = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"start"
        await stuck.wait()
        yield b"never"

    with pytest.raises(UpstreamTimeout) as caught:
        await pool.request(raw.url, "POST", "/", [], body(), connect_timeout=2.0, read_timeout=0.1, total_timeout=0.3)
    assert caught.value.phase == "total"  # not "read": the upstream owes nothing until the body is through
    assert pool.stats()["open"] == 0
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the pool's own cancellation was taken back


async def test_read_timeout_does_not_run_while_the_reader_holds_the_socket_paused(
    pool: UpstreamPool, raw_server: StartRaw
) -> None:
    """A slow reader is not the upstream's fault: with reading paused the read clock stops."""
    size = 4 * 1024 * 1024

    async def blast(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"x" * size)
        await writer.drain()
        await reader.read()

    raw = await raw_server(blast)
    response = await pool.request(
        raw.url, "GET", "/", [], None, connect_timeout=2.0, read_timeout=0.1, total_timeout=10.0
    )
    await asyncio.sleep(0.4)  # the buffer fills, reading pauses; well past the read timeout
    assert len(await response.read()) == size
