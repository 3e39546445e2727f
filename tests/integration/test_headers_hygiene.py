"""Header hygiene both ways: hop-by-hop headers, forwarding headers, identity headers, encodings, cookies."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from aiohttp import web

from tests.integration.helpers import (
    Client,
    GatewayClient,
    Recorder,
    StartRecorder,
    StartUpstream,
    raw_request,
    users_registry,
)


async def _users_gateway(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> tuple[Client, Recorder]:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))
    return client, users


async def test_bare_request_reaches_the_upstream_with_only_the_gateway_headers(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client, users = await _users_gateway(registry_path, start_recorder, gateway_client)

    response = await raw_request(client, "/api/v1/users/x")

    assert response.status == 200
    seen = users.last
    port = users.url.rsplit(":", 1)[1]
    assert sorted(name.lower() for name, _ in seen.headers) == [
        "host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-gateway-service", "x-request-id",
    ]
    assert seen.header("Host") == f"127.0.0.1:{port}"
    assert seen.header("X-Forwarded-For") == "127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.header("X-Forwarded-Host") == f"{client.server.host}:{client.server.port}"
    assert seen.header("X-Gateway-Service") == "user-service"
    assert seen.header("X-Request-ID") == response.headers["X-Request-ID"]


async def test_post_without_content_type_gets_none_added(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client, users = await _users_gateway(registry_path, start_recorder, gateway_client)

    response = await raw_request(client, "/api/v1/users/x", method="POST", body=b"raw bytes")

    assert response.status == 200
    seen = users.last
    for name in ("Content-Type", "Accept", "Accept-Encoding", "User-Agent", "Transfer-Encoding"):
        assert seen.header(name) is None, name
    assert seen.header("Content-Length") == "9"
    assert seen.body == b"raw bytes"


async def test_end_to_end_client_headers_are_forwarded_unchanged(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client, users = await _users_gateway(registry_path, start_recorder, gateway_client)
    sent = [
        ("Accept", "text/csv"),
        ("Accept-Encoding", "br"),
        ("User-Agent", "curl/8.5.0"),
        ("Content-Type", "text/csv; charset=utf-8"),
        ("Authorization", "Bearer abc.def.ghi"),
        ("Cookie", "a=1; b=2"),
        ("X-Custom", "one"),
        ("X-Custom", "two"),
    ]

    response = await raw_request(client, "/api/v1/users/x", method="POST", headers=sent, body=b"a,b\n")

    assert response.status == 200
    seen = users.last
    for name, _ in sent:
        assert seen.all(name) == [value for key, value in sent if key == name], name


async def test_hop_by_hop_and_connection_named_headers_are_not_forwarded(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client, users = await _users_gateway(registry_path, start_recorder, gateway_client)
    sent = [
        ("Connection", "close, X-Secret, x-other-secret"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
        ("Proxy-Custom", "1"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "h2c"),
        ("X-Secret", "must not pass"),
        ("X-Other-Secret", "must not pass"),
        ("X-Kept", "passes"),
    ]

    response = await raw_request(client, "/api/v1/users/x", headers=sent)

    assert response.status == 200
    received = {name.lower() for name, _ in users.last.headers}
    for name, _ in sent[:-1]:
        assert name.lower() not in received, name
    assert users.last.header("X-Kept") == "passes"


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        ([], "127.0.0.1"),
        ([("X-Forwarded-For", "203.0.113.7")], "203.0.113.7, 127.0.0.1"),
        ([("X-Forwarded-For", "203.0.113.7, 10.1.2.3")], "203.0.113.7, 10.1.2.3, 127.0.0.1"),
        (
            [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "198.51.100.1")],
            "203.0.113.7, 198.51.100.1, 127.0.0.1",
        ),
    ],
    ids=["none", "one-hop", "two-hops-one-header", "two-headers"],
)
async def test_x_forwarded_for_appends_the_peer(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    sent: list[tuple[str, str]],
    forwarded: str,
) -> None:
    client, users = await _users_gateway(registry_path, start_recorder, gateway_client)

    await raw_request(client, "/api/v1/users/x", headers=sent)

    assert users.last.all("X-Forwarded-For") == [forwarded]


async def test_client_cannot_assert_gateway_or_identity_headers(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    client, users = await _users_gateway(registry_path, start_recorder, gateway_client)
    forged = [
        ("X-User-ID", "1"),
        ("x-user-role", "admin"),
        ("X-USER-ID", "2"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Real-IP", "1.2.3.4"),
        ("X-Gateway-Service", "admin-service"),
        ("Forwarded", "for=1.2.3.4;proto=https;host=evil.example"),
    ]

    response = await raw_request(client, "/api/v1/users/x", headers=forged, host="shop.example.com:8443")

    assert response.status == 200
    seen = users.last
    assert seen.all("X-User-ID") == []
    assert seen.all("X-User-Role") == []
    assert seen.all("X-Real-IP") == []
    assert seen.all("Forwarded") == []
    assert seen.all("X-Forwarded-Proto") == ["http"]
    assert seen.all("X-Forwarded-Host") == ["shop.example.com:8443"]
    assert seen.all("X-Gateway-Service") == ["user-service"]
    assert seen.all("Host") == [f"127.0.0.1:{users.url.rsplit(':', 1)[1]}"]


# Response side: small bodies (known length up to 64 KiB) are sent whole, larger ones are streamed.

BODY_SIZES = pytest.mark.parametrize("size", [5, 300_000], ids=["whole", "streamed"])


async def _response_gateway(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, handler: web.RequestHandler
) -> Client:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    base = await start_upstream(app)
    return await gateway_client(users_registry(registry_path, base))


@BODY_SIZES
async def test_upstream_hop_by_hop_response_headers_are_removed(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, size: int
) -> None:
    async def handler(request: web.Request) -> web.Response:
        response = web.Response(body=b"h" * size)
        response.headers["Connection"] = "X-Foo, x-bar"
        response.headers["X-Foo"] = "hop"
        response.headers["X-Bar"] = "hop"
        response.headers["Keep-Alive"] = "timeout=5"
        response.headers["Proxy-Authenticate"] = 'Basic realm="x"'
        response.headers["Proxy-Extra"] = "1"
        response.headers["Trailer"] = "X-Checksum"
        response.headers["X-End-To-End"] = "kept"
        return response

    client = await _response_gateway(registry_path, start_upstream, gateway_client, handler)

    response = await raw_request(client, "/api/v1/users/x")

    assert response.status == 200
    assert response.body == b"h" * size
    assert response.headers["Content-Length"] == str(size)
    for name in ("X-Foo", "X-Bar", "Keep-Alive", "Proxy-Authenticate", "Proxy-Extra", "Trailer"):
        assert name not in response.headers, name
    assert response.headers.getall("Connection") == ["close"]  # the gateway's own, for our Connection: close
    assert response.headers["X-End-To-End"] == "kept"
    assert response.headers["X-Gateway-Service"] == "user-service"


@BODY_SIZES
async def test_every_set_cookie_reaches_the_client(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, size: int
) -> None:
    cookies = ["session=abc; HttpOnly; Path=/", "theme=dark; Max-Age=3600", "lang=en; SameSite=Lax"]

    async def handler(request: web.Request) -> web.Response:
        response = web.Response(body=b"c" * size)
        for cookie in cookies:
            response.headers.add("Set-Cookie", cookie)
        return response

    client = await _response_gateway(registry_path, start_upstream, gateway_client, handler)

    response = await raw_request(client, "/api/v1/users/x")

    assert response.headers.getall("Set-Cookie") == cookies
    assert len(response.body) == size


@pytest.mark.parametrize(
    "plain", [b"kadai " * 20_000, os.urandom(300_000)], ids=["whole", "streamed"]
)
async def test_gzip_body_passes_through_still_compressed(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, plain: bytes
) -> None:
    compressed = gzip.compress(plain)
    accepted: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        accepted.append(request.headers.get("Accept-Encoding"))
        return web.Response(
            body=compressed,
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain", "Vary": "Accept-Encoding"},
        )

    client = await _response_gateway(registry_path, start_upstream, gateway_client, handler)

    response = await client.get("/api/v1/users/x", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    raw = await raw_request(client, "/api/v1/users/x", headers=[("Accept-Encoding", "gzip")])

    assert accepted == ["gzip", "gzip"]
    assert response.status == 200
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Length"] == str(len(compressed))
    assert response.headers["X-Gateway-Service"] == "user-service"
    assert await response.read() == compressed
    assert raw.headers["Content-Encoding"] == "gzip"
    assert raw.headers["Content-Length"] == str(len(compressed))
    assert "Transfer-Encoding" not in raw.headers
    assert raw.body == compressed
    assert gzip.decompress(raw.body) == plain
