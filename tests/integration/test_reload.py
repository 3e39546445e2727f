"""Hot reload in-process: the watcher (reload_interval 0.1 s) swaps the route table while requests run."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.keys import GATEWAY_KEY
from gateway.routing import InstanceState
from tests.integration.helpers import (
    Client,
    GatewayClient,
    StartRecorder,
    StartUpstream,
    assert_success_envelope,
    metric_value,
    users_registry,
)
from tests.support import service, write_registry

RELOAD_DEADLINE = 2.0


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = RELOAD_DEADLINE) -> float:
    """Poll until check() is true; returns the seconds it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _config(client: Client) -> dict[str, Any]:
    response = await client.get("/api/v1/gateway/status")
    assert response.status == 200
    data = assert_success_envelope(await response.json())
    return data["config"]  # type: ignore[no-any-return]


async def _status_of(client: Client, path: str) -> int:
    response = await client.get(path)
    await response.read()
    return response.status


async def _metrics(client: Client) -> str:
    return await (await client.get("/metrics")).text()


async def test_added_route_answers_within_two_seconds(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    orders = await start_recorder("orders")
    services = {"user-service": service([users.url], "/api/v1/users")}
    client = await gateway_client(write_registry(registry_path, services))
    assert await _status_of(client, "/api/v1/orders/1") == 404

    write_registry(registry_path, {**services, "order-service": service([orders.url], "/api/v1/orders")})

    async def orders_answer() -> bool:
        return await _status_of(client, "/api/v1/orders/1") == 200

    took = await _eventually(orders_answer)
    assert took < RELOAD_DEADLINE
    assert orders.paths == ["/orders/1"]
    assert await _status_of(client, "/api/v1/users/1") == 200
    config = await _config(client)
    assert config["revision"] == 2
    last = config["lastReload"]
    assert last["ok"] is True and last["error"] is None and last["revision"] == 2
    assert last["digest"] == config["digest"]
    metrics = await _metrics(client)
    assert metric_value(metrics, "kadai_gateway_config_reloads_total", result="ok") == 1
    assert metric_value(metrics, "kadai_gateway_config_reloads_total", result="failed") == 0
    assert metric_value(metrics, "kadai_gateway_config_revision") == 2


def _bad_yaml(path: Path, url: str) -> None:
    path.write_text(f"version: 1\nservices:\n  user-service: {{instances: [{url}], routes: [\n")


def _unknown_option(path: Path, url: str) -> None:
    write_registry(path, {"user-service": service([url], "/api/v1/users", {"prefix": "/api/v1/new", "retriez": 3})})


def _bad_size(path: Path, url: str) -> None:
    new_route = {"prefix": "/api/v1/new", "max_body_size": "lots"}
    write_registry(path, {"user-service": service([url], "/api/v1/users", new_route)})


def _reserved_prefix(path: Path, url: str) -> None:
    write_registry(path, {"user-service": service([url], "/api/v1/users", "/api/v1/gateway/mine")})


def _missing_plugin(path: Path, url: str) -> None:
    services = {"user-service": service([url], "/api/v1/users", "/api/v1/new")}
    write_registry(path, services, plugins=["no_such_pkg.mod:Thing"])


def _bad_instance(path: Path, url: str) -> None:
    write_registry(path, {"user-service": service([url, "ftp://127.0.0.1:21"], "/api/v1/users", "/api/v1/new")})


_INVALID: list[tuple[str, Callable[[Path, str], None], str]] = [
    ("bad-yaml", _bad_yaml, "invalid YAML"),
    ("unknown-option", _unknown_option, "services.user-service.routes[1].retriez: unknown option"),
    ("bad-size", _bad_size, "services.user-service.routes[1].max_body_size"),
    ("reserved-prefix", _reserved_prefix, "services.user-service.routes[1].prefix"),
    ("missing-plugin", _missing_plugin, "plugins: cannot import 'no_such_pkg.mod'"),
    ("bad-instance", _bad_instance, "services.user-service.instances[1]"),
]


@pytest.mark.parametrize(
    ("edit", "error_names"), [case[1:] for case in _INVALID], ids=[case[0] for case in _INVALID]
)
async def test_invalid_edit_keeps_the_last_good_routes(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    edit: Callable[[Path, str], None],
    error_names: str,
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))

    edit(registry_path, users.url)

    async def reload_reported() -> bool:
        return (await _config(client))["lastReload"] is not None

    await _eventually(reload_reported)
    config = await _config(client)
    last = config["lastReload"]
    assert last["ok"] is False
    assert error_names in last["error"]
    assert str(registry_path) in last["error"]
    assert config["revision"] == last["revision"] == 1
    assert client.app[GATEWAY_KEY].table.revision == 1
    assert await _status_of(client, "/api/v1/users/x") == 200
    assert await _status_of(client, "/api/v1/new/x") == 404
    metrics = await _metrics(client)
    assert metric_value(metrics, "kadai_gateway_config_reloads_total", result="failed") == 1
    assert metric_value(metrics, "kadai_gateway_config_reloads_total", result="ok") == 0
    assert metric_value(metrics, "kadai_gateway_config_revision") == 1

    # Fixing the file applies it.
    write_registry(registry_path, {"user-service": service([users.url], "/api/v1/users", "/api/v1/new")})

    async def fixed() -> bool:
        return await _status_of(client, "/api/v1/new/x") == 200

    await _eventually(fixed)
    config = await _config(client)
    assert config["revision"] == 2
    assert config["lastReload"]["ok"] is True
    assert metric_value(await _metrics(client), "kadai_gateway_config_reloads_total", result="ok") == 1


