"""Fixtures of the upstream pool tests: a pool, and raw loopback servers that write exact bytes."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypedDict

import pytest

from gateway.upstream import UpstreamPool

class Timeouts(TypedDict, total=False):
    connect_timeout: float | None
    read_timeout: float | None
    total_timeout: float | None


# Generous: these tests are about behaviour, never about speed.
TIMEOUTS: Timeouts = {"connect_timeout": 2.0, "read_timeout": 2.0, "total_timeout": 5.0}

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    """A loopback server whose handler speaks raw bytes; ``peers`` lists each connection's client port."""

    url: str = ""
    peers: list[int] = field(default_factory=list)


StartRaw = Callable[[RawHandler], Awaitable[RawServer]]


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(max_per_origin=8, idle_timeout=30.0)
    yield pool
    await pool.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[StartRaw]:
    """Start asyncio servers on free 127.0.0.1 ports; handlers still running at teardown are cancelled."""
    servers: list[asyncio.Server] = []
    tasks: set[asyncio.Task[object]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: RawHandler) -> RawServer:
        raw = RawServer()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            writers.append(writer)
            raw.peers.append(writer.get_extra_info("peername")[1])
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass  # the client hung up, or teardown cancelled a handler (a cancelled one gets logged)
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        raw.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return raw

    yield start
    for server in servers:
        server.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for writer in writers:
        writer.close()
    for server in servers:
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request: its head (up to the blank line) and its body, by Content-Length or chunked."""
    head = await reader.readuntil(b"\r\n\r\n")
    lowered = head.lower()
    if b"transfer-encoding: chunked" in lowered:
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")  # the empty line after the last chunk (no trailers)
        return head, bytes(body)
    for line in lowered.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return head, await reader.readexactly(int(line.split(b":")[1]))
    return head, b""


def answer(*responses: bytes, keep_open: bool = True) -> RawHandler:
    """A handler that reads one request per response and writes that response's exact bytes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            await read_request(reader)
            writer.write(response)
            await writer.drain()
        if keep_open:
            await reader.read()  # until the client hangs up

    return handler


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop run until ``condition()`` holds; bounded, so a broken pool fails instead of hanging."""
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"still not {what}")
