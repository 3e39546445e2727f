"""The gateway's pages over HTTP: the merged OpenAPI document, the dashboard's data and event stream,
static files, and the envelopes, methods and networks of /api/docs and /dashboard."""
from __future__ import annotations

import asyncio
import copy
import gzip
import html
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate
from swagger_ui_bundle import swagger_ui_path

from gateway.app import Gateway, create_app
from gateway.config.settings import MEMORY_URL, Settings
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
    raw_request,
)
from tests.support import service, write_registry

PAGES = Path(__file__).resolve().parents[2] / "gateway" / "pages"
SWAGGER = Path(str(swagger_ui_path))

USERS_SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "user-service", "version": "1.0.0"},
    "paths": {
        "/users/profile": {
            "get": {
                "operationId": "getProfile",
                "summary": "The caller's profile",
                "responses": {
                    "200": {
                        "description": "The profile",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Profile"}}},
                    }
                },
            }
        },
        "/auth/login": {"post": {"operationId": "login", "responses": {"200": {"description": "A token"}}}},
        "/health": {"get": {"responses": {"200": {"description": "Not routed by the gateway"}}}},
    },
    "components": {
        "schemas": {"Profile": {"type": "object", "properties": {"email": {"type": "string", "nullable": True}}}}
    },
}

CallMe = Callable[[], Awaitable[Any]]
Make = Callable[..., Awaitable[tuple[Client, Gateway]]]
T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T]], what: str, timeout: float = 5.0) -> T:
    """Poll `check` until it returns something truthy; fail with `what` at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


@dataclass
class UserService:
    """An upstream standing in for user-service: its OpenAPI document, health, and answers by path."""

    spec: Any = field(default_factory=lambda: copy.deepcopy(USERS_SPEC))
    spec_status: int = 200
    spec_body: bytes | None = None
    """Sent instead of the JSON of `spec` when set."""
    spec_delay: float = 0.0
    spec_chunked: bool = False
    """Send the document in chunks without a Content-Length."""
    spec_requests: list[str] = field(default_factory=list)
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/openapi.json", self.openapi)
        app.router.add_route("*", "/{tail:.*}", self.answer)
        return app

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        self.spec_requests.append(request.headers.get("User-Agent", ""))
        if self.spec_delay:
            await asyncio.sleep(self.spec_delay)
        body = self.spec_body if self.spec_body is not None else orjson.dumps(self.spec)
        if not self.spec_chunked:
            return web.Response(status=self.spec_status, body=body, content_type="application/json")
        response = web.StreamResponse(status=self.spec_status, headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for start in range(0, len(body), 400):
            await response.write(body[start : start + 400])
        await response.write_eof()
        return response

    async def answer(self, request: web.Request) -> web.Response:
        # /users/fail answers 503, everything else 200.
        return web.json_response({"path": request.path}, status=503 if request.path == "/users/fail" else 200)


@pytest.fixture
async def users(start_upstream: StartUpstream) -> UserService:
    upstream = UserService()
    upstream.url = await start_upstream(upstream.app())
    return upstream


@pytest.fixture
def make(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], settings: Settings, registry_path: Path
) -> Make:
    """A served gateway over the services given; `tune(gw)` runs before the app starts."""

    async def make_gateway(
        services: dict[str, Any], tune: Callable[[Gateway], None] | None = None, **top: Any
    ) -> tuple[Client, Gateway]:
        gw = Gateway(settings, write_registry(registry_path, services, **top))
        if tune is not None:
            tune(gw)
        client = await aiohttp_client(TestServer(create_app(gw), host="127.0.0.1"))
        return client, gw

    return make_gateway


def two_services(users_url: str, orders_url: str, **options: Any) -> dict[str, Any]:
    return {
        "user-service": service(
            [users_url], {"prefix": "/api/v1/users", "auth": True}, "/api/v1/auth", **options
        ),
        "order-service": service([orders_url], "/api/v1/orders", **options),
    }


async def openapi(client: Client, path: str = "/api/docs/openapi.json") -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == JSON_TYPE
    return await response.json()


async def merged(client: Client, service_name: str = "user-service") -> Any:
    """The OpenAPI document once the service's own document is part of it."""

    async def check() -> Any:
        document = await openapi(client)
        status = document["x-kadai"]["services"].get(service_name, {}).get("status")
        return document if status == "merged" else None

    return await eventually(check, f"{service_name}'s document merged")


