"""The connection handler of gateway/protocol.py in-process (fast, so `-m "not slow"` covers it too): the
header deadline, the versions it refuses, and KADAI_HEADER_TIMEOUT. The same behaviour against real
gateway processes, with both parsers, is in test_bad_input.py."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from gateway.config.errors import ConfigError
from gateway.config.settings import DEFAULT_HEADER_TIMEOUT, load_settings
from gateway.protocol import use_envelope_errors
from tests.integration.helpers import assert_error_envelope, parse_response

DEADLINE = 0.4
Serve = Callable[[float], Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """An aiohttp server with the envelope handler and the given header deadline; returns its port."""
    runners: list[web.AppRunner] = []

    async def start(header_timeout: float) -> int:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(text=f"read {len(await request.read())}")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", hello)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        runners.append(runner)
        use_envelope_errors(runner, header_timeout=header_timeout)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    yield start
    for runner in runners:
        await runner.cleanup()


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_partial_headers_get_a_408_and_a_close_at_the_deadline(serve: Serve) -> None:
    port = await serve(DEADLINE)
    reader, writer = await _open(port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\nX-Slow: ")  # and nothing more
    try:
        answer = await asyncio.wait_for(reader.read(), DEADLINE + 5)
    finally:
        writer.close()
    response = parse_response(answer)
    assert response.status == 408
    assert_error_envelope(response.json(), 408, response.headers["X-Request-ID"])
    assert response.json()["error"] == f"Request Timeout: the request headers did not arrive within {DEADLINE:g}s"


async def test_a_silent_connection_is_closed_without_an_answer(serve: Serve) -> None:
    port = await serve(DEADLINE)
    reader, writer = await _open(port)
    try:
        assert await asyncio.wait_for(reader.read(), DEADLINE + 5) == b""
    finally:
        writer.close()


@pytest.mark.slow
async def test_a_kept_alive_connection_may_idle_past_the_deadline_and_a_slow_body_is_not_cut(serve: Serve) -> None:
    port = await serve(DEADLINE)
    reader, writer = await _open(port)
    try:
        for pause in (0.0, DEADLINE * 2):  # idle between the two requests
            await asyncio.sleep(pause)
            writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n")
            for byte in b"abc":  # the body takes longer than the deadline
                await asyncio.sleep(DEADLINE * 0.6)
                writer.write(bytes([byte]))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(int(parse_response(head).headers["Content-Length"])) == b"read 3"
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /x HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        (b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
    ],
    ids=["http-2.0", "chunked-http-1.0"],
)
async def test_versions_it_cannot_serve_are_refused(serve: Serve, request_bytes: bytes, status: int) -> None:
    port = await serve(DEADLINE)
    reader, writer = await _open(port)
    writer.write(request_bytes)
    try:
        response = parse_response(await asyncio.wait_for(reader.read(), 5))
    finally:
        writer.close()
    assert response.status == status
    assert_error_envelope(response.json(), status, response.headers["X-Request-ID"])


async def test_http_1_0_is_served(serve: Serve) -> None:
    port = await serve(DEADLINE)
    reader, writer = await _open(port)
    writer.write(b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
    try:
        response = parse_response(await asyncio.wait_for(reader.read(), 5))
    finally:
        writer.close()
    assert (response.status, response.body) == (200, b"read 2")


def test_the_deadline_comes_from_kadai_header_timeout() -> None:
    assert load_settings({}).header_timeout == DEFAULT_HEADER_TIMEOUT == 10.0
    assert load_settings({"KADAI_HEADER_TIMEOUT": "2500ms"}).header_timeout == 2.5
    for bad in ("0s", "soon"):
        with pytest.raises(ConfigError, match="KADAI_HEADER_TIMEOUT"):
            load_settings({"KADAI_HEADER_TIMEOUT": bad})
    with pytest.raises(ValueError, match="header_timeout"):
        use_envelope_errors(web.AppRunner(web.Application()), header_timeout=0)