async def test_reverting_a_rejected_edit_clears_the_failure(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    good = {"user-service": service([users.url], "/api/v1/users")}
    client = await gateway_client(write_registry(registry_path, good))
    _unknown_option(registry_path, users.url)

    async def rejected() -> bool:
        last = (await _config(client))["lastReload"]
        return last is not None and last["ok"] is False

    await _eventually(rejected)
    write_registry(registry_path, good)  # back to exactly the file in use

    async def cleared() -> bool:
        return bool((await _config(client))["lastReload"]["ok"])

    await _eventually(cleared, timeout=1.0)


async def test_request_in_flight_completes_when_its_route_is_removed(
    registry_path: Path, start_upstream: StartUpstream, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(1.0)
        return web.Response(text="slow but complete")

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    slow_base = await start_upstream(app)
    users = await start_recorder("users")
    users_only = {"user-service": service([users.url], "/api/v1/users")}
    client = await gateway_client(
        write_registry(registry_path, {**users_only, "slow-service": service([slow_base], "/api/v1/slow")})
    )

    pending = asyncio.create_task(client.get("/api/v1/slow/report"))
    await asyncio.wait_for(arrived.wait(), 5)
    write_registry(registry_path, users_only)

    async def reloaded() -> bool:
        return (await _config(client))["revision"] == 2

    await _eventually(reloaded)
    assert await _status_of(client, "/api/v1/slow/other") == 404
    assert not pending.done()
    response = await pending
    assert response.status == 200
    assert await response.text() == "slow but complete"
    assert response.headers["X-Gateway-Service"] == "slow-service"
    assert client.app[GATEWAY_KEY].table.revision == 2


async def test_instance_state_survives_a_reload_that_keeps_its_url(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    first = await start_recorder("first")
    second = await start_recorder("second")
    orders = await start_recorder("orders")
    services = {"user-service": service([first.url, second.url], "/api/v1/users")}
    client = await gateway_client(write_registry(registry_path, services))
    gw = client.app[GATEWAY_KEY]
    gw.table.services["user-service"].instances[0].state = InstanceState.UNHEALTHY
    gw.table.services["user-service"].instances[1].state = InstanceState.HEALTHY

    write_registry(
        registry_path,
        {
            "user-service": service([first.url, second.url], "/api/v1/users", "/api/v1/profiles"),
            "order-service": service([orders.url], "/api/v1/orders"),
        },
    )

    async def reloaded() -> bool:
        return gw.table.revision == 2

    await _eventually(reloaded)
    states = [instance.state for instance in gw.table.services["user-service"].instances]
    assert states == [InstanceState.UNHEALTHY, InstanceState.HEALTHY]
    assert gw.table.services["order-service"].instances[0].state is InstanceState.UNKNOWN
    for _ in range(4):
        response = await client.get("/api/v1/profiles/x")
        assert (await response.json())["upstream"] == "second"
    assert first.received == []
    services_view = assert_success_envelope(await (await client.get("/api/v1/gateway/services")).json())
    users_view = next(entry for entry in services_view if entry["name"] == "user-service")
    assert [instance["state"] for instance in users_view["instances"]] == ["unhealthy", "healthy"]