async def test_the_document_merges_the_services_own_under_its_routes(
    make: Make, users: UserService, start_recorder: StartRecorder
) -> None:
    orders = await start_recorder("orders")  # answers /openapi.json with its echo: not an OpenAPI document
    client, _ = await make(two_services(users.url, orders.url))

    document = await merged(client)

    validate(document)
    paths = document["paths"]
    assert paths["/api/v1/users/profile"]["get"]["summary"] == "The caller's profile"
    assert paths["/api/v1/users/profile"]["get"]["security"] == [{"bearerAuth": []}]
    assert paths["/api/v1/auth/login"]["post"]["security"] == []
    assert "/health" not in paths and "/api/v1/health" in paths  # the service's own health is not routed
    assert "/api/v1/users/{path}" not in paths and "/api/v1/auth/{path}" not in paths
    assert set(paths["/api/v1/orders/{path}"]) >= {"get", "post", "put", "patch", "delete"}
    assert document["components"]["schemas"]["user-service.Profile"]["properties"]["email"] == {
        "type": ["string", "null"]
    }
    for endpoint in ("/api/v1/health", "/api/v1/health/detailed", "/api/v1/gateway/status",
                     "/api/v1/gateway/services", "/metrics"):
        assert paths[endpoint]["get"]["tags"] == ["gateway"]
    services = document["x-kadai"]["services"]
    assert services["user-service"]["instance"] == users.url
    assert services["order-service"]["status"] == "unavailable"
    assert "not an OpenAPI 3 document" in services["order-service"]["error"]
    assert orders.paths == ["/openapi.json"]  # asked at the instance's own root, not under a prefix
    assert users.spec_requests == ["kadai-gateway-docs"]


async def test_documents_are_fetched_in_the_background_never_on_a_request(
    make: Make, users: UserService, start_recorder: StartRecorder
) -> None:
    orders = await start_recorder("orders")
    client, _ = await make(two_services(users.url, orders.url))
    await merged(client)

    for _ in range(5):
        await openapi(client)
        await openapi(client, "/api/docs/openapi-3.0.json")
        assert (await client.get("/api/v1/users/profile", headers={"Authorization": "Bearer x"})).status == 401
        assert (await client.get("/api/v1/auth/login")).status == 200

    assert len(users.spec_requests) == 1


async def test_nothing_is_fetched_until_the_docs_are_asked_for(make: Make, users: UserService) -> None:
    client, _ = await make({"user-service": service([users.url], "/api/v1/users")})
    for _ in range(20):
        assert (await client.get("/api/v1/users/profile")).status == 200
    assert (await client.get("/dashboard/data")).status == 200
    assert users.spec_requests == []

    document = await openapi(client)  # the first docs request waits for the first round

    assert users.spec_requests == ["kadai-gateway-docs"]
    assert document["x-kadai"]["services"]["user-service"]["status"] == "merged"
    assert "/api/v1/users/profile" in document["paths"]


async def test_the_30_rendition_for_swagger_ui_is_valid_openapi_30(
    make: Make, users: UserService, start_recorder: StartRecorder
) -> None:
    orders = await start_recorder("orders")
    client, _ = await make(two_services(users.url, orders.url))
    await merged(client)

    rendition = await openapi(client, "/api/docs/openapi-3.0.json")

    validate(rendition)
    assert rendition["openapi"] == "3.0.3"
    assert "/api/v1/users/profile" in rendition["paths"]
    assert rendition["components"]["schemas"]["user-service.Profile"]["properties"]["email"] == {
        "type": "string", "nullable": True,
    }


async def test_a_registry_reload_shows_up_in_the_docs(
    make: Make, users: UserService, start_recorder: StartRecorder, registry_path: Path
) -> None:
    orders = await start_recorder("orders")
    client, _ = await make({"order-service": service([orders.url], "/api/v1/orders")})
    first = await openapi(client)
    assert "/api/v1/users/profile" not in first["paths"]

    write_registry(registry_path, two_services(users.url, orders.url))

    document = await merged(client)
    assert document["x-kadai"]["configRevision"] == 2
    assert "/api/v1/users/profile" in document["paths"]
    assert "/api/v1/orders/{path}" in document["paths"]

    write_registry(registry_path, {"user-service": service([users.url], "/api/v1/users")})

    async def orders_gone() -> Any:
        document = await openapi(client)
        return document if "/api/v1/orders/{path}" not in document["paths"] else None

    document = await eventually(orders_gone, "order-service's routes gone")
    assert "order-service" not in document["x-kadai"]["services"]
    assert "/api/v1/auth/login" not in document["paths"]  # its route went with the reload


