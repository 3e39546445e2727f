"""The direct dispatcher of a real gateway process: proxied requests skip the Application, pages do not."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from tests.support import GatewayProcess, free_port, service, write_registry

pytestmark = pytest.mark.slow


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[tuple[str, bytes]]]]:
    seen: list[tuple[str, bytes]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.raw_path, await request.read()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def _raw(port: int, request: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        length = next(
            (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
            None,
        )
        body = await asyncio.wait_for(reader.readexactly(length) if length is not None else reader.read(), 5.0)
        return head, body
    finally:
        writer.close()


async def test_pages_proxied_routes_odd_targets_and_expect_continue(
    tmp_path: Path,
    gateway_process: Callable[..., GatewayProcess],
    upstream: tuple[str, list[tuple[str, bytes]]],
) -> None:
    url, seen = upstream
    registry = write_registry(tmp_path / "registry.yaml", {"users": service([url], "/api/v1/users")})
    gw = gateway_process(registry)

    head, body = await _raw(gw.port, b"GET /api/v1/users/me?x=1 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and orjson.loads(body) == {"ok": True}
    assert seen[-1] == ("/users/me?x=1", b"")

    # Pages render through the Application, however the target spells them.
    for target in (b"/dashboard", b"/x/../dashboard", b"/%64ashboard", b"/api/docs"):
        head, body = await _raw(gw.port, b"GET " + target + b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), (target, head)
        assert body.lstrip().startswith(b"<!DOCTYPE html>"), target

    # A target no route can take gets the envelope, not a router's plain-text answer.
    head, body = await _raw(gw.port, b"OPTIONS * HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert orjson.loads(body)["error"] == "Unsupported request target"

    # Expect: 100-continue: the interim answer comes before the body is sent, then the body is forwarded.
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(
            b"POST /api/v1/users/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)).startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    assert seen[-1] == ("/users/upload", b"hello")
