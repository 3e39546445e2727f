"""Retries against real loopback upstreams: which requests and failures are retried, body replay, and the brakes."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.helpers import (
    JSON_TYPE,
    Client,
    GatewayClient,
    Received,
    StartUpstream,
    assert_error_envelope,
    assert_success_envelope,
    metric_value,
    parse_response,
)
from tests.process.helpers import wait_until
from tests.support import service, write_registry

SERVICE = "user-service"
HANG = -1
"""A script step: hold the request until the gateway gives up on it (its read timeout)."""
FAST = {"backoff": "5ms", "max_backoff": "20ms", "jitter": 0}
"""Retry settings that keep the waits between attempts short."""


class Scripted:
    """An upstream that answers with the statuses of its script in turn (then 200) and records every request.

    Each answer names its attempt, in the body and in X-Attempt, so a test can tell which one the client got."""

    def __init__(self, name: str, *script: int, delay: float = 0.0) -> None:
        self.name = name
        self.script = list(script)
        self.delay = delay
        self.received: list[Received] = []
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.method, request.raw_path, tuple(request.headers.items()), body))
        attempt = len(self.received)
        status = self.script.pop(0) if self.script else 200
        if status == HANG:
            await _until_gone(request, 3.0)
            return web.Response(status=200, text="too late")
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.json_response(
            {"upstream": self.name, "attempt": attempt}, status=status, headers={"X-Attempt": str(attempt)}
        )

    @property
    def attempts(self) -> int:
        return len(self.received)


async def _until_gone(request: web.Request, limit: float) -> None:
    """Wait until the client (the gateway) closes the connection, at most `limit` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if request.transport is None or request.transport.is_closing():
            return
        await asyncio.sleep(0.02)


@pytest.fixture
def dead_url() -> Iterator[str]:
    """An instance URL that refuses connections: a bound port nobody listens on. Holding the socket keeps
    the port from being handed to another server meanwhile (a closed free port could be, by a parallel run)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def _start(start_upstream: StartUpstream, upstream: Scripted) -> Scripted:
    upstream.url = await start_upstream(upstream.app())
    return upstream


def _registry(path: Path, *urls: str, retry: dict[str, Any] | None = None, **options: Any) -> Path:
    """One service, retries with short waits (plus `retry`), no breaker: the counts here are the retry's own."""
    settings = {**FAST, **(retry or {})}
    return write_registry(
        path, {SERVICE: service(list(urls), "/api/v1/users", retry=settings, breaker=False, **options)}
    )


async def _metrics(client: Client) -> str:
    return await (await client.get("/metrics")).text()


async def _assert_nothing_in_flight(client: Client) -> None:
    """Every attempt gave back its in-flight slot (the last one once its response was written)."""

    async def idle() -> bool:
        listing = assert_success_envelope(await (await client.get("/api/v1/gateway/services")).json())
        return all(instance["inFlight"] == 0 for entry in listing for instance in entry["instances"])

    await wait_until(idle, 2.0, "every instance to show inFlight 0")


@pytest.mark.parametrize(
    ("status", "attempts"),
    [(502, 3), (503, 3), (504, 3), (500, 1), (501, 1), (404, 1), (429, 1)],
    ids=["502", "503", "504", "500-not-retried", "501-not-retried", "404-not-retried", "429-not-retried"],
)
async def test_get_is_retried_on_502_503_504_from_the_upstream(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, status: int, attempts: int
) -> None:
    users = await _start(start_upstream, Scripted("users", status, status))
    client = await gateway_client(_registry(registry_path, users.url))

    response = await client.get("/api/v1/users/42")

    assert users.attempts == attempts
    assert [seen.raw_path for seen in users.received] == ["/users/42"] * attempts
    if attempts == 3:
        assert response.status == 200
        assert await response.json() == {"upstream": "users", "attempt": 3}
    else:
        assert response.status == status
        assert await response.json() == {"upstream": "users", "attempt": 1}
    await _assert_nothing_in_flight(client)
    metrics = await _metrics(client)
    assert metric_value(metrics, "kadai_gateway_retries_total", service=SERVICE, cause="status") == attempts - 1
    assert metric_value(metrics, "kadai_gateway_upstream_errors_total", service=SERVICE) == 0