async def test_a_changed_document_is_refreshed_and_the_last_good_one_kept_when_refresh_fails(
    make: Make, users: UserService
) -> None:
    def often(gw: Gateway) -> None:
        gw.pages.specs.refresh = gw.pages.specs.retry = 0.2

    client, _ = await make({"user-service": service([users.url], "/api/v1/users")}, tune=often)
    await merged(client)
    users.spec["paths"]["/users/settings"] = {"get": {"responses": {"200": {"description": "Settings"}}}}

    async def refreshed() -> Any:
        document = await openapi(client)
        return document if "/api/v1/users/settings" in document["paths"] else None

    await eventually(refreshed, "the new path published")

    users.spec_status = 500

    async def failed() -> Any:
        document = await openapi(client)
        return document if document["x-kadai"]["services"]["user-service"]["error"] else None

    document = await eventually(failed, "the failed refresh reported")
    assert document["x-kadai"]["services"]["user-service"]["status"] == "merged"
    assert document["x-kadai"]["services"]["user-service"]["error"] == "/openapi.json answered 500"
    assert "/api/v1/users/settings" in document["paths"]


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        ({"spec_status": 404}, "/openapi.json answered 404"),
        ({"spec_body": b"<html>not json</html>"}, "/openapi.json is not JSON"),
        ({"spec": {"swagger": "2.0", "paths": {}}}, "not an OpenAPI 3 document (openapi: Swagger 2.0)"),
        ({"spec_body": b"[" + b"1," * 600 + b"1]"}, "/openapi.json is larger than 1000 bytes"),
        ({"spec_body": b"[" + b"1," * 600 + b"1]", "spec_chunked": True}, "/openapi.json is larger than 1000 bytes"),
        ({"spec_delay": 2.0}, "no answer within 0.2s"),
    ],
    ids=["404", "not-json", "swagger-2", "too-large", "too-large-chunked", "too-slow"],
)
async def test_a_document_that_cannot_be_used_leaves_the_generic_entry(
    make: Make, users: UserService, setup: dict[str, Any], error: str
) -> None:
    for name, value in setup.items():
        setattr(users, name, value)

    def strict(gw: Gateway) -> None:
        gw.pages.specs.timeout = 0.2
        gw.pages.specs.max_bytes = 1000

    client, _ = await make({"user-service": service([users.url], "/api/v1/users")}, tune=strict)

    async def reported() -> Any:
        document = await openapi(client)
        return document if document["x-kadai"]["services"]["user-service"].get("error") else None

    document = await reported_document(reported)
    reported_entry = document["x-kadai"]["services"]["user-service"]
    assert reported_entry["error"].startswith(error)
    assert reported_entry == {
        "status": "unavailable", "instance": users.url, "fetchedAt": None, "error": reported_entry["error"],
    }
    assert "/api/v1/users/{path}" in document["paths"]
    validate(document)


async def reported_document(check: CallMe) -> Any:
    return await eventually(check, "the failed fetch reported")


async def test_no_routable_instance_means_no_fetch(make: Make, users: UserService) -> None:
    def down(gw: Gateway) -> None:
        gw.table.services["user-service"].instances[0].state = InstanceState.UNHEALTHY

    client, _ = await make({"user-service": service([users.url], "/api/v1/users")}, tune=down)

    async def reported() -> Any:
        document = await openapi(client)
        return document if document["x-kadai"]["services"]["user-service"].get("error") else None

    document = await reported_document(reported)
    assert document["x-kadai"]["services"]["user-service"]["error"] == "no routable instance"
    assert users.spec_requests == []


async def test_openapi_json_answers_conditional_requests(make: Make, users: UserService) -> None:
    client, _ = await make({"user-service": service([users.url], "/api/v1/users")})
    await merged(client)
    response = await client.get("/api/docs/openapi.json")
    etag = response.headers["ETag"]

    again = await client.get("/api/docs/openapi.json", headers={"If-None-Match": etag})

    assert response.headers["Cache-Control"] == "no-cache"
    assert again.status == 304
    assert await again.read() == b""
    assert again.headers["ETag"] == etag


async def test_the_docs_page(make: Make, users: UserService) -> None:
    client, _ = await make({"user-service": service([users.url], "/api/v1/users")})

    response = await client.get("/api/docs", headers={"X-Request-ID": "docs-page"})
    html = await response.text()

    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["X-Request-ID"] == "docs-page"  # the EDGE middleware wrap the pages too
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert 'src="/api/docs/static/swagger-ui-bundle.js"' in html
    assert 'src="/api/docs/static/docs.js"' in html
    assert 'data-spec-url="/api/docs/openapi-3.0.json"' in html
    assert (await client.get("/api/docs/")).status == 200


