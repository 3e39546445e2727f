"""Routing and path mapping: prefixes, strip_prefix, instance base paths, methods, balancing, path escapes."""
from __future__ import annotations

from pathlib import Path

import pytest
from yarl import URL

from gateway.keys import GATEWAY_KEY
from tests.integration.helpers import (
    GatewayClient,
    Recorder,
    StartRecorder,
    assert_error_envelope,
    raw_request,
    users_registry,
)
from tests.support import service, write_registry


async def test_routes_to_upstream_and_strips_version(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))

    response = await client.get("/api/v1/users/profile?x=1")

    assert response.status == 200
    body = await response.json()
    assert body["upstream"] == "users"
    assert body["rawPath"] == "/users/profile?x=1"
    assert response.headers["X-Gateway-Service"] == "user-service"
    assert client.app[GATEWAY_KEY].table.revision == 1


@pytest.mark.parametrize(
    ("target", "upstream_target"),
    [
        ("/api/v1/users/profile", "/users/profile"),
        ("/api/v1/users", "/users"),
        ("/api/v1/users/", "/users/"),
        ("/api/v1/users/profile/", "/users/profile/"),
        ("/api/v1/users/profile?q=a%20b+c", "/users/profile?q=a%20b+c"),
        ("/api/v1/users/profile?tag=1&tag=2&tag=1", "/users/profile?tag=1&tag=2&tag=1"),
        ("/api/v1/users/p?next=%2Fhome%3Fa%3D1&empty=&flag", "/users/p?next=%2Fhome%3Fa%3D1&empty=&flag"),
        ("/api/v1/users/p?q=%7e%7E~&x=%2e%2e/..//", "/users/p?q=%7e%7E~&x=%2e%2e/..//"),
        ("/api/v1/users/a%20b/c+d?q=%20", "/users/a%20b/c+d?q=%20"),
        ("/api/v1/users/caf%C3%A9?name=%C3%A9", "/users/caf%C3%A9?name=%C3%A9"),
        ("/api/v1//users/./p?x=%2e%2e/..//&y=%20+&y=", "/users/p?x=%2e%2e/..//&y=%20+&y="),
    ],
    ids=[
        "plain", "prefix-only", "prefix-trailing-slash", "trailing-slash", "space-and-plus", "repeated-keys",
        "encoded-reserved", "dots-in-query-untouched", "encoded-path-segment", "utf8-percent-encoded",
        "normalised-path-keeps-query",
    ],
)
async def test_path_and_query_reach_the_upstream_intact(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    target: str,
    upstream_target: str,
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))

    response = await raw_request(client, target)

    assert response.status == 200, response.body
    assert users.paths == [upstream_target]


@pytest.mark.parametrize(
    ("target", "upstream", "upstream_target"),
    [
        ("/api/v1/users/admin/reports", "admin", "/users/admin/reports"),
        ("/api/v1/users/admin", "admin", "/users/admin"),
        ("/api/v1/users/admin/", "admin", "/users/admin/"),
        ("/api/v1/users/administrators", "users", "/users/administrators"),
        ("/api/v1/users/42/admin", "users", "/users/42/admin"),
        ("/api/v1/users", "users", "/users"),
    ],
    ids=["below-longer", "longer-exact", "longer-slash", "not-a-segment-boundary", "later-segment", "shorter-exact"],
)
async def test_longest_prefix_wins_across_services(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    target: str,
    upstream: str,
    upstream_target: str,
) -> None:
    users = await start_recorder("users")
    admin = await start_recorder("admin")
    registry = write_registry(
        registry_path,
        {
            "users-service": service([users.url], "/api/v1/users"),
            "admin-service": service([admin.url], "/api/v1/users/admin"),
        },
    )
    client = await gateway_client(registry)

    response = await client.get(URL(target, encoded=True))

    assert response.status == 200
    body = await response.json()
    assert body["upstream"] == upstream
    assert body["rawPath"] == upstream_target
    assert response.headers["X-Gateway-Service"] == f"{upstream}-service"


@pytest.mark.parametrize("target", ["/api/v1/usersx", "/api/v1/use", "/api/v1", "/", "/users/profile"])
async def test_prefix_matches_only_on_segment_boundaries(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, target: str
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))

    response = await client.get(target)

    assert response.status == 404
    assert_error_envelope(await response.json(), 404)
    assert users.received == []


