"""Middleware plugins named in the registry, per-route enabling, and the access log middleware."""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gateway.config.errors import ConfigError
from gateway.exchange import Exchange, Reply
from gateway.keys import GATEWAY_KEY
from gateway.logs import JsonFormatter
from gateway.middleware import BuildContext, Handler, Middleware, MiddlewareConfig
from tests.integration.helpers import Client, GatewayClient, StartRecorder, assert_success_envelope
from tests.support import free_port, service, write_registry
from tests.middleware_names import core

PLUGIN = f"{__name__}:StampMiddleware"


class StampConfig(MiddlewareConfig):
    value: str


class StampMiddleware(Middleware):
    """Stamps the response (X-Stamp) and the upstream request (X-Stamped-By), inside request_id."""

    NAME: ClassVar[str] = "stamp"
    PRIORITY: ClassVar[int] = 5000
    Config: ClassVar[type[MiddlewareConfig]] = StampConfig

    def __init__(self, config: MiddlewareConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, StampConfig)
        self.value = config.value

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Reply:
        assert exchange.request_id is not None  # request_id (priority 10000) runs first
        if exchange.upstream_headers is not None:
            exchange.upstream_headers["X-Stamped-By"] = f"{self.context.service}:{self.context.prefix}"
        reply = await call_next(exchange)
        reply.headers["X-Stamp"] = self.value
        return reply


async def _stamp_header(client: Client, path: str) -> str | None:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return response.headers.get("X-Stamp")