@pytest.mark.parametrize(
    ("path", "source", "content_type", "cache_control"),
    [
        ("/api/docs/static/swagger-ui-bundle.js", SWAGGER / "swagger-ui-bundle.js", "text/javascript; charset=utf-8",
         "public, max-age=3600"),
        ("/api/docs/static/swagger-ui.css", SWAGGER / "swagger-ui.css", "text/css; charset=utf-8",
         "public, max-age=3600"),
        ("/api/docs/static/favicon-32x32.png", SWAGGER / "favicon-32x32.png", "image/png", "public, max-age=3600"),
        ("/api/docs/static/swagger-ui.css.map", SWAGGER / "swagger-ui.css.map", "application/json; charset=utf-8",
         "public, max-age=3600"),
        ("/api/docs/static/docs.js", PAGES / "static" / "docs.js", "text/javascript; charset=utf-8", "no-cache"),
        ("/dashboard/static/dashboard.js", PAGES / "static" / "dashboard.js", "text/javascript; charset=utf-8",
         "no-cache"),
        ("/dashboard/static/dashboard.css", PAGES / "static" / "dashboard.css", "text/css; charset=utf-8", "no-cache"),
        ("/dashboard/static/favicon.svg", PAGES / "static" / "favicon.svg", "image/svg+xml", "no-cache"),
    ],
    ids=["swagger-js", "swagger-css", "png", "source-map", "docs-js", "dashboard-js", "dashboard-css", "svg"],
)
async def test_static_files(
    make: Make, users: UserService, path: str, source: Path, content_type: str, cache_control: str
) -> None:
    client, _ = await make({"user-service": service([users.url], "/api/v1/users")})

    response = await raw_request(client, path)

    assert response.status == 200
    assert response.body == source.read_bytes()
    assert response.headers["Content-Type"] == content_type
    assert response.headers["Cache-Control"] == cache_control
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert re.fullmatch(r'"[0-9a-f]{20}"', response.headers["ETag"])
    assert "Content-Encoding" not in response.headers


async def test_static_files_are_compressed_revalidated_and_answer_head(make: Make, users: UserService) -> None:
    client, _ = await make({"user-service": service([users.url], "/api/v1/users")})
    path = "/api/docs/static/swagger-ui-bundle.js"
    original = (SWAGGER / "swagger-ui-bundle.js").read_bytes()

    plain = await raw_request(client, path)
    packed = await raw_request(client, path, headers=[("Accept-Encoding", "gzip, deflate")])
    revalidated = await raw_request(client, path, headers=[("If-None-Match", plain.headers["ETag"])])
    packed_again = await raw_request(
        client, path, headers=[("Accept-Encoding", "gzip"), ("If-None-Match", packed.headers["ETag"])]
    )
    head = await raw_request(client, path, method="HEAD")

    assert packed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(packed.body) == original
    assert len(packed.body) < len(original) / 2
    assert packed.headers["Vary"] == plain.headers["Vary"] == "Accept-Encoding"
    assert packed.headers["ETag"] != plain.headers["ETag"]
    assert (revalidated.status, revalidated.body) == (304, b"")
    assert (packed_again.status, packed_again.body) == (304, b"")
    assert "Content-Encoding" not in packed_again.headers
    assert head.status == 200 and head.body == b""
    assert head.headers["Content-Length"] == str(len(original))


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("POST", "/api/docs", 405),
        ("PUT", "/api/docs/openapi.json", 405),
        ("DELETE", "/dashboard", 405),
        ("POST", "/dashboard/data", 405),
        ("POST", "/dashboard/events", 405),
        ("PATCH", "/api/docs/static/docs.js", 405),
        ("GET", "/api/docs/static/nope.js", 404),
        ("POST", "/api/docs/static/nope.js", 404),
        ("GET", "/api/docs/static/", 404),
        ("GET", "/api/docs/static/vendor/docs.js", 404),
        ("GET", "/api/docs/static/index.html", 404),
        ("GET", "/dashboard/static/swagger-ui-bundle.js", 404),
        ("GET", "/dashboard/nope", 404),
        ("GET", "/api/docs/static/../../../setup.cfg", 404),
        ("GET", "/api/docs/static/%2e%2e/%2e%2e/setup.cfg", 404),
        ("GET", "/api/docs/static/..%2f..%2fsetup.cfg", 400),
        ("GET", "/api/docsx", 404),
    ],
    ids=[
        "post-docs", "put-openapi", "delete-dashboard", "post-data", "post-events", "patch-static", "unknown-file",
        "unknown-file-any-method", "no-file-name", "sub-folder", "swagger-html-not-served", "swagger-not-on-dashboard",
        "unknown-dashboard-page", "dot-segments", "encoded-dot-segments", "encoded-slashes", "not-under-docs",
    ],
)
async def test_errors_use_the_envelope(make: Make, users: UserService, method: str, target: str, status: int) -> None:
    client, _ = await make({"user-service": service([users.url], "/api/v1/users")})

    response = await raw_request(client, target, method=method, headers=[("X-Request-ID", "pages-error")])

    assert response.status == status
    assert response.headers["Content-Type"] == JSON_TYPE
    assert_error_envelope(response.json(), status, "pages-error")
    if status == 405:
        assert response.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/dashboard", 403),
        ("/dashboard/data", 403),
        ("/dashboard/events", 403),
        ("/dashboard/static/dashboard.js", 403),
        ("/dashboard/nope", 403),
        ("/api/docs", 200),
        ("/api/docs/openapi.json", 200),
        ("/api/docs/openapi-3.0.json", 200),
        ("/api/docs/static/docs.js", 200),
    ],
    ids=["dashboard", "data", "events", "dashboard-static", "dashboard-unknown", "docs", "openapi", "openapi-30",
         "docs-static"],
)
async def test_admin_networks_close_the_dashboard_not_the_docs(
    make: Make, users: UserService, path: str, status: int
) -> None:
    client, _ = await make(
        {"user-service": service([users.url], "/api/v1/users")}, gateway={"admin_networks": ["10.0.0.0/8"]}
    )

    response = await client.get(path)

    assert response.status == status
    if status == 403:
        assert_error_envelope(await response.json(), 403)


