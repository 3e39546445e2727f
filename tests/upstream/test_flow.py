"""Flow control: a large response read slowly stays bounded in memory and pushes back on the server."""
from __future__ import annotations

import asyncio

from aiohttp import web

from gateway.upstream import UpstreamPool
from gateway.upstream.response import BUFFER_LIMIT
from tests.conftest import StartUpstream

SIZE = 20 * 1024 * 1024
PIECE = 64 * 1024
# One socket read (asyncio reads at most 256 KiB) can land on top of a buffer just under the limit.
BOUND = BUFFER_LIMIT + 256 * 1024


async def test_large_body_is_read_with_bounded_buffer_and_backpressure(
    pool: UpstreamPool, start_upstream: StartUpstream
) -> None:
    written = 0

    async def stream(request: web.Request) -> web.StreamResponse:
        nonlocal written
        response = web.StreamResponse(headers={"Content-Length": str(SIZE)})
        await response.prepare(request)
        piece = bytes(range(256)) * (PIECE // 256)
        for _ in range(SIZE // PIECE):
            await response.write(piece)
            written += PIECE
        return response

    app = web.Application()
    app.router.add_get("/", stream)
    base = await start_upstream(app)
    response = await pool.request(base, "GET", "/", [], None, connect_timeout=2.0, read_timeout=5.0, total_timeout=30.0)
    assert response.content_length == SIZE

    await asyncio.sleep(0.3)  # nobody reads: the server must be stuck well short of the end
    assert response.buffered <= BOUND
    assert written < SIZE // 2

    received = 0
    largest = 0
    while chunk := await response.content.readany():
        assert chunk[0] == received % 256  # byte i of the body is i % 256: nothing lost or reordered
        largest = max(largest, len(chunk))
        received += len(chunk)
        await asyncio.sleep(0)  # a reader slower than loopback: the buffer would grow without pausing
        assert response.buffered <= BOUND
    assert received == SIZE
    assert largest <= BOUND
    assert response.content.at_eof()
    assert pool.stats() == {"open": 1, "idle": 1, "in_use": 0, "waiters": 0}