async def test_connection_refused_is_retried_on_the_live_instance(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, dead_url: str
) -> None:
    live = await _start(start_upstream, Scripted("live"))
    client = await gateway_client(_registry(registry_path, dead_url, live.url))

    answers = []
    for index in range(6):
        response = await client.get(f"/api/v1/users/{index}")
        assert response.status == 200
        answers.append((await response.json())["upstream"])

    assert answers == ["live"] * 6
    assert [seen.raw_path for seen in live.received] == [f"/users/{index}" for index in range(6)]
    await _assert_nothing_in_flight(client)
    metrics = await _metrics(client)
    refused = metric_value(metrics, "kadai_gateway_upstream_errors_total", service=SERVICE, kind="connect")
    assert refused >= 1  # round robin sent some first attempts to the dead instance
    assert metric_value(metrics, "kadai_gateway_retries_total", service=SERVICE, cause="connect") == refused
    assert metric_value(metrics, "kadai_gateway_requests_total", service=SERVICE, status_class="2xx") == 6


async def test_a_timeout_is_retried(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, Scripted("users", HANG))
    client = await gateway_client(_registry(registry_path, users.url, timeouts={"read": "200ms"}))

    response = await client.get("/api/v1/users/slow")

    assert response.status == 200
    assert await response.json() == {"upstream": "users", "attempt": 2}
    await _assert_nothing_in_flight(client)
    metrics = await _metrics(client)
    assert metric_value(metrics, "kadai_gateway_retries_total", service=SERVICE, cause="timeout") == 1
    assert metric_value(metrics, "kadai_gateway_upstream_errors_total", service=SERVICE, kind="timeout") == 1


@pytest.mark.parametrize(
    ("method", "key", "attempts"),
    [
        ("GET", None, 2),
        ("HEAD", None, 2),
        ("OPTIONS", None, 2),
        ("PUT", None, 2),
        ("DELETE", None, 2),
        ("POST", None, 1),
        ("PATCH", None, 1),
        ("POST", "order-7f3a", 2),
        ("PATCH", "order-7f3b", 2),
    ],
    ids=["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "POST", "PATCH", "POST-idempotency-key",
         "PATCH-idempotency-key"],
)
async def test_only_idempotent_requests_are_retried(
    registry_path: Path,
    start_upstream: StartUpstream,
    gateway_client: GatewayClient,
    method: str,
    key: str | None,
    attempts: int,
) -> None:
    users = await _start(start_upstream, Scripted("users", 503))
    client = await gateway_client(_registry(registry_path, users.url))
    headers = {"Idempotency-Key": key} if key else {}
    body = b'{"item": 7}' if method in ("POST", "PUT", "PATCH") else None

    response = await client.request(method, "/api/v1/users/orders", data=body, headers=headers)
    await response.read()

    assert users.attempts == attempts
    assert response.status == (200 if attempts == 2 else 503)
    assert response.headers["X-Attempt"] == str(attempts)
    assert all(seen.method == method for seen in users.received)
    if body is not None:
        assert [seen.body for seen in users.received] == [body] * attempts
    if key:
        assert [seen.header("Idempotency-Key") for seen in users.received] == [key] * attempts
    await _assert_nothing_in_flight(client)


async def test_a_put_body_is_replayed_byte_for_byte_on_every_attempt(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, Scripted("users", 502, 503))
    client = await gateway_client(_registry(registry_path, users.url))
    payload = os.urandom(200_000)

    response = await client.put(
        "/api/v1/users/7/avatar",
        data=payload,
        headers={"Content-Type": "application/octet-stream", "X-Request-ID": "replay-check-1"},
    )

    assert response.status == 200
    assert users.attempts == 3
    assert [seen.body for seen in users.received] == [payload] * 3
    assert [seen.header("Content-Length") for seen in users.received] == [str(len(payload))] * 3
    assert [seen.header("Content-Type") for seen in users.received] == ["application/octet-stream"] * 3
    assert [seen.header("X-Request-ID") for seen in users.received] == ["replay-check-1"] * 3
    await _assert_nothing_in_flight(client)


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize(
    ("size", "chunked", "attempts"),
    [(1000, False, 2), (1001, False, 1), (300, True, 1)],
    ids=["at-buffer-limit", "over-buffer-limit", "chunked"],
)
async def test_a_body_that_cannot_be_buffered_gets_exactly_one_attempt(
    registry_path: Path,
    start_upstream: StartUpstream,
    gateway_client: GatewayClient,
    size: int,
    chunked: bool,
    attempts: int,
) -> None:
    users = await _start(start_upstream, Scripted("users", 503))
    client = await gateway_client(_registry(registry_path, users.url, retry={"buffer_limit": "1KB"}))
    payload = os.urandom(size)

    response = await client.put("/api/v1/users/blob", data=_chunks(payload, 100) if chunked else payload)

    assert users.attempts == attempts
    assert response.status == (200 if attempts == 2 else 503)
    digest = hashlib.sha256(payload).digest()
    assert [hashlib.sha256(seen.body).digest() for seen in users.received] == [digest] * attempts
    if chunked:
        assert users.received[0].header("Transfer-Encoding") == "chunked"
    await _assert_nothing_in_flight(client)


