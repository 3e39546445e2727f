"""Expect: 100-continue is granted only for a body the route will take; other expectations get 417."""
from __future__ import annotations

import asyncio
from pathlib import Path

from tests.integration.helpers import (
    GatewayClient,
    RawResponse,
    StartRecorder,
    assert_error_envelope,
    parse_response,
    users_registry,
)


async def _send_head(client, head: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:  # type: ignore[no-untyped-def]
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head.encode())
    await writer.drain()
    return reader, writer


async def _read_one(reader: asyncio.StreamReader) -> RawResponse:
    """One response framed by Content-Length (the server may keep the socket open to drain the body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = parse_response(head).headers.get("Content-Length", "0")
    body = await asyncio.wait_for(reader.readexactly(int(length)), 5)
    return parse_response(head + body)


def _head(length: int, expect: str = "100-continue") -> str:
    return (
        "POST /api/v1/users/upload HTTP/1.1\r\nHost: gw\r\n"
        f"Content-Length: {length}\r\nExpect: {expect}\r\nConnection: close\r\n\r\n"
    )


async def test_continue_is_sent_then_the_body_is_forwarded(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))
    reader, writer = await _send_head(client, _head(5))
    try:
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"hello")
        await writer.drain()
        final = parse_response(await asyncio.wait_for(reader.read(), 5))
    finally:
        writer.close()
        await writer.wait_closed()
    assert final.status == 200
    assert users.last.body == b"hello"


async def test_a_body_over_the_limit_is_refused_before_it_is_sent(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url, max_body_size="1KB"))
    reader, writer = await _send_head(client, _head(5000))
    try:
        response = await _read_one(reader)
    finally:
        writer.close()
        await writer.wait_closed()
    assert response.status == 413  # and no "100 Continue" came first
    assert_error_envelope(response.json(), 413, response.headers["X-Request-ID"])
    assert users.received == []


async def test_an_unknown_expectation_is_417(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))
    reader, writer = await _send_head(client, _head(5, expect="something-else"))
    try:
        response = await _read_one(reader)
    finally:
        writer.close()
        await writer.wait_closed()
    assert response.status == 417
    assert_error_envelope(response.json(), 417, response.headers["X-Request-ID"])
    assert users.received == []
