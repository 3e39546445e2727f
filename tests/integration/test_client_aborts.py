"""Clients that go away mid-request: the gateway's bookkeeping (in-flight, metrics, logs) must stay right."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.keys import GATEWAY_KEY
from tests.integration.helpers import GatewayClient, ServeGateway, StartRecorder, metric_value, users_registry

_PARTIAL_UPLOAD = b"POST /api/v1/users/upload HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000


async def _abort_upload(host: str, port: int) -> None:
    """Announce 100 kB, send 1 kB, hang up."""
    _, writer = await asyncio.open_connection(host, port)
    writer.write(_PARTIAL_UPLOAD)
    await writer.drain()
    await asyncio.sleep(0.1)  # let the gateway start forwarding
    writer.close()
    await writer.wait_closed()


async def _settled(gw: Gateway, service_name: str) -> None:
    """Wait until the aborted exchange is recorded (or give up after a second)."""
    for _ in range(100):
        text = gw.resources.metrics.render()[0].decode()
        if metric_value(text, "kadai_gateway_request_duration_seconds_count", service=service_name) >= 1:
            return
        await asyncio.sleep(0.01)


async def test_cancelled_handler_still_runs_its_finish_hooks(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))
    gw = client.app[GATEWAY_KEY]
    assert client.server.host is not None and client.server.port is not None

    await _abort_upload(client.server.host, client.server.port)
    await _settled(gw, "user-service")

    text = gw.resources.metrics.render()[0].decode()
    assert gw.table.services["user-service"].instances[0].in_flight == 0
    assert metric_value(text, "kadai_gateway_requests_in_flight") == 0
    assert metric_value(text, "kadai_gateway_request_duration_seconds_count", service="user-service") == 1


async def test_client_abandoning_an_upload_is_not_an_upstream_error(
    registry_path: Path, start_recorder: StartRecorder, serve_gateway: ServeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    users = await start_recorder("users")
    base, gw = await serve_gateway(users_registry(registry_path, users.url))

    await _abort_upload("127.0.0.1", int(base.rsplit(":", 1)[1]))
    await _settled(gw, "user-service")

    text = gw.resources.metrics.render()[0].decode()
    assert metric_value(text, "kadai_gateway_requests_in_flight") == 0  # production serving runs the hooks
    assert metric_value(text, "kadai_gateway_upstream_errors_total", service="user-service", kind="connect") == 0
    lines = [r for r in caplog.records if r.name == "gateway.access"]
    assert [r.fields["status"] for r in lines] == [499]  # type: ignore[attr-defined]
    assert lines[0].fields["failure"] == "client closed the connection during the upload"  # type: ignore[attr-defined]


async def test_client_abandoning_an_upload_releases_the_exchange_when_served_like_production(
    registry_path: Path, start_recorder: StartRecorder, serve_gateway: ServeGateway
) -> None:
    users = await start_recorder("users")
    base, gw = await serve_gateway(users_registry(registry_path, users.url))

    await _abort_upload("127.0.0.1", int(base.rsplit(":", 1)[1]))
    await _settled(gw, "user-service")

    text = gw.resources.metrics.render()[0].decode()
    assert gw.table.services["user-service"].instances[0].in_flight == 0
    assert metric_value(text, "kadai_gateway_requests_in_flight") == 0
    assert metric_value(text, "kadai_gateway_request_duration_seconds_count", service="user-service") == 1