@pytest.mark.parametrize("retries", [0, 1, 3], ids=["retries-0", "retries-1", "retries-3"])
async def test_retries_stop_at_the_configured_count_and_the_client_gets_the_last_answer(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, retries: int
) -> None:
    script = [502, 504, 503, 502, 504, 503]
    users = await _start(start_upstream, Scripted("users", *script))
    client = await gateway_client(_registry(registry_path, users.url, retry={"retries": retries}))

    response = await client.get("/api/v1/users/x")

    attempts = retries + 1
    assert users.attempts == attempts
    # The last upstream answer, as it was: its status, headers and body, not a gateway envelope.
    assert response.status == script[retries]
    assert response.headers["X-Attempt"] == str(attempts)
    assert response.headers["X-Gateway-Service"] == SERVICE
    assert await response.json() == {"upstream": "users", "attempt": attempts}
    await _assert_nothing_in_flight(client)
    metrics = await _metrics(client)
    assert metric_value(metrics, "kadai_gateway_retries_total", service=SERVICE, cause="status") == retries
    assert metric_value(metrics, "kadai_gateway_requests_total", service=SERVICE, status_class="5xx") == 1


async def test_every_attempt_refused_gives_a_502_envelope(
    registry_path: Path, gateway_client: GatewayClient, dead_url: str
) -> None:
    client = await gateway_client(_registry(registry_path, dead_url, retry={"retries": 2}))

    response = await client.get("/api/v1/users/x")

    assert response.status == 502
    assert response.headers["Content-Type"] == JSON_TYPE
    body = await response.json()
    assert_error_envelope(body, 502, response.headers["X-Request-ID"])
    assert body["details"] == {"service": SERVICE}
    await _assert_nothing_in_flight(client)
    metrics = await _metrics(client)
    assert metric_value(metrics, "kadai_gateway_retries_total", service=SERVICE, cause="connect") == 2
    # Every failed attempt is counted once: two by the retry, the last one when the request ends.
    assert metric_value(metrics, "kadai_gateway_upstream_errors_total", service=SERVICE, kind="connect") == 3


async def test_every_attempt_timing_out_gives_a_504_envelope(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, Scripted("users", HANG, HANG))
    client = await gateway_client(
        _registry(registry_path, users.url, retry={"retries": 1}, timeouts={"read": "150ms"})
    )

    response = await client.get("/api/v1/users/x")

    assert response.status == 504
    body = await response.json()
    assert_error_envelope(body, 504, response.headers["X-Request-ID"])
    assert body["details"] == {"service": SERVICE}
    assert users.attempts == 2
    await _assert_nothing_in_flight(client)
    metrics = await _metrics(client)
    assert metric_value(metrics, "kadai_gateway_retries_total", service=SERVICE, cause="timeout") == 1
    assert metric_value(metrics, "kadai_gateway_upstream_errors_total", service=SERVICE, kind="timeout") == 2


