"""Every error the gateway answers itself, in the spec's envelope, and the upstream failures behind them."""
from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from gateway.keys import GATEWAY_KEY
from gateway.routing import InstanceState
from tests.integration.helpers import (
    JSON_TYPE,
    Client,
    GatewayClient,
    StartRecorder,
    StartUpstream,
    assert_error_envelope,
    metric_value,
    raw_request,
    users_registry,
)
from tests.support import free_port, service, write_registry


async def _expect_error(response: aiohttp.ClientResponse, status: int) -> dict[str, object]:
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"] == JSON_TYPE
    body = await response.json()
    assert_error_envelope(body, status, response.headers["X-Request-ID"])
    assert "X-Gateway-Service" not in response.headers
    return body  # type: ignore[no-any-return]


async def _metrics(client: Client) -> str:
    return await (await client.get("/metrics")).text()


@pytest.mark.parametrize(
    ("method", "target"),
    [("GET", "/api/v1/nothing"), ("POST", "/nowhere/at/all"), ("DELETE", "/"), ("GET", "/api/v1/health/extra")],
    ids=["unknown-prefix", "outside-api", "root", "below-admin-endpoint"],
)
async def test_404_for_an_unknown_path(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, method: str, target: str
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))

    await _expect_error(await client.request(method, target), 404)

    assert users.received == []


@pytest.mark.parametrize(("size", "status"), [(1000, 200), (1001, 413)], ids=["at-limit", "one-over"])
async def test_content_length_over_max_body_size_is_refused_before_the_upstream(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    size: int,
    status: int,
) -> None:
    users = await start_recorder("users")
    registry = users_registry(registry_path, users.url, max_body_size="1KB")
    client = await gateway_client(registry)

    response = await client.post("/api/v1/users/upload", data=b"x" * size)

    if status == 200:
        assert response.status == 200
        assert users.last.body == b"x" * size
        return
    body = await _expect_error(response, 413)
    assert body["details"] == {"limit": 1000, "received": 1001}
    assert users.received == []


