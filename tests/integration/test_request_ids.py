"""Request IDs: kept when well-formed, replaced otherwise, and the same ID upstream, in the response and in errors."""
from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from tests.integration.helpers import (
    GENERATED_ID,
    GatewayClient,
    StartRecorder,
    StartUpstream,
    assert_error_envelope,
    raw_exchange,
    raw_request,
    users_registry,
)
from tests.support import free_port, service, write_registry

_VALID = [
    ("word", "abc"),
    ("uuid", "3f2b8c1e-9d4a-4f6b-8e2a-1c3d5e7f9a0b"),
    ("dots-colons", "trace.01:span-02"),
    ("max-length", "a" * 128),
    ("single-char", "x"),
    ("generated-format", "req_0123456789abcdef01234567"),
]


@pytest.mark.parametrize("request_id", [value for _, value in _VALID], ids=[name for name, _ in _VALID])
async def test_well_formed_request_id_is_forwarded_and_returned(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, request_id: str
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))

    response = await client.get("/api/v1/users/x", headers={"X-Request-ID": request_id})

    assert response.status == 200
    assert response.headers.getall("X-Request-ID") == [request_id]
    assert users.last.all("X-Request-ID") == [request_id]


async def test_an_id_the_gateway_generated_is_kept_on_the_next_hop(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))
    first = await client.get("/api/v1/users/x")
    generated = first.headers["X-Request-ID"]
    assert GENERATED_ID.match(generated)

    second = await client.get("/api/v1/users/y", headers={"X-Request-ID": generated})

    assert second.headers["X-Request-ID"] == generated
    assert users.last.header("X-Request-ID") == generated


_MALFORMED: list[tuple[str, bytes]] = [
    ("too-long", b"a" * 129),
    ("spaces", b"abc def"),
    ("unicode", "r\u00e9q-\u2603".encode()),
    ("latin1-byte", b"req-\xe9"),
    ("slash", b"a/b"),
    ("markup", b"<script>alert(1)</script>"),
    ("quote", b'a"b'),
    ("empty", b""),
]


@pytest.mark.parametrize("raw_id", [value for _, value in _MALFORMED], ids=[name for name, _ in _MALFORMED])
async def test_malformed_request_id_is_replaced(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient, raw_id: bytes
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))
    request = (
        b"GET /api/v1/users/x HTTP/1.1\r\nHost: gateway\r\nX-Request-ID: " + raw_id + b"\r\nConnection: close\r\n\r\n"
    )

    response = await raw_exchange(client, request)

    assert response.status == 200
    returned = response.headers.getall("X-Request-ID")
    assert len(returned) == 1 and GENERATED_ID.match(returned[0]), returned
    assert users.last.all("X-Request-ID") == returned


async def test_generated_ids_are_unique(
    registry_path: Path, start_recorder: StartRecorder, gateway_client: GatewayClient
) -> None:
    users = await start_recorder("users")
    client = await gateway_client(users_registry(registry_path, users.url))

    ids = [(await client.get("/api/v1/users/x")).headers["X-Request-ID"] for _ in range(20)]

    assert all(GENERATED_ID.match(value) for value in ids)
    assert len(set(ids)) == 20
    assert [seen.header("X-Request-ID") for seen in users.received] == ids


@pytest.mark.parametrize("client_id", ["client-id-42", None], ids=["client-id", "generated"])
@pytest.mark.parametrize(
    ("method", "target", "body", "status"),
    [
        ("GET", "/api/v1/nothing/here", b"", 404),
        ("GET", "/api/v1/users/a%2fb", b"", 400),
        ("POST", "/api/v1/users/x", b"x" * 2048, 413),
        ("GET", "/api/v1/dead/x", b"", 502),
        ("GET", "/api/v1/empty/x", b"", 503),
        ("POST", "/api/v1/health", b"", 405),
    ],
    ids=["404", "400", "413", "502", "503", "405"],
)
async def test_error_envelope_carries_the_request_id(
    registry_path: Path,
    start_recorder: StartRecorder,
    gateway_client: GatewayClient,
    client_id: str | None,
    method: str,
    target: str,
    body: bytes,
    status: int,
) -> None:
    users = await start_recorder("users")
    registry = write_registry(
        registry_path,
        {
            "user-service": service([users.url], "/api/v1/users", max_body_size="1KB"),
            "dead-service": service([f"http://127.0.0.1:{free_port()}"], "/api/v1/dead"),
            "empty-service": service([], "/api/v1/empty"),
        },
    )
    client = await gateway_client(registry)
    headers = [("X-Request-ID", client_id)] if client_id else []

    response = await raw_request(client, target, method=method, headers=headers, body=body)

    assert response.status == status
    returned = response.headers["X-Request-ID"]
    if client_id:
        assert returned == client_id
    else:
        assert GENERATED_ID.match(returned)
    assert_error_envelope(response.json(), status, returned)
    assert users.received == []


async def test_request_id_survives_an_upstream_that_sets_its_own(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get("X-Request-ID", ""), headers={"X-Request-ID": "upstream-made"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    base = await start_upstream(app)
    client = await gateway_client(users_registry(registry_path, base))

    response = await client.get("/api/v1/users/x", headers={"X-Request-ID": "from-client"})

    assert await response.text() == "from-client"
    assert response.headers.getall("X-Request-ID") == ["from-client"]