async def test_the_dashboard_page_has_one_row_per_service_with_its_instances(
    make: Make, users: UserService, start_recorder: StartRecorder
) -> None:
    orders = await start_recorder("orders")
    spare = await start_recorder("orders-spare")
    client, _ = await make(
        {
            "user-service": service([users.url], "/api/v1/users", "/api/v1/auth"),
            "order-service": service([orders.url, spare.url], "/api/v1/orders"),
        }
    )

    response = await client.get("/dashboard")
    html = await response.text()

    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "'unsafe-inline'" not in response.headers["Content-Security-Policy"]
    rows = re.findall(r'<tr class="service" data-service="([^"]+)" data-state="([^"]+)">(.*?)</tr>', html, re.DOTALL)
    assert [(name, state) for name, state, _ in rows] == [("user-service", "unchecked"), ("order-service", "unchecked")]
    instances = {name: re.findall(r'data-instance="([^"]+)"', body) for name, _, body in rows}
    assert instances == {"user-service": [users.url], "order-service": [orders.url, spare.url]}
    assert "/api/v1/auth /api/v1/users" in rows[0][2]
    assert 'src="/dashboard/static/dashboard.js"' in html
    assert 'data-events-url="/dashboard/events"' in html and 'data-data-url="/dashboard/data"' in html


async def dashboard_data(client: Client) -> Any:
    response = await client.get("/dashboard/data")
    assert response.status == 200, await response.text()
    assert response.headers["Cache-Control"] == "no-store"
    return assert_success_envelope(await response.json())


async def test_dashboard_data_reports_the_last_minute(
    make: Make, users: UserService, start_recorder: StartRecorder
) -> None:
    orders = await start_recorder("orders")
    client, gw = await make(two_services(users.url, orders.url))
    for path in ["/api/v1/auth/ok"] * 6 + ["/api/v1/users/fail"] * 2:
        await client.get(path, headers={} if "auth" in path else {"Authorization": "Bearer nope"})

    data = await dashboard_data(client)

    assert data["windowSeconds"] == 60
    assert data["config"] == {
        "source": str(gw.registry_path), "revision": 1, "digest": gw.table.config.digest[:12], "lastReload": None,
    }
    assert data["gateway"]["status"] == "ok"
    services = {entry["name"]: entry for entry in data["services"]}
    assert list(services) == ["user-service", "order-service"]
    user = services["user-service"]
    # The token check answers the two /users requests with 401 before they reach the instance.
    assert (user["requests"], user["errors"]) == (8, 0)
    assert user["requestsPerSecond"] > 0
    assert user["p99Ms"] is not None and 0 < user["p99Ms"] < 5000
    assert user["routes"] == ["/api/v1/auth", "/api/v1/users"]
    assert user["instances"][0]["url"] == users.url
    assert user["instances"][0]["breaker"]["state"] == "closed"
    assert services["order-service"]["requests"] == 0
    assert services["order-service"]["p99Ms"] is None


async def test_dashboard_data_counts_5xx(make: Make, users: UserService) -> None:
    client, _ = await make({"user-service": service([users.url], "/api/v1/users", retry=False)})
    for path in ["/api/v1/users/ok"] * 3 + ["/api/v1/users/fail"]:
        await client.get(path)

    user = (await dashboard_data(client))["services"][0]

    assert (user["requests"], user["errors"], user["errorRate"]) == (4, 1, 0.25)


