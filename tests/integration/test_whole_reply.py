"""Small upstream bodies go to the client in one write (gateway/whole_reply.py), with the header rules of
aiohttp's own response writer: keep-alive as the client asked, Content-Type and Date defaults, header
bytes passed through exactly."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from gateway.whole_reply import header_block
from tests.integration.helpers import Client, GatewayClient, StartUpstream, raw_exchange, users_registry
from tests.integration.test_reply_edges import raw_upstream


async def _hello(request: web.Request) -> web.Response:
    return web.Response(body=b'{"ok":true}', content_type="application/json")


@pytest.fixture
async def client(registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient) -> Client:
    """The gateway in front of an instance answering every GET with an 11-byte JSON body."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", _hello)
    base = await start_upstream(app)
    return await gateway_client(users_registry(registry_path, base))


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_http_1_0_without_keep_alive_is_answered_and_closed(client: Client) -> None:
    response = await raw_exchange(client, b"GET /api/v1/users/a HTTP/1.0\r\nHost: gw\r\n\r\n")
    assert response.status == 200
    assert response.body == b'{"ok":true}'
    assert "Connection" not in response.headers  # HTTP/1.0 closes by default; raw_exchange read to EOF


async def test_http_1_0_keep_alive_is_kept_and_said(client: Client) -> None:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        for path in (b"/api/v1/users/a", b"/api/v1/users/b"):
            writer.write(b"GET " + path + b" HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n")
            head, body = await _read_response(reader)
            assert head.startswith(b"HTTP/1.0 200 OK\r\n")
            assert b"\r\nConnection: keep-alive\r\n" in head
            assert body == b'{"ok":true}'
    finally:
        writer.close()


async def test_connection_close_from_an_http_1_1_client_is_honoured(client: Client) -> None:
    response = await raw_exchange(client, b"GET /api/v1/users/a HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert response.status == 200
    assert response.headers["Connection"] == "close"
    assert response.headers["Content-Length"] == "11"
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Date"].endswith(" GMT")
    assert response.headers["Server"]


async def test_pipelined_requests_are_answered_in_order(client: Client) -> None:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(b"".join(
            f"GET /api/v1/users/{n} HTTP/1.1\r\nHost: gw\r\nX-Request-ID: pipe-{n}\r\n\r\n".encode() for n in range(3)
        ))
        for n in range(3):
            head, body = await _read_response(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert f"\r\nX-Request-ID: pipe-{n}\r\n".encode() in head
            assert body == b'{"ok":true}'
    finally:
        writer.close()


async def test_upstream_header_bytes_and_reason_pass_through_exactly(
    registry_path: Path, gateway_client: GatewayClient
) -> None:
    reply = b"HTTP/1.1 299 Fine By Me\r\nContent-Length: 4\r\nX-Raw: caf\xe9 \xff\r\n\r\nbody"
    async with raw_upstream(reply) as base:
        client = await gateway_client(users_registry(registry_path, base))
        reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
        try:
            writer.write(b"GET /api/v1/users/a HTTP/1.1\r\nHost: gw\r\n\r\n")
            head, body = await _read_response(reader)
        finally:
            writer.close()
    assert head.startswith(b"HTTP/1.1 299 Fine By Me\r\n")
    assert b"\r\nX-Raw: caf\xe9 \xff\r\n" in head
    # No Content-Type from the instance: aiohttp's default for a body is kept.
    assert b"\r\nContent-Type: application/octet-stream\r\n" in head
    assert body == b"body"


def test_header_block_is_the_status_line_headers_and_a_blank_line() -> None:
    from multidict import CIMultiDict

    block = header_block("HTTP/1.1 200 OK", CIMultiDict([("A", "1"), ("B", "x y"), ("A", "2")]))
    assert block == b"HTTP/1.1 200 OK\r\nA: 1\r\nB: x y\r\nA: 2\r\n\r\n"


@pytest.mark.parametrize(
    ("status_line", "name", "value"),
    [
        ("HTTP/1.1 200 OK", "X-Evil", "a\r\nSet-Cookie: x=1"),
        ("HTTP/1.1 200 OK", "X-Evil", "a\nb"),
        ("HTTP/1.1 200 OK", "X-Evil", "a\rb"),
        ("HTTP/1.1 200 OK", "X-Ev\nil", "a"),
        ("HTTP/1.1 200 O\r\nK", "X-Fine", "a"),
    ],
)
def test_header_block_refuses_cr_and_lf_anywhere(status_line: str, name: str, value: str) -> None:
    from multidict import CIMultiDict

    with pytest.raises(ValueError, match="Newline or carriage return"):
        header_block(status_line, CIMultiDict([(name, value)]))


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x0b", "\x1f", "\x7f"])
def test_header_block_refuses_the_control_characters_aiohttp_refuses(char: str) -> None:
    from multidict import CIMultiDict

    with pytest.raises(ValueError):
        header_block("HTTP/1.1 200 OK", CIMultiDict([("X-Evil", f"a{char}b")]))
    with pytest.raises(ValueError):
        header_block("HTTP/1.1 200 OK", CIMultiDict([(f"X-E{char}vil", "a")]))


def test_header_block_keeps_tabs_and_non_ascii_bytes_and_formats_non_string_values() -> None:
    from multidict import CIMultiDict

    upstream_bytes = b"caf\xe9".decode("utf-8", "surrogateescape")  # how the pool decodes header bytes
    block = header_block("HTTP/1.1 200 OK", CIMultiDict([("A", "x\ty"), ("B", upstream_bytes), ("C", 5)]))  # type: ignore[list-item]
    assert block == b"HTTP/1.1 200 OK\r\nA: x\ty\r\nB: caf\xe9\r\nC: 5\r\n\r\n"
    assert header_block("HTTP/1.1 204 No Content", CIMultiDict()) == b"HTTP/1.1 204 No Content\r\n\r\n"