@pytest.mark.parametrize(
    ("strip_prefix", "base_path", "target", "upstream_target"),
    [
        ("", "", "/api/v1/users/x?a=1", "/api/v1/users/x?a=1"),
        ("", "/base", "/api/v1/users/x", "/base/api/v1/users/x"),
        ("/api/v1", "/base", "/api/v1/users/x?a=%20", "/base/users/x?a=%20"),
        ("/api/v1", "/base/", "/api/v1/users/x", "/base/users/x"),
        ("/api/v1", "/deep/er/base", "/api/v1/users", "/deep/er/base/users"),
        ("/api/v1/users", "", "/api/v1/users/x", "/x"),
        ("/api/v1/users", "", "/api/v1/users", "/"),
    ],
    ids=[
        "no-strip", "no-strip-base-path", "base-path", "base-path-trailing-slash", "deep-base-path",
        "strip-whole-prefix", "strip-whole-prefix-exact",
    ],
)
async def test_strip_prefix_and_instance_base_path(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    strip_prefix: str,
    base_path: str,
    target: str,
    upstream_target: str,
) -> None:
    users = await start_recorder("users")
    registry = write_registry(
        registry_path,
        {"user-service": service([users.url + base_path], "/api/v1/users", strip_prefix=strip_prefix)},
    )
    client = await gateway_client(registry)

    response = await raw_request(client, target)

    assert response.status == 200, response.body
    assert users.paths == [upstream_target]


async def test_instance_base_path_keeps_its_percent_encoding(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    registry = write_registry(registry_path, {"user-service": service([users.url + "/my%20base"], "/api/v1/users")})
    client = await gateway_client(registry)

    response = await raw_request(client, "/api/v1/users/x")

    assert response.status == 200, response.body
    assert users.paths == ["/my%20base/users/x"]


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("GET", b""),
        ("POST", b'{"name": "ada"}'),
        ("PUT", b"put body \x00\xff binary"),
        ("PATCH", b'[{"op": "replace"}]'),
        ("DELETE", b"delete body"),
        ("DELETE", b""),
        ("OPTIONS", b"options body"),
        ("HEAD", b""),
    ],
    ids=["GET", "POST", "PUT", "PATCH", "DELETE", "DELETE-empty", "OPTIONS", "HEAD"],
)
async def test_every_method_is_forwarded_with_its_body(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, method: str, body: bytes
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))

    response = await client.request(method, "/api/v1/users/42", data=body or None)

    assert response.status == 200
    assert len(users.received) == 1
    seen = users.last
    assert (seen.method, seen.raw_path, seen.body) == (method, "/users/42", body)
    if body:
        assert seen.header("Content-Length") == str(len(body))
    if method == "HEAD":
        assert await response.read() == b""
    else:
        assert (await response.json())["method"] == method


