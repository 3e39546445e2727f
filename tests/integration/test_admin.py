"""The gateway's own endpoints: health, status, services, Prometheus metrics, and admin_networks."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
import uvloop
from prometheus_client.parser import text_string_to_metric_families

import gateway
from gateway.keys import GATEWAY_KEY
from gateway.routing import InstanceState
from tests.integration.helpers import (
    JSON_TYPE,
    Client,
    GatewayClient,
    StartRecorder,
    StartUpstream,
    assert_error_envelope,
    assert_success_envelope,
    metric_value,
    users_registry,
)
from tests.support import service, write_registry
from tests.middleware_names import core

ENDPOINTS = [
    "/api/v1/health", "/api/v1/health/detailed", "/api/v1/gateway/status", "/api/v1/gateway/services", "/metrics",
]
JSON_ENDPOINTS = ENDPOINTS[:-1]


async def _gateway(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, **top: Any
) -> Client:
    users = await start_recorder("users")
    orders = await start_recorder("orders")
    registry = write_registry(
        registry_path,
        {
            "user-service": service([users.url], "/api/v1/auth", "/api/v1/users"),
            "order-service": service([orders.url], {"prefix": "/api/v1/orders", "access_log": False}),
        },
        **top,
    )
    return await gateway_client(registry)


async def _data(client: Client, path: str, request_id: str = "admin-probe") -> Any:
    response = await client.get(path, headers={"X-Request-ID": request_id})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == JSON_TYPE
    assert response.headers["X-Request-ID"] == request_id
    return assert_success_envelope(await response.json(), request_id)


async def test_health(registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient) -> None:
    client = await _gateway(registry_path, start_recorder, gateway_client)

    data = await _data(client, "/api/v1/health")

    assert data["status"] == "ok"
    assert isinstance(data["uptimeSeconds"], (int, float)) and data["uptimeSeconds"] >= 0


async def test_health_degrades_when_an_instance_is_unhealthy(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client = await _gateway(registry_path, start_recorder, gateway_client)
    client.app[GATEWAY_KEY].table.services["order-service"].instances[0].state = InstanceState.UNHEALTHY

    data = await _data(client, "/api/v1/health")
    detailed = await _data(client, "/api/v1/health/detailed")

    assert data["status"] == "degraded"
    assert detailed["status"] == "degraded"
    states = {entry["name"]: entry["state"] for entry in detailed["services"]}
    assert states == {"user-service": "unchecked", "order-service": "down"}


async def test_health_detailed(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client = await _gateway(registry_path, start_recorder, gateway_client)
    table = client.app[GATEWAY_KEY].table

    data = await _data(client, "/api/v1/health/detailed")

    assert data["status"] == "ok"
    assert data["gateway"] == {"version": gateway.__version__, "draining": False}
    assert data["config"]["revision"] == 1
    assert data["config"]["source"] == str(registry_path)
    assert data["config"]["digest"] == table.config.digest[:12]
    users_url = table.services["user-service"].instances[0].url
    assert data["services"][0] == {
        "name": "user-service",
        "state": "unchecked",
        "instances": [{"url": users_url, "state": "unknown", "inFlight": 0}],
        "health": {"path": "/health", "intervalSeconds": 30.0},
    }


async def test_gateway_status(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client = await _gateway(registry_path, start_recorder, gateway_client)

    data = await _data(client, "/api/v1/gateway/status")

    assert data["version"] == gateway.__version__
    assert isinstance(data["uptimeSeconds"], (int, float)) and data["uptimeSeconds"] >= 0
    assert isinstance(data["pid"], int)
    # This test runs on asyncio's loop and on uvloop.
    assert data["eventLoop"] == ("uvloop" if isinstance(asyncio.get_running_loop(), uvloop.Loop) else "asyncio")
    assert data["draining"] is False
    assert data["config"]["revision"] == 1
    assert data["config"]["lastReload"] is None
    assert data["settings"]["jwtSecret"] == "development default"  # described, never shown


async def test_gateway_services_lists_services_instances_and_routes(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client = await _gateway(registry_path, start_recorder, gateway_client)

    data = await _data(client, "/api/v1/gateway/services")

    by_name = {entry["name"]: entry for entry in data}
    assert set(by_name) == {"user-service", "order-service"}
    users = by_name["user-service"]
    assert [instance["state"] for instance in users["instances"]] == ["unknown"]
    assert [route["prefix"] for route in users["routes"]] == ["/api/v1/auth", "/api/v1/users"]
    assert users["routes"][0]["stripPrefix"] == "/api/v1"
    assert core(users["routes"][0]["middleware"]) == ["request_id", "metrics", "access_log"]
    orders = by_name["order-service"]
    assert core(orders["routes"][0]["middleware"]) == ["request_id", "metrics"]


@pytest.mark.parametrize("path", JSON_ENDPOINTS)
async def test_head_on_an_endpoint_has_no_body(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, path: str
) -> None:
    client = await _gateway(registry_path, start_recorder, gateway_client)

    response = await client.head(path)

    assert response.status == 200
    assert await response.read() == b""


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic Zm9vOmJhcg=="}],
    ids=["no-auth", "bad-bearer", "basic"],
)
async def test_endpoints_need_no_authorization(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    path: str,
    headers: dict[str, str],
) -> None:
    client = await _gateway(registry_path, start_recorder, gateway_client)

    response = await client.get(path, headers=headers)

    assert response.status == 200


async def test_metrics_count_proxied_requests(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client = await _gateway(registry_path, start_recorder, gateway_client)
    for _ in range(3):
        assert (await client.get("/api/v1/users/x")).status == 200
    assert (await client.post("/api/v1/users/x", data=b"{}")).status == 200
    assert (await client.delete("/api/v1/orders/1")).status == 200
    assert (await client.get("/api/v1/nothing")).status == 404
    assert (await client.request("PURGE", "/api/v1/users/x")).status == 200

    response = await client.get("/metrics")

    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = await response.text()
    families = {family.name for family in text_string_to_metric_families(text)}
    assert {
        "kadai_gateway_requests",
        "kadai_gateway_request_duration_seconds",
        "kadai_gateway_upstream_duration_seconds",
        "kadai_gateway_requests_in_flight",
        "kadai_gateway_config_reloads",
    } <= families
    requests = "kadai_gateway_requests_total"
    assert "# TYPE kadai_gateway_requests_total counter" in text
    assert metric_value(text, requests, service="user-service", method="GET", status_class="2xx") == 3
    assert metric_value(text, requests, service="user-service", method="POST", status_class="2xx") == 1
    assert metric_value(text, requests, service="user-service", method="OTHER", status_class="2xx") == 1
    assert metric_value(text, requests, service="order-service", method="DELETE", status_class="2xx") == 1
    assert metric_value(text, requests, service="gateway", method="GET", status_class="4xx") == 1
    duration = "kadai_gateway_request_duration_seconds_count"
    assert metric_value(text, duration, service="user-service") == 5
    assert metric_value(text, duration, service="order-service") == 1
    assert metric_value(text, "kadai_gateway_request_duration_seconds_bucket", service="user-service", le="+Inf") == 5
    assert metric_value(text, "kadai_gateway_upstream_duration_seconds_count", service="user-service") == 5
    assert metric_value(text, "kadai_gateway_upstream_duration_seconds_count", service="order-service") == 1
    assert metric_value(text, "kadai_gateway_requests_in_flight") == 1  # the scrape itself
    assert "# TYPE kadai_gateway_config_reloads_total counter" in text
    assert metric_value(text, "kadai_gateway_config_revision") == 1


async def test_in_flight_gauge_counts_running_requests(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(text="done")

    app = web.Application()
    app.router.add_get("/{tail:.*}", held)
    base = await start_upstream(app)
    client = await gateway_client(users_registry(registry_path, base))

    pending = asyncio.create_task(client.get("/api/v1/users/slow"))
    await asyncio.wait_for(arrived.wait(), 5)
    during = await (await client.get("/metrics")).text()
    instance = client.app[GATEWAY_KEY].table.services["user-service"].instances[0]
    in_flight_during = instance.in_flight
    release.set()
    response = await pending
    assert await response.text() == "done"
    after = await (await client.get("/metrics")).text()

    assert metric_value(during, "kadai_gateway_requests_in_flight") == 2
    assert in_flight_during == 1
    assert metric_value(after, "kadai_gateway_requests_in_flight") == 1
    assert instance.in_flight == 0


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_admin_networks_refuse_other_clients_but_routes_still_work(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, path: str
) -> None:
    client = await _gateway(
        registry_path, start_recorder, gateway_client, gateway={"admin_networks": ["10.0.0.0/8"]}
    )

    refused = await client.get(path, headers={"X-Request-ID": "net-probe", "X-Forwarded-For": "10.1.2.3"})
    proxied = await client.get("/api/v1/users/x")

    assert refused.status == 403
    assert refused.headers["Content-Type"] == JSON_TYPE
    assert_error_envelope(await refused.json(), 403, "net-probe")
    assert proxied.status == 200
    assert (await proxied.json())["upstream"] == "users"


async def test_admin_networks_admit_a_listed_client(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client = await _gateway(
        registry_path, start_recorder, gateway_client, gateway={"admin_networks": ["10.0.0.0/8", "127.0.0.0/8"]}
    )

    for path in ENDPOINTS:
        assert (await client.get(path)).status == 200, path