async def test_plugin_enabled_on_one_route_stamps_only_that_route(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    orders = await start_recorder("orders")
    registry = write_registry(
        registry_path,
        {
            "user-service": service([users.url], {"prefix": "/api/v1/users", "stamp": {"value": "x"}}, "/api/v1/auth"),
            "order-service": service([orders.url], "/api/v1/orders"),
        },
        plugins=[PLUGIN],
    )
    client = await gateway_client(registry)

    assert await _stamp_header(client, "/api/v1/users/1") == "x"
    assert await _stamp_header(client, "/api/v1/auth/login") is None
    assert await _stamp_header(client, "/api/v1/orders/1") is None
    assert await _stamp_header(client, "/api/v1/health") is None
    assert [seen.header("X-Stamped-By") for seen in users.received] == ["user-service:/api/v1/users", None]
    assert orders.last.header("X-Stamped-By") is None

    listing = assert_success_envelope(await (await client.get("/api/v1/gateway/services")).json())
    routes = {route["prefix"]: route["middleware"] for entry in listing for route in entry["routes"]}
    assert core(routes["/api/v1/users"]) == ["request_id", "metrics", "access_log", "stamp"]
    assert "stamp" not in routes["/api/v1/auth"]
    assert "stamp" not in routes["/api/v1/orders"]


@pytest.mark.parametrize(
    ("defaults", "service_options", "route", "expected"),
    [
        ({}, {"stamp": {"value": "svc"}}, {}, "svc"),
        ({}, {"stamp": {"value": "svc"}}, {"stamp": False}, None),
        ({}, {"stamp": {"value": "svc"}}, {"stamp": {"value": "route"}}, "route"),
        ({}, {"stamp": {"value": "svc"}}, {"stamp": True}, "svc"),
        ({"stamp": {"value": "everywhere"}}, {}, {}, "everywhere"),
        ({"stamp": {"value": "everywhere"}}, {"stamp": False}, {}, None),
        ({"stamp": {"value": "everywhere"}}, {"stamp": False}, {"stamp": {"value": "back"}}, "back"),
    ],
    ids=[
        "service-level", "route-switches-off", "route-overrides", "route-true-inherits", "defaults",
        "service-switches-off-defaults", "route-re-enables",
    ],
)
async def test_plugin_settings_cascade(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    defaults: dict[str, Any],
    service_options: dict[str, Any],
    route: dict[str, Any],
    expected: str | None,
) -> None:
    users = await start_recorder("users")
    registry = write_registry(
        registry_path,
        {"user-service": service([users.url], {"prefix": "/api/v1/users", **route}, **service_options)},
        plugins=[PLUGIN],
        defaults=defaults,
    )
    client = await gateway_client(registry)

    assert await _stamp_header(client, "/api/v1/users/1") == expected


@pytest.mark.parametrize(
    ("route", "plugins", "error"),
    [
        ({"stamp": {"value": "x", "colour": "red"}}, [PLUGIN], "routes[0].stamp.colour: unknown field"),
        ({"stamp": {"value": 3}}, [PLUGIN], "routes[0].stamp.value"),
        ({"stamp": True}, [PLUGIN], "routes[0].stamp.value: Field required"),
        ({"stamp": {"value": "x"}}, [], "routes[0].stamp: unknown option"),
        ({}, [f"{__name__}:StampConfig"], "is not a subclass of gateway.middleware.Middleware"),
        ({}, [f"{__name__}:Missing"], "has no attribute 'Missing'"),
    ],
    ids=["unknown-setting", "wrong-type", "missing-setting", "plugin-not-listed", "not-middleware", "missing-class"],
)
async def test_bad_plugin_configuration_is_refused_with_the_field(
    registry_path: Path,
    gateway_client: GatewayClient,
    route: dict[str, Any],
    plugins: list[str],
    error: str,
) -> None:
    registry = write_registry(
        registry_path,
        {"user-service": service([f"http://127.0.0.1:{free_port()}"], {"prefix": "/api/v1/users", **route})},
        plugins=plugins,
    )

    with pytest.raises(ConfigError) as caught:
        await gateway_client(registry)

    assert error in caught.value.render()


# Access log


@dataclass(frozen=True)
class AccessLine:
    fields: dict[str, Any]
    """The structured fields the access log middleware attached to the record."""
    line: dict[str, Any]
    """The JSON line as the production formatter writes it, formatted while the request ID is bound."""
    level: int


@pytest.fixture
def access_lines(caplog: pytest.LogCaptureFixture) -> Iterator[list[AccessLine]]:
    caplog.set_level(logging.INFO, logger="gateway.access")
    lines: list[AccessLine] = []
    formatter = JsonFormatter("api-gateway")

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            fields = getattr(record, "fields", {})
            lines.append(AccessLine(dict(fields), json.loads(formatter.format(record)), record.levelno))

    collector = Collect()
    logger = logging.getLogger("gateway.access")
    logger.addHandler(collector)
    yield lines
    logger.removeHandler(collector)


async def _line_for(lines: list[AccessLine], path: str) -> AccessLine:
    for _ in range(100):
        found = [entry for entry in lines if entry.fields.get("path") == path]
        if found:
            assert len(found) == 1, found
            return found[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no access log line for {path}: {lines}")


async def _users_and_quiet_orders(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> Client:
    users = await start_recorder("users")
    orders = await start_recorder("orders")
    registry = write_registry(
        registry_path,
        {
            "user-service": service([users.url], "/api/v1/users"),
            "order-service": service([orders.url], {"prefix": "/api/v1/orders", "access_log": False}),
        },
    )
    return await gateway_client(registry)


async def test_access_log_line_fields_and_per_route_switch(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    access_lines: list[AccessLine],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await _users_and_quiet_orders(registry_path, start_recorder, gateway_client)

    quiet = await client.get("/api/v1/orders/7", headers={"X-Request-ID": "quiet-1"})
    await quiet.read()
    logged = await client.post("/api/v1/users/42?secret=1", data=b"{}", headers={"X-Request-ID": "logged-1"})
    body = await logged.read()
    assert quiet.status == logged.status == 200

    entry = await _line_for(access_lines, "/api/v1/users/42")
    fields = entry.fields
    assert fields["method"] == "POST"
    assert fields["status"] == 200
    assert isinstance(fields["duration"], (int, float)) and fields["duration"] >= 0
    assert fields["targetService"] == "user-service"
    assert fields["upstream"] == client.app[GATEWAY_KEY].table.services["user-service"].instances[0].url
    assert fields["bytes"] == len(body)
    assert fields["client"] == "127.0.0.1"
    assert entry.level == logging.INFO
    line = entry.line
    assert line["requestId"] == "logged-1"
    assert line["message"] == "POST /api/v1/users/42 200"
    assert (line["method"], line["path"], line["status"], line["upstream"]) == (
        "POST", "/api/v1/users/42", 200, fields["upstream"]
    )
    assert "secret" not in json.dumps(line)  # the query is left out unless include_query
    # The access_log: false route wrote nothing (its request finished before the logged one started).
    assert all(not str(e.fields.get("path")).startswith("/api/v1/orders") for e in access_lines)
    assert all(e.line["requestId"] != "quiet-1" for e in access_lines)
    assert [r.getMessage() for r in caplog.records if r.name == "gateway.access"] == ["POST /api/v1/users/42 200"]


async def test_access_log_json_line_names_the_target_service(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    access_lines: list[AccessLine],
) -> None:
    client = await _users_and_quiet_orders(registry_path, start_recorder, gateway_client)

    await (await client.get("/api/v1/users/42")).read()

    entry = await _line_for(access_lines, "/api/v1/users/42")
    assert entry.line["targetService"] == "user-service"
    assert entry.line["service"] == "api-gateway"  # the process that logs, as every log line says


async def test_access_log_records_errors_and_unrouted_requests(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    access_lines: list[AccessLine],
) -> None:
    users = await start_recorder("users")
    registry = write_registry(
        registry_path,
        {
            "user-service": service([users.url], "/api/v1/users"),
            "dead-service": service([f"http://127.0.0.1:{free_port()}"], "/api/v1/dead"),
        },
    )
    client = await gateway_client(registry)

    missing = await client.get("/api/v1/nowhere", headers={"X-Request-ID": "missing-1"})
    dead = await client.get("/api/v1/dead/x", headers={"X-Request-ID": "dead-1"})
    assert (missing.status, dead.status) == (404, 502)

    not_found = await _line_for(access_lines, "/api/v1/nowhere")
    fields = not_found.fields
    assert (fields["status"], fields["targetService"], fields["upstream"]) == (404, "gateway", None)
    assert not_found.line["requestId"] == "missing-1"
    assert not_found.level == logging.INFO
    bad_gateway = await _line_for(access_lines, "/api/v1/dead/x")
    assert (bad_gateway.fields["status"], bad_gateway.fields["targetService"]) == (502, "dead-service")
    assert bad_gateway.line["requestId"] == "dead-1"
    assert bad_gateway.level == logging.ERROR