async def test_round_robin_across_instances(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    first = await start_recorder("first")
    second = await start_recorder("second")
    registry = write_registry(registry_path, {"user-service": service([first.url, second.url], "/api/v1/users")})
    client = await gateway_client(registry)

    answered_by = []
    for _ in range(6):
        response = await client.get("/api/v1/users/x")
        assert response.status == 200
        answered_by.append((await response.json())["upstream"])

    assert answered_by in (["first", "second"] * 3, ["second", "first"] * 3)
    assert len(first.received) == len(second.received) == 3


# Path escapes: the raw target goes over a socket exactly as written.

_ESCAPES: list[tuple[str, str, int, str | None, str | None]] = [
    ("dotdot-into-sibling", "/api/v1/users/../orders/x", 200, "orders", "/orders/x"),
    ("encoded-dotdot-into-sibling", "/api/v1/users/%2e%2e/orders/x", 200, "orders", "/orders/x"),
    ("upper-encoded-dotdot", "/api/v1/users/%2E%2E/orders/y?a=1", 200, "orders", "/orders/y?a=1"),
    ("encoded-dotdot-out-of-api", "/api/v1/users/%2e%2e/%2e%2e/secret", 404, None, None),
    ("dotdot-out-of-api", "/api/v1/users/../../secret", 404, None, None),
    ("dotdot-above-root", "/api/v1/users/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", 400, None, None),
    ("leading-dotdot", "/../api/v1/users/x", 400, None, None),
    ("dotdot-back-into-route", "/api/v1/users/a/b/../../c", 200, "users", "/users/c"),
    ("dot-segments", "/api/v1/users/./profile", 200, "users", "/users/profile"),
    ("trailing-dot-keeps-slash", "/api/v1/users/./profile/.", 200, "users", "/users/profile/"),
    ("trailing-dotdot-keeps-slash", "/api/v1/users/x/y/..", 200, "users", "/users/x/"),
    ("double-slashes", "/api/v1//users///profile", 200, "users", "/users/profile"),
    ("leading-double-slash", "//api/v1/users/profile", 200, "users", "/users/profile"),
    ("encoded-slash-lower", "/api/v1/users/a%2fb", 400, None, None),
    ("encoded-slash-upper", "/api/v1/users/..%2F..%2Fsecret", 400, None, None),
    ("encoded-nul", "/api/v1/users/a%00b", 400, None, None),
    ("encoded-cr", "/api/v1/users/a%0dX-Injected:%201", 400, None, None),
    ("encoded-tab", "/api/v1/users/a%09b", 400, None, None),
    ("encoded-del", "/api/v1/users/a%7fb", 400, None, None),
    ("encoded-backslash", "/api/v1/users/..%5c..%5csecret", 400, None, None),
    ("dotdot-with-params", "/api/v1/users/..;/orders/x", 400, None, None),
    ("dot-with-params", "/api/v1/users/.;x/profile", 400, None, None),
    ("encoded-dotdot-with-params", "/api/v1/users/%2e%2e;jsessionid=1/orders", 400, None, None),
    ("double-encoded-dotdot-stays-literal", "/api/v1/users/%252e%252e/x", 200, "users", "/users/%252e%252e/x"),
]


@pytest.mark.parametrize(
    ("target", "status", "upstream", "upstream_target"),
    [case[1:] for case in _ESCAPES],
    ids=[case[0] for case in _ESCAPES],
)
async def test_path_escapes_are_normalised_or_refused(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    target: str,
    status: int,
    upstream: str | None,
    upstream_target: str | None,
) -> None:
    recorders = {"users": await start_recorder("users"), "orders": await start_recorder("orders")}
    registry = write_registry(
        registry_path,
        {
            "user-service": service([recorders["users"].url], "/api/v1/users"),
            "order-service": service([recorders["orders"].url], "/api/v1/orders"),
        },
    )
    client = await gateway_client(registry)

    response = await raw_request(client, target)

    assert response.status == status, response.body
    if upstream is None:
        assert_error_envelope(response.json(), status, response.headers["X-Request-ID"])
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert all(not recorder.received for recorder in recorders.values())
    else:
        assert response.json()["upstream"] == upstream
        assert recorders[upstream].paths == [upstream_target]
        assert all(not r.received for name, r in recorders.items() if name != upstream)
    for recorder in recorders.values():
        _assert_no_dot_segments(recorder)


@pytest.mark.parametrize("target", ["/api/v1/users/a%0ab", "/api/v1/users/a%0d%0aX-Injected:%201"], ids=["lf", "crlf"])
async def test_encoded_newline_is_refused_by_the_gateway(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, target: str
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))

    response = await raw_request(client, target, headers=[("X-Request-ID", "newline-probe")])

    assert users.received == []
    assert response.status == 400, response.body
    assert_error_envelope(response.json(), 400, "newline-probe")
    assert response.headers["X-Request-ID"] == "newline-probe"


async def test_escapes_through_a_client_library_with_encoded_url(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    orders = await start_recorder("orders")
    registry = write_registry(
        registry_path,
        {
            "user-service": service([users.url], "/api/v1/users"),
            "order-service": service([orders.url], "/api/v1/orders"),
        },
    )
    client = await gateway_client(registry)

    climbed = await client.get(URL("/api/v1/users/../orders/x", encoded=True))
    escaped = await client.get(URL("/api/v1/users/%2e%2e/%2e%2e/secret", encoded=True))

    assert climbed.status == 200
    assert (await climbed.json())["upstream"] == "orders"
    assert escaped.status == 404
    assert users.received == []
    assert orders.paths == ["/orders/x"]


def _assert_no_dot_segments(recorder: Recorder) -> None:
    for raw in recorder.paths:
        path = raw.partition("?")[0]
        segments = path.lower().split("/")
        assert not {"..", ".", "%2e%2e", "%2e", ".%2e", "%2e."} & set(segments), raw
        assert "//" not in path, raw