@pytest.mark.parametrize(
    "limiter", [pytest.param("redis", marks=pytest.mark.redis), "memory"], ids=["redis", "embedded"]
)
async def test_dashboard_data_counts_rate_limit_rejections(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    request: pytest.FixtureRequest,
    users: UserService,
    registry_path: Path,
    limiter: str,
) -> None:
    # The shared Redis or the in-process limiter of REDIS_URL=memory:// (what `kadai up` runs without Redis).
    redis_url = request.getfixturevalue("redis_server") if limiter == "redis" else MEMORY_URL
    tier = "pages_" + secrets.token_hex(4)  # a bucket of its own in the shared Redis
    limit = {tier: {"limit": 2, "window": "1m"}, "second": False, "ten_seconds": False, "minute": False}
    registry = write_registry(
        registry_path,
        {
            "user-service": service([users.url], {"prefix": "/api/v1/users", "rate_limit": limit}),
            "order-service": service([users.url], "/api/v1/orders"),
        },
    )
    gw = Gateway(Settings(redis_url=redis_url, reload_interval=0.1), registry)
    client = await aiohttp_client(TestServer(create_app(gw), host="127.0.0.1"))
    statuses = [(await client.get("/api/v1/users/ok")).status for _ in range(5)]
    assert statuses == [200, 200, 429, 429, 429]

    data = await dashboard_data(client)

    services = {entry["name"]: entry for entry in data["services"]}
    assert (services["user-service"]["rateLimited"], services["user-service"]["rateLimitedTotal"]) == (3, 3)
    assert services["user-service"]["requests"] == 5
    assert services["user-service"]["instances"][0]["requests"] == 2  # the refused ones reached no instance
    assert services["order-service"]["rateLimited"] == 0
    again = await dashboard_data(client)  # read twice, counted once
    assert again["services"][0]["rateLimited"] == 3
    page = await (await client.get("/dashboard")).text()
    assert re.search(r'data-service="user-service".*?<td class="num" data-field="rateLimited">3</td>', page, re.DOTALL)


async def start_failing(start_upstream: StartUpstream, status: int = 500) -> str:
    """An instance that answers every request with `status`."""

    async def fail(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path}, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fail)
    return await start_upstream(app)


def instance_items(page: str) -> dict[str, str]:
    """Each instance's <li> in the dashboard page, by its URL."""
    return dict(re.findall(r'<li class="instance" data-instance="([^"]+)"[^>]*>(.*?)</li>', page, re.DOTALL))


def shown_figures(item: str) -> dict[str, str]:
    """The figures an instance row shows, by data-figure."""
    return {name: html.unescape(text) for name, text in re.findall(r'data-figure="(\w+)">([^<]*)<', item)}


async def test_dashboard_data_counts_requests_and_5xx_on_the_instance_that_answered(
    make: Make, users: UserService, start_upstream: StartUpstream
) -> None:
    failing = await start_failing(start_upstream)
    client, gw = await make({"user-service": service([users.url, failing], "/api/v1/users", retry=False)})
    for _ in range(4):  # round robin: two each
        await client.get("/api/v1/users/ok")
    gw.table.services["user-service"].instances[1].state = InstanceState.UNHEALTHY
    for _ in range(3):  # all to the one left
        assert (await client.get("/api/v1/users/ok")).status == 200

    data = await dashboard_data(client)

    user = data["services"][0]
    healthy, broken = user["instances"]
    assert (healthy["url"], broken["url"]) == (users.url, failing)
    assert (healthy["requests"], healthy["errors"], healthy["errorRate"]) == (5, 0, 0.0)
    assert (broken["requests"], broken["errors"], broken["errorRate"]) == (2, 2, 1.0)
    assert (user["requests"], user["errors"]) == (7, 2)
    for instance in (healthy, broken):
        assert instance["requestsPerSecond"] > 0
        assert instance["p99Ms"] is not None and 0 < instance["p99Ms"] < 5000
    items = instance_items(await (await client.get("/dashboard")).text())
    assert shown_figures(items[failing]) == {
        "rate": f"{broken['requestsPerSecond']:.2f}/s", "errors": "100.0%", "p99": f"{broken['p99Ms']:.1f} ms",
    }
    assert shown_figures(items[users.url])["errors"] == "0.0%"


async def test_an_attempt_a_retry_replaced_counts_on_the_instance_that_answered_it(
    make: Make, users: UserService, start_upstream: StartUpstream
) -> None:
    failing = await start_failing(start_upstream, 503)
    client, _ = await make({"user-service": service([failing, users.url], "/api/v1/users", retry={"backoff": "1ms"})})
    for _ in range(4):  # each first attempt goes to the failing one (the retry's pick moves the round robin
        assert (await client.get("/api/v1/users/ok")).status == 200  # past users), each retry to users

    data = await dashboard_data(client)

    user = data["services"][0]
    broken, healthy = user["instances"]
    assert (broken["url"], healthy["url"]) == (failing, users.url)
    assert (broken["requests"], broken["errors"]) == (4, 4)  # the 503s the clients never saw
    assert (healthy["requests"], healthy["errors"]) == (4, 0)
    assert broken["p99Ms"] is not None
    assert (user["requests"], user["errors"]) == (4, 0)  # the service: what the clients got