async def test_the_deadline_stops_retries_of_a_slow_upstream(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    # Every answer is a 503 after 250 ms; with a 400 ms deadline only one retry can start in time, and
    # it is cut off at the deadline, before its 503 arrives.
    users = await _start(start_upstream, Scripted("users", *[503] * 10, delay=0.25))
    client = await gateway_client(_registry(registry_path, users.url, retry={"retries": 10, "deadline": "400ms"}))

    started = time.monotonic()
    response = await client.get("/api/v1/users/x")
    elapsed = time.monotonic() - started

    assert response.status == 504
    assert users.attempts == 2
    assert "X-Attempt" not in response.headers
    assert elapsed < 0.9
    await _assert_nothing_in_flight(client)


async def test_a_retry_still_running_at_the_deadline_is_cut_off_with_504(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    # The first attempt gets a 503; the retry hangs. The route's timeouts (10 s read) would let it hang
    # for seconds: the 400 ms deadline ends it.
    users = await _start(start_upstream, Scripted("users", 503, HANG))
    client = await gateway_client(_registry(registry_path, users.url, retry={"retries": 3, "deadline": "400ms"}))

    started = time.monotonic()
    response = await client.get("/api/v1/users/x")
    elapsed = time.monotonic() - started

    assert response.status == 504
    assert_error_envelope(await response.json(), 504)
    assert users.attempts == 2
    assert 0.35 < elapsed < 1.5, f"answered after {elapsed:.2f} s, the deadline was 0.4 s"
    await _assert_nothing_in_flight(client)


async def test_the_first_attempt_keeps_the_route_timeouts_past_the_deadline(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    # A slow but good first answer (600 ms) is not cut by a 300 ms deadline: it bounds retries only.
    users = await _start(start_upstream, Scripted("users", 200, delay=0.6))
    client = await gateway_client(_registry(registry_path, users.url, retry={"retries": 3, "deadline": "300ms"}))

    response = await client.get("/api/v1/users/x")

    assert response.status == 200
    assert users.attempts == 1


async def _slow_upload(client: Client, path: str, body: bytes, pause: float) -> tuple[int, dict[str, Any]]:
    """PUT with a Content-Length, sending the body `pause` seconds after the head (a slow client upload)."""
    assert client.server.host is not None and client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(
            f"PUT {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        await asyncio.sleep(pause)  # the client's own pace, which is what the test is about
        writer.write(body)
        await writer.drain()
        response = parse_response(await asyncio.wait_for(reader.read(), 5.0))
    finally:
        writer.close()
        await writer.wait_closed()
    return response.status, response.json()


@pytest.mark.parametrize(("pause", "attempts"), [(0.0, 2), (0.3, 1)], ids=["fast-upload", "slow-upload"])
async def test_the_deadline_counts_from_the_arrival_of_the_request(
    registry_path: Path,
    start_upstream: StartUpstream,
    gateway_client: GatewayClient,
    pause: float,
    attempts: int,
) -> None:
    """The upload is part of the request's time: a retry may not start `deadline` after the request arrived."""
    users = await _start(start_upstream, Scripted("users", *[503] * 5))
    client = await gateway_client(
        _registry(
            registry_path, users.url, retry={"retries": 5, "deadline": "400ms", "backoff": "200ms", "max_backoff": "1s"}
        )
    )

    status, body = await _slow_upload(client, "/api/v1/users/upload", b"12345", pause)

    assert status == 503
    assert body == {"upstream": "users", "attempt": attempts}
    assert [seen.body for seen in users.received] == [b"12345"] * attempts


async def test_the_retry_budget_caps_retries_and_is_counted(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, Scripted("users", *[503] * 20))
    budget = {"ratio": 0, "min_retries": 2, "window": "10s"}
    client = await gateway_client(_registry(registry_path, users.url, retry={"retries": 3, "budget": budget}))

    attempts = []
    for _ in range(3):
        before = users.attempts
        response = await client.get("/api/v1/users/x")
        assert response.status == 503
        attempts.append(users.attempts - before)

    # The first request spends the budget's two retries; the others get none within the window.
    assert attempts == [3, 1, 1]
    await _assert_nothing_in_flight(client)
    metrics = await _metrics(client)
    assert metric_value(metrics, "kadai_gateway_retries_total", service=SERVICE, cause="status") == 2
    assert metric_value(metrics, "kadai_gateway_retry_budget_exhausted_total", service=SERVICE) == 3


async def test_retry_false_sends_one_attempt(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, Scripted("users", 503))
    registry = write_registry(
        registry_path, {SERVICE: service([users.url], "/api/v1/users", retry=False, breaker=False)}
    )
    client = await gateway_client(registry)

    response = await client.get("/api/v1/users/x")

    assert response.status == 503
    assert users.attempts == 1
    assert "kadai_gateway_retries_total{" not in await _metrics(client)


async def test_a_reload_keeps_the_budget_spent_unless_the_window_changes(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, Scripted("users", *[503] * 20))

    def registry(min_retries: int, window: str) -> Path:
        budget = {"ratio": 0, "min_retries": min_retries, "window": window}
        return _registry(registry_path, users.url, retry={"retries": 3, "budget": budget})

    client = await gateway_client(registry(1, "10s"))

    async def reload(min_retries: int, window: str, revision: int) -> None:
        registry(min_retries, window)

        async def applied() -> bool:
            status = assert_success_envelope(await (await client.get("/api/v1/gateway/status")).json())
            return bool(status["config"]["revision"] == revision)

        await wait_until(applied, 3.0, f"revision {revision}")

    async def attempts() -> int:
        before = users.attempts
        response = await client.get("/api/v1/users/x")
        assert response.status == 503
        return users.attempts - before

    assert await attempts() == 2  # the floor of one retry, spent
    await reload(2, "10s", 2)
    assert [await attempts(), await attempts()] == [2, 1]  # one more under the new floor of two, then none
    await reload(2, "20s", 3)
    assert await attempts() == 3  # a new window starts a new budget


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_a_request_that_never_left_is_retried_whatever_its_method(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, dead_url: str, method: str
) -> None:
    live = await _start(start_upstream, Scripted("live"))
    client = await gateway_client(_registry(registry_path, dead_url, live.url))

    for index in range(6):
        body = f'{{"order": {index}}}'.encode()
        response = await client.request(method, f"/api/v1/users/{index}", data=body)
        assert response.status == 200
        assert (await response.json())["upstream"] == "live"

    # Each request reached the live instance exactly once, with its body; the refused attempts sent nothing.
    assert [(seen.method, seen.raw_path, seen.body) for seen in live.received] == [
        (method, f"/users/{index}", f'{{"order": {index}}}'.encode()) for index in range(6)
    ]
    await _assert_nothing_in_flight(client)
    metrics = await _metrics(client)
    refused = metric_value(metrics, "kadai_gateway_upstream_errors_total", service=SERVICE, kind="connect")
    assert refused >= 1  # round robin sent some first attempts to the dead instance
    assert metric_value(metrics, "kadai_gateway_retries_total", service=SERVICE, cause="connect") == refused


async def test_a_post_the_instance_received_is_not_retried_when_it_breaks_off(
    registry_path: Path, gateway_client: GatewayClient
) -> None:
    """The instance reads the whole request, then hangs up without answering: it may have acted on it."""
    received: list[bytes] = []

    async def read_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        received.append(await reader.readexactly(length))
        writer.close()

    server = await asyncio.start_server(read_then_hang_up, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        client = await gateway_client(_registry(registry_path, url))
        post = await client.post("/api/v1/users/orders", data=b'{"item": 7}')
        put = await client.put("/api/v1/users/orders/1", data=b'{"item": 8}')
    finally:
        server.close()
        await server.wait_closed()

    assert post.status == 502
    assert_error_envelope(await post.json(), 502, post.headers["X-Request-ID"])
    # The POST went out once; the PUT (idempotent) was tried again, up to the retry count.
    assert received[0] == b'{"item": 7}'
    assert received[1:] == [b'{"item": 8}'] * 4
    assert put.status == 502


async def test_a_refused_post_too_big_to_replay_gets_one_attempt(
    registry_path: Path, gateway_client: GatewayClient, dead_url: str
) -> None:
    client = await gateway_client(_registry(registry_path, dead_url, retry={"buffer_limit": "1KB"}))

    small = await client.post("/api/v1/users/orders", data=b"x" * 1000)
    big = await client.post("/api/v1/users/orders", data=b"x" * 1001)

    assert small.status == big.status == 502
    metrics = await _metrics(client)
    # The small body was replayed on each of the 3 retries; the big one was streamed once.
    assert metric_value(metrics, "kadai_gateway_retries_total", service=SERVICE, cause="connect") == 3
    assert metric_value(metrics, "kadai_gateway_upstream_errors_total", service=SERVICE, kind="connect") == 5