async def test_content_length_limit_is_per_route(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    registry = write_registry(
        registry_path,
        {
            "user-service": service(
                [users.url],
                {"prefix": "/api/v1/users/avatars", "max_body_size": "64KB"},
                "/api/v1/users",
                max_body_size=100,
            )
        },
    )
    client = await gateway_client(registry)

    await _expect_error(await client.post("/api/v1/users/x", data=b"y" * 101), 413)
    assert (await client.post("/api/v1/users/avatars/1", data=b"y" * 50_000)).status == 200
    assert [seen.raw_path for seen in users.received] == ["/users/avatars/1"]


async def test_chunked_body_over_max_body_size_is_refused_mid_stream(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    received: list[int] = []

    async def consume(request: web.Request) -> web.Response:
        total = 0
        try:
            async for chunk in request.content.iter_any():
                total += len(chunk)
        finally:
            received.append(total)
        return web.Response(text=str(total))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", consume)
    base = await start_upstream(app)
    registry = write_registry(registry_path, {"user-service": service([base], "/api/v1/users", max_body_size="100KB")})
    client = await gateway_client(registry)
    sent: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):
            sent.append(32_768)
            yield b"z" * 32_768

    response = await client.post("/api/v1/users/upload", data=body())

    await _expect_error(response, 413)
    assert sum(sent) > 100_000
    assert all(total <= 100_000 for total in received)
    metrics = await _metrics(client)
    errors = "kadai_gateway_upstream_errors_total"
    assert metric_value(metrics, errors, service="user-service", kind="body_too_large") == 1

    small = await client.post("/api/v1/users/upload", data=_chunks(b"s" * 1000, 3))
    assert small.status == 200
    assert await small.text() == "3000"


async def _chunks(chunk: bytes, count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield chunk


async def test_502_when_the_instance_port_is_closed(
    registry_path: Path, gateway_client: GatewayClient
) -> None:
    # One attempt: retries have their own tests (test_retry.py).
    registry = users_registry(registry_path, f"http://127.0.0.1:{free_port()}", retry=False)
    client = await gateway_client(registry)

    body = await _expect_error(await client.get("/api/v1/users/x"), 502)

    assert body["details"] == {"service": "user-service"}
    metrics = await _metrics(client)
    assert metric_value(metrics, "kadai_gateway_upstream_errors_total", service="user-service", kind="connect") == 1


async def test_504_when_the_upstream_is_slower_than_the_read_timeout(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    base = await start_upstream(app)
    registry = write_registry(
        registry_path, {"user-service": service([base], "/api/v1/users", timeouts={"read": "200ms"}, retry=False)}
    )
    client = await gateway_client(registry)

    started = time.monotonic()
    response = await client.get("/api/v1/users/x")
    elapsed = time.monotonic() - started

    body = await _expect_error(response, 504)
    assert body["details"] == {"service": "user-service"}
    assert 0.15 < elapsed < 0.9
    metrics = await _metrics(client)
    assert metric_value(metrics, "kadai_gateway_upstream_errors_total", service="user-service", kind="timeout") == 1


async def test_503_when_the_service_has_no_instances(registry_path: Path, gateway_client: GatewayClient) -> None:
    client = await gateway_client(write_registry(registry_path, {"user-service": service([], "/api/v1/users")}))

    body = await _expect_error(await client.get("/api/v1/users/x"), 503)

    assert body["details"] == {"service": "user-service"}


async def test_503_when_every_instance_is_unhealthy_and_back_when_one_recovers(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    first = await start_recorder("first")
    second = await start_recorder("second")
    registry = write_registry(registry_path, {"user-service": service([first.url, second.url], "/api/v1/users")})
    client = await gateway_client(registry)
    instances = client.app[GATEWAY_KEY].table.services["user-service"].instances

    for instance in instances:
        instance.state = InstanceState.UNHEALTHY
    await _expect_error(await client.get("/api/v1/users/x"), 503)

    instances[1].state = InstanceState.HEALTHY
    answered = [(await (await client.get("/api/v1/users/x")).json())["upstream"] for _ in range(3)]
    assert answered == ["second"] * 3
    assert first.received == []


@pytest.mark.parametrize(
    "path",
    ["/api/v1/health", "/api/v1/health/detailed", "/api/v1/gateway/status", "/api/v1/gateway/services", "/metrics"],
)
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_405_for_a_write_to_a_gateway_endpoint(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, path: str, method: str
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))

    response = await client.request(method, path, data=b"{}")

    await _expect_error(response, 405)
    assert response.headers["Allow"] == "GET, HEAD"


async def _reset_mid_body(request: web.Request) -> web.StreamResponse:
    """Declare a Content-Length, send a tenth of it, then drop the connection."""
    if request.path == "/users/ok":
        return web.Response(text="fine")
    size = int(request.query["size"])
    response = web.StreamResponse(headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
    await response.prepare(request)
    await response.write(b"p" * (size // 10))
    await asyncio.sleep(0.05)
    assert request.transport is not None
    request.transport.close()
    return response


async def _assert_still_serving(client: Client) -> None:
    for _ in range(3):
        again = await client.get("/api/v1/users/ok")
        assert again.status == 200
        assert await again.text() == "fine"
    instance = client.app[GATEWAY_KEY].table.services["user-service"].instances[0]
    assert instance.in_flight == 0
    assert metric_value(await _metrics(client), "kadai_gateway_requests_in_flight") == 1  # the scrape itself


async def test_upstream_reset_mid_streamed_body_cuts_the_client_and_the_gateway_keeps_serving(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _reset_mid_body)
    base = await start_upstream(app)
    client = await gateway_client(users_registry(registry_path, base))

    response = await client.get("/api/v1/users/broken?size=1000000")
    assert response.status == 200
    assert response.headers["Content-Length"] == "1000000"
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()

    await _assert_still_serving(client)


async def test_upstream_reset_mid_small_body_is_a_502(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _reset_mid_body)
    base = await start_upstream(app)
    client = await gateway_client(users_registry(registry_path, base))

    response = await client.get("/api/v1/users/broken?size=10000")

    body = await _expect_error(response, 502)
    assert body["details"] == {"service": "user-service"}
    await _assert_still_serving(client)


async def test_upstream_reset_before_the_response_is_a_502(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    async def hang_up(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(0.05)
        return web.Response(text="never sent")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hang_up)
    base = await start_upstream(app)
    client = await gateway_client(users_registry(registry_path, base))

    await _expect_error(await client.get("/api/v1/users/x"), 502)


async def test_a_target_the_router_refuses_still_gets_a_request_id(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))

    response = await raw_request(client, "*", method="OPTIONS", headers=[("X-Request-ID", "star-probe")])

    assert response.status in (400, 404)
    assert response.headers["Content-Type"] == JSON_TYPE
    assert_error_envelope(response.json(), response.status, "star-probe")
    assert response.headers["X-Request-ID"] == "star-probe"


def _upstream_error_total(text: str, service_name: str) -> float:
    return sum(
        metric_value(text, "kadai_gateway_upstream_errors_total", service=service_name, kind=kind)
        for kind in ("connect", "timeout", "reset", "body_too_large", "broken", "read")
    )


@pytest.mark.parametrize("size", [10_000, 1_000_000], ids=["whole", "streamed"])
async def test_upstream_reset_mid_body_is_counted_as_an_upstream_error(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, size: int
) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _reset_mid_body)
    base = await start_upstream(app)
    client = await gateway_client(users_registry(registry_path, base))

    response = await client.get(f"/api/v1/users/broken?size={size}")
    with contextlib.suppress(aiohttp.ClientPayloadError):
        await response.read()

    assert _upstream_error_total(await _metrics(client), "user-service") == 1


async def _stall_mid_body(request: web.Request) -> web.StreamResponse:
    """Send the headers and a few bytes of the declared body, then go quiet for a second."""
    size = int(request.query["size"])
    response = web.StreamResponse(headers={"Content-Length": str(size)})
    await response.prepare(request)
    await response.write(b"s" * 10)
    await asyncio.sleep(1.0)
    await response.write(b"s" * (size - 10))
    return response


@pytest.mark.parametrize(
    "size",
    [
        1_000,
        100_000,
    ],
    ids=["whole", "streamed"],
)
async def test_upstream_stalling_mid_body_past_the_read_timeout(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, size: int
) -> None:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _stall_mid_body)
    base = await start_upstream(app)
    registry = users_registry(registry_path, base, timeouts={"read": "200ms"})
    client = await gateway_client(registry)

    started = time.monotonic()
    response = await client.get(f"/api/v1/users/stall?size={size}")
    if size > 64 * 1024:  # streamed: the headers are out, the client sees the truncation
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    else:
        await _expect_error(response, 504)
    assert time.monotonic() - started < 0.9