async def test_an_instance_without_requests_shows_no_p99(make: Make, users: UserService) -> None:
    client, _ = await make({"user-service": service([users.url], "/api/v1/users")})

    data = await dashboard_data(client)
    page = await (await client.get("/dashboard")).text()

    instance = data["services"][0]["instances"][0]
    assert (instance["requests"], instance["requestsPerSecond"], instance["errors"], instance["p99Ms"]) == (
        0, 0.0, 0, None,
    )
    assert shown_figures(instance_items(page)[users.url]) == {"rate": "0.00/s", "errors": "0.0%", "p99": "—"}


async def test_dashboard_data_shows_an_open_breaker(make: Make, users: UserService) -> None:
    breaker = {"fail_max": 2, "reset_timeout": "20s"}
    client, _ = await make({"user-service": service([users.url], "/api/v1/users", retry=False, breaker=breaker)})
    assert [(await client.get("/api/v1/users/fail")).status for _ in range(3)] == [503, 503, 503]

    data = await dashboard_data(client)

    user = data["services"][0]
    instance = user["instances"][0]
    assert instance["breaker"]["state"] == "open"
    assert 0 < instance["breaker"]["retryInSeconds"] <= 20
    # The third 503 was the open breaker's own: the service counts it, the instance never saw it.
    assert (user["requests"], user["errors"]) == (3, 3)
    assert (instance["requests"], instance["errors"]) == (2, 2)
    item = instance_items(await (await client.get("/dashboard")).text())[users.url]
    assert '<span class="badge breaker-open">breaker open</span>' in item


async def test_the_dashboard_shows_a_registry_reload(
    make: Make, users: UserService, start_recorder: StartRecorder, registry_path: Path
) -> None:
    spare = await start_recorder("spare")
    orders = await start_recorder("orders")
    client, gw = await make({"user-service": service([users.url, spare.url], "/api/v1/users")})
    for _ in range(4):
        assert (await client.get("/api/v1/users/ok")).status == 200

    async def revision(number: int) -> Any:
        data = await dashboard_data(client)
        return data if data["config"]["revision"] == number else None

    # The spare leaves the registry, order-service arrives.
    write_registry(
        registry_path,
        {
            "user-service": service([users.url], "/api/v1/users"),
            "order-service": service([orders.url], "/api/v1/orders"),
        },
    )
    data = await eventually(lambda: revision(2), "revision 2 on the dashboard")

    last = data["config"]["lastReload"]
    assert (last["ok"], last["revision"], last["error"]) == (True, 2, None)
    assert last["digest"] == data["config"]["digest"] == gw.table.config.digest[:12]
    services = {entry["name"]: entry for entry in data["services"]}
    assert list(services) == ["user-service", "order-service"]
    assert [instance["url"] for instance in services["user-service"]["instances"]] == [users.url]
    assert services["user-service"]["instances"][0]["requests"] == 2  # kept across the reload with its instance
    assert services["order-service"]["instances"][0]["requests"] == 0
    page = await (await client.get("/dashboard")).text()
    assert f'<dd id="config">revision 2 · {data["config"]["digest"]}</dd>' in page
    assert re.search(r'<dd id="reload" data-ok="true">ok at [^<]+</dd>', page)
    assert re.search(r'<pre id="reload-error" class="reload-error" hidden></pre>', page)
    assert 'data-service="order-service"' in page and f'data-instance="{spare.url}"' not in page

    # Back in the registry, the spare is a new instance: its old minute went with the one removed.
    write_registry(registry_path, {"user-service": service([users.url, spare.url], "/api/v1/users")})
    data = await eventually(lambda: revision(3), "revision 3 on the dashboard")

    assert data["config"]["lastReload"]["ok"] is True
    assert [(i["url"], i["requests"]) for i in data["services"][0]["instances"]] == [(users.url, 2), (spare.url, 0)]


