"""Edges of the reply path: headers middleware add or replace, odd upstream statuses, who hung up,
and the forwarding headers a trusted proxy may set."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

from aiohttp import web
from yarl import URL

from gateway.exchange import Exchange, Reply
from gateway.middleware import Handler, Middleware, MiddlewareConfig
from tests.integration.helpers import (
    GatewayClient,
    StartRecorder,
    StartUpstream,
    assert_error_envelope,
    metric_value,
    users_registry,
)
from tests.support import service, write_registry


class CookieConfig(MiddlewareConfig):
    pass


class CookieMiddleware(Middleware):
    """Adds a cookie and a Vary value next to the service's, and overrides one header."""

    NAME: ClassVar[str] = "cookie"
    PRIORITY: ClassVar[int] = 5000
    Config: ClassVar[type[MiddlewareConfig]] = CookieConfig

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Reply:
        exchange.response_headers.append(("Set-Cookie", "mw=1"))
        exchange.response_headers.append(("Vary", "Origin"))
        exchange.response_header_overrides["X-Frame-Options"] = "DENY"
        return await call_next(exchange)


async def _cookies_and_vary(request: web.Request) -> web.Response:
    response = web.Response(text="ok")
    response.headers.add("Set-Cookie", "session=abc")
    response.headers.add("Set-Cookie", "csrf=def")
    response.headers.add("Vary", "Accept-Encoding")
    response.headers.add("X-Frame-Options", "SAMEORIGIN")
    return response


async def test_middleware_headers_are_added_next_to_the_services(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _cookies_and_vary)
    base = await start_upstream(app)
    registry = write_registry(
        registry_path,
        {"user-service": service([base], {"prefix": "/api/v1/users", "cookie": {}})},
        plugins=[f"{__name__}:CookieMiddleware"],
    )
    client = await gateway_client(registry)
    response = await client.get("/api/v1/users/me")
    assert response.status == 200
    assert response.headers.getall("Set-Cookie") == ["session=abc", "csrf=def", "mw=1"]
    assert response.headers.getall("Vary") == ["Accept-Encoding", "Origin"]
    assert response.headers.getall("X-Frame-Options") == ["DENY"]
    assert len(response.headers.getall("X-Request-ID")) == 1


@contextlib.asynccontextmanager
async def raw_upstream(response: bytes) -> AsyncIterator[str]:
    """An upstream answering every request with bytes aiohttp would refuse to produce; yields its URL."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def test_invalid_upstream_status_is_a_502(registry_path: Path, gateway_client: GatewayClient) -> None:
    switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: weird\r\nConnection: upgrade\r\n\r\n"
    async with raw_upstream(switch) as base:
        client = await gateway_client(users_registry(registry_path, base))
        response = await client.get("/api/v1/users/x")
        assert response.status == 502
        assert_error_envelope(await response.json(), 502, response.headers["X-Request-ID"])
        metrics = await (await client.get("/metrics")).text()
    assert metric_value(metrics, "kadai_gateway_upstream_errors_total", service="user-service", kind="invalid") == 1


async def test_a_client_leaving_mid_download_is_not_an_upstream_fault(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(50_000_000)})
        await response.prepare(request)
        try:
            for _ in range(500):
                await response.write(b"x" * 100_000)
        except ConnectionError:
            pass
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", big)
    base = await start_upstream(app)
    client = await gateway_client(users_registry(registry_path, base))
    assert client.server.host is not None and client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"GET /api/v1/users/big HTTP/1.1\r\nHost: gw\r\n\r\n")
    await reader.readexactly(1_000_000)
    writer.transport.abort()  # a reset, not a polite close: the gateway is mid-write
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()

    for _ in range(200):
        metrics = await (await client.get("/metrics")).text()
        if metric_value(metrics, "kadai_gateway_requests_total", service="user-service", method="GET",
                        status_class="2xx") == 1:
            break
        await asyncio.sleep(0.02)
    assert metric_value(metrics, "kadai_gateway_requests_total", service="user-service", method="GET",
                        status_class="2xx") == 1
    assert metric_value(metrics, "kadai_gateway_upstream_errors_total", service="user-service", kind="reset") == 0


async def test_a_response_without_server_header_does_not_name_aiohttp(
    registry_path: Path, gateway_client: GatewayClient
) -> None:
    async with raw_upstream(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno") as base:
        client = await gateway_client(users_registry(registry_path, base))
        response = await client.get("/api/v1/users/x")
        assert (response.status, await response.text()) == (401, "no")
        assert response.headers["Server"] == "kadai-gateway"


async def test_trusted_proxy_tells_scheme_and_host_and_admin_check_fails_closed(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    registry = write_registry(
        registry_path,
        {"user-service": service([users.url], "/api/v1/users")},
        gateway={"trusted_proxies": ["127.0.0.1/32"], "admin_networks": ["127.0.0.0/8"]},
    )
    client = await gateway_client(registry)
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example", "X-Forwarded-For": "203.0.113.9"}
    response = await client.get("/api/v1/users/x", headers=forwarded)
    assert response.status == 200
    seen = users.last
    assert (seen.header("X-Forwarded-Proto"), seen.header("X-Forwarded-Host")) == ("https", "shop.example")
    assert seen.header("X-Forwarded-For") == "203.0.113.9, 127.0.0.1"

    for hop, status in [("203.0.113.9", 403), ("203.0.113.9:4711", 403), ("[2001:db8::1]:80", 403),
                        ("unknown", 403), ("203.0.113.9, garbage", 403), ("10.0.0.1", 403), (None, 200)]:
        headers = {"X-Forwarded-For": hop} if hop is not None else {}
        answer = await client.get(URL("/api/v1/gateway/status"), headers=headers)
        assert answer.status == status, hop