async def test_the_dashboard_shows_a_failed_reload_and_its_error(
    make: Make, users: UserService, registry_path: Path
) -> None:
    client, gw = await make({"user-service": service([users.url], "/api/v1/users")})
    digest = gw.table.config.digest[:12]
    registry_path.write_text("version: 1\nservices: {user-service: {instances: [nowhere], routes: []}\n")

    async def failed() -> Any:
        data = await dashboard_data(client)
        last = data["config"]["lastReload"]
        return data if last is not None and last["ok"] is False else None

    data = await eventually(failed, "the failed reload on the dashboard")

    last = data["config"]["lastReload"]
    assert data["config"]["revision"] == last["revision"] == 1
    assert data["config"]["digest"] == digest  # the last good configuration still serves
    assert str(registry_path) in last["error"]
    assert (await client.get("/api/v1/users/ok")).status == 200
    page = await (await client.get("/dashboard")).text()
    assert f'<dd id="reload" data-ok="false">failed at {last["at"]}</dd>' in page
    shown = re.search(r'<pre id="reload-error" class="reload-error"( hidden)?>(.*?)</pre>', page, re.DOTALL)
    assert shown is not None and shown[1] is None  # not hidden
    assert html.unescape(shown[2]) == last["error"]
    assert f'<dd id="config">revision 1 · {digest}</dd>' in page


async def read_event(response: aiohttp.ClientResponse, timeout: float = 5.0) -> tuple[dict[str, str], Any]:
    """One server-sent event: its fields and its data parsed as JSON."""
    raw = await asyncio.wait_for(response.content.readuntil(b"\n\n"), timeout)
    fields = dict(line.split(": ", 1) for line in raw.decode().strip("\n").split("\n"))
    return fields, orjson.loads(fields["data"])


async def test_the_event_stream_pushes_snapshots(make: Make, users: UserService) -> None:
    def quick(gw: Gateway) -> None:
        gw.pages.dashboard.interval = 0.1

    client, gw = await make({"user-service": service([users.url], "/api/v1/users")}, tune=quick)
    dashboard = gw.pages.dashboard

    async with client.get("/dashboard/events", headers={"X-Request-ID": "live-page"}) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Request-ID"] == "live-page"
        fields, first = await read_event(response)
        assert fields["retry"] == "2000"
        assert [entry["name"] for entry in first["services"]] == ["user-service"]
        assert first["services"][0]["state"] == "unchecked"
        _, second = await read_event(response)
        assert second["generatedAt"] >= first["generatedAt"]

        gw.table.services["user-service"].instances[0].state = InstanceState.UNHEALTHY

        async def down() -> Any:
            fields, snapshot = await read_event(response)
            assert int(fields["id"]) > 0
            return snapshot["services"][0]["state"] == "down"

        await eventually(down, "a snapshot with the service down")
        assert len(dashboard.streams) == 1

    async def closed() -> bool:
        return not dashboard.streams

    await eventually(closed, "the stream forgotten once the page went away")


async def test_head_on_the_event_stream_opens_none(make: Make, users: UserService) -> None:
    client, gw = await make({"user-service": service([users.url], "/api/v1/users")})

    response = await client.head("/dashboard/events")

    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert not gw.pages.dashboard.streams


async def test_too_many_event_streams_get_503(make: Make, users: UserService) -> None:
    def one(gw: Gateway) -> None:
        gw.pages.dashboard.max_streams = 1

    client, gw = await make({"user-service": service([users.url], "/api/v1/users")}, tune=one)

    async with client.get("/dashboard/events") as first:
        await read_event(first)
        refused = await client.get("/dashboard/events")
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "5"
        body = await refused.json()
        assert_error_envelope(body, 503)
        assert body["details"] == {"maxStreams": 1}

    async def freed() -> bool:
        return not gw.pages.dashboard.streams

    await eventually(freed, "the first stream closed")
    async with client.get("/dashboard/events") as again:
        assert again.status == 200


async def test_open_event_streams_do_not_hold_up_shutdown(
    settings: Settings, users: UserService, registry_path: Path
) -> None:
    gw = Gateway(settings, write_registry(registry_path, {"user-service": service([users.url], "/api/v1/users")}))
    runner = web.AppRunner(create_app(gw), handle_signals=False, access_log=None, shutdown_timeout=20.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/dashboard/events") as response,
    ):
        await read_event(response)
        started = loop.time()
        cleanup = asyncio.create_task(runner.cleanup())
        rest = await asyncio.wait_for(response.content.read(), 5.0)  # ends instead of hanging
        await asyncio.wait_for(cleanup, 5.0)

    assert loop.time() - started < 3.0  # not the 20 s the drain would allow
    assert rest == b"" or rest.endswith(b"\n\n")


async def test_pages_are_counted_as_the_gateways_own_requests(
    gateway_client: GatewayClient, users: UserService, registry_path: Path
) -> None:
    registry = write_registry(registry_path, {"user-service": service([users.url], "/api/v1/users")})
    client = await gateway_client(registry)
    for path in ("/api/docs", "/api/docs/openapi.json", "/dashboard", "/dashboard/data"):
        assert (await client.get(path)).status == 200

    text = await (await client.get("/metrics")).text()

    assert metric_value(text, "kadai_gateway_requests_total", service="gateway", method="GET", status_class="2xx") == 4
