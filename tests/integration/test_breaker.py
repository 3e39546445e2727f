"""Circuit breakers against real loopback upstreams: opening, failing fast, the half-open trial, and what counts."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.integration.helpers import (
    JSON_TYPE,
    Client,
    GatewayClient,
    StartUpstream,
    assert_error_envelope,
    assert_success_envelope,
    metric_value,
)
from tests.process.helpers import wait_until
from tests.support import service, write_registry

SERVICE = "user-service"
STATE = "kadai_gateway_breaker_state"
TRANSITIONS = "kadai_gateway_breaker_transitions_total"
QUICK = {"fail_max": 1, "reset_timeout": "300ms"}
"""Opens on the first failure and lets a trial through 300 ms later."""


class Upstream:
    """An instance that counts the requests reaching it.

    It answers with its `status` (or the one in ?status=), holds /hold requests until `release` is set,
    holds /hang requests until the gateway gives up, and reads request bodies whole."""

    def __init__(self, name: str, status: int = 200) -> None:
        self.name = name
        self.status = status
        self.hits = 0
        self.holding = 0
        self.release = asyncio.Event()
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        await request.read()
        if request.path.endswith("/hold"):
            self.holding += 1
            await self.release.wait()
        if request.path.endswith("/hang"):
            deadline = time.monotonic() + 3.0
            while request.transport is not None and not request.transport.is_closing():
                assert time.monotonic() < deadline, "the gateway never gave up on a hanging request"
                await asyncio.sleep(0.02)
        status = int(request.query.get("status", self.status))
        return web.json_response({"upstream": self.name}, status=status)


@pytest.fixture
def dead_url() -> Iterator[str]:
    """An instance URL that refuses connections: a bound port nobody listens on. Holding the socket keeps
    the port from being handed to another server meanwhile (a closed free port could be, by a parallel run)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def _start(start_upstream: StartUpstream, name: str, status: int = 200) -> Upstream:
    upstream = Upstream(name, status)
    upstream.url = await start_upstream(upstream.app())
    return upstream


def _registry(path: Path, *urls: str, breaker: dict[str, Any], retry: Any = False, **options: Any) -> Path:
    """One service; no retries unless asked, so every request is exactly one attempt the breaker counts."""
    return write_registry(
        path, {SERVICE: service(list(urls), "/api/v1/users", breaker=breaker, retry=retry, **options)}
    )


async def _statuses(client: Client, path: str, count: int) -> list[int]:
    statuses = []
    for _ in range(count):
        response = await client.get(path)
        await response.read()
        statuses.append(response.status)
    return statuses


async def _listing(client: Client, path: str = "/api/v1/gateway/services") -> list[dict[str, Any]]:
    data = assert_success_envelope(await (await client.get(path)).json())
    return data if isinstance(data, list) else data["services"]  # type: ignore[no-any-return]


async def _breaker(client: Client, url: str) -> dict[str, Any] | None:
    """The breaker of one instance as /api/v1/gateway/services shows it (None before its first request)."""
    for entry in await _listing(client):
        for instance in entry["instances"]:
            if instance["url"] == url:
                return instance.get("breaker")  # type: ignore[no-any-return]
    raise AssertionError(f"{url} is not listed")


async def _state(client: Client, url: str) -> str | None:
    breaker = await _breaker(client, url)
    return breaker["state"] if breaker else None


async def _trial_due(client: Client, url: str) -> None:
    """Wait until the open breaker of `url` would let a trial through."""

    async def due() -> bool:
        breaker = await _breaker(client, url)
        return breaker is not None and breaker["state"] == "open" and breaker["retryInSeconds"] == 0

    await wait_until(due, 3.0, f"the breaker of {url} to be due for a trial")


async def _metrics(client: Client) -> str:
    return await (await client.get("/metrics")).text()


def _transitions(caplog: pytest.LogCaptureFixture, url: str) -> list[tuple[int, str, dict[str, Any]]]:
    """The breaker's state-change log lines for one instance: level, message and structured fields."""
    return [
        (record.levelno, record.getMessage(), getattr(record, "fields", {}))
        for record in caplog.records
        if record.name == "gateway.breaker" and getattr(record, "fields", {}).get("instance") == url
    ]


def _logged(level: int, url: str, old: str, new: str) -> tuple[int, str, dict[str, Any]]:
    fields = {"service": SERVICE, "instance": url, "breaker": new}
    return level, f"breaker of {SERVICE} {url}: {old} -> {new}", fields


async def _assert_circuit_open(response: aiohttp.ClientResponse, retry_after: int = 1) -> None:
    assert response.status == 503
    assert response.headers["Content-Type"] == JSON_TYPE
    assert response.headers["Retry-After"] == str(retry_after)
    body = await response.json()
    assert_error_envelope(body, 503, response.headers["X-Request-ID"])
    assert body["details"] == {"service": SERVICE, "reason": "circuit_open"}


async def test_opens_after_fail_max_failures_in_a_row_then_fails_fast_without_calling_the_instance(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, "users", status=500)
    client = await gateway_client(_registry(registry_path, users.url, breaker={"fail_max": 3, "reset_timeout": "20s"}))

    assert await _statuses(client, "/api/v1/users/x", 3) == [500, 500, 500]  # the instance's own answers
    assert await _state(client, users.url) == "open"

    started = time.monotonic()
    for _ in range(3):
        await _assert_circuit_open(await client.get("/api/v1/users/x"), retry_after=20)
    assert time.monotonic() - started < 0.5
    assert users.hits == 3
    metrics = await _metrics(client)
    assert metric_value(metrics, STATE, service=SERVICE, instance=users.url) == 2
    assert metric_value(metrics, TRANSITIONS, service=SERVICE, instance=users.url, state="open") == 1
    assert metric_value(metrics, "kadai_gateway_breaker_rejections_total", service=SERVICE) == 3
    assert metric_value(metrics, "kadai_gateway_requests_total", service=SERVICE, status_class="5xx") == 6


async def test_only_failures_in_a_row_count(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, "users")
    client = await gateway_client(_registry(registry_path, users.url, breaker={"fail_max": 3}))

    for status in (500, 502, 200, 503, 504, 200, 500, 500):
        response = await client.get(f"/api/v1/users/x?status={status}")
        assert response.status == status
    assert await _breaker(client, users.url) == {"state": "closed", "failures": 2}

    assert (await client.get("/api/v1/users/x?status=500")).status == 500
    assert await _state(client, users.url) == "open"
    assert users.hits == 9


@pytest.mark.parametrize(
    ("path", "status"), [("/api/v1/users/x", 502), ("/api/v1/users/hang", 504)], ids=["refused", "timeout"]
)
async def test_connection_failures_and_timeouts_count(
    registry_path: Path,
    start_upstream: StartUpstream,
    gateway_client: GatewayClient,
    dead_url: str,
    path: str,
    status: int,
) -> None:
    users = await _start(start_upstream, "users")
    url = dead_url if status == 502 else users.url
    registry = _registry(registry_path, url, breaker={"fail_max": 2}, timeouts={"read": "150ms"})
    client = await gateway_client(registry)

    assert await _statuses(client, path, 2) == [status, status]

    await _assert_circuit_open(await client.get(path), retry_after=30)
    assert users.hits == (2 if status == 504 else 0)


async def test_half_opens_after_reset_timeout_and_a_successful_trial_closes_it(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.breaker")
    users = await _start(start_upstream, "users")
    client = await gateway_client(_registry(registry_path, users.url, breaker=QUICK))

    assert (await client.get("/api/v1/users/x?status=500")).status == 500
    opened = time.monotonic()
    refused = 0
    while (response := await client.get("/api/v1/users/x")).status == 503:
        await _assert_circuit_open(response)
        refused += 1
        assert time.monotonic() - opened < 2.0, "no trial within 2 s"
        await asyncio.sleep(0.03)
    waited = time.monotonic() - opened

    assert response.status == 200
    assert 0.25 <= waited < 1.0
    assert refused >= 3
    assert users.hits == 2  # the failure and the trial; every refusal stayed in the gateway
    assert await _breaker(client, users.url) == {"state": "closed", "failures": 0}
    assert await _statuses(client, "/api/v1/users/x", 3) == [200, 200, 200]
    metrics = await _metrics(client)
    for state, count in (("open", 1), ("half-open", 1), ("closed", 1)):
        assert metric_value(metrics, TRANSITIONS, service=SERVICE, instance=users.url, state=state) == count
    assert metric_value(metrics, STATE, service=SERVICE, instance=users.url) == 0
    # Opening is what an operator must see (warning); the way back is informational.
    assert _transitions(caplog, users.url) == [
        _logged(logging.WARNING, users.url, "closed", "open"),
        _logged(logging.INFO, users.url, "open", "half-open"),
        _logged(logging.INFO, users.url, "half-open", "closed"),
    ]


async def test_half_open_lets_exactly_one_trial_through_at_a_time(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, "users")
    client = await gateway_client(_registry(registry_path, users.url, breaker=QUICK))
    assert (await client.get("/api/v1/users/x?status=500")).status == 500
    await _trial_due(client, users.url)

    pending = [asyncio.create_task(client.get("/api/v1/users/hold")) for _ in range(6)]
    try:
        await wait_until(lambda: sum(task.done() for task in pending) == 5, 3.0, "five requests to be refused")
        assert users.holding == 1
        assert await _state(client, users.url) == "half-open"
        for task in [task for task in pending if task.done()]:
            await _assert_circuit_open(task.result())
        metrics = await _metrics(client)
        assert metric_value(metrics, STATE, service=SERVICE, instance=users.url) == 1
    finally:
        users.release.set()
        responses = await asyncio.gather(*pending)

    assert sorted(response.status for response in responses) == [200] + [503] * 5
    assert users.hits == 2
    assert await _state(client, users.url) == "closed"
    assert await _statuses(client, "/api/v1/users/x", 3) == [200, 200, 200]


async def test_a_failed_trial_opens_the_breaker_again(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.breaker")
    users = await _start(start_upstream, "users", status=500)
    client = await gateway_client(_registry(registry_path, users.url, breaker=QUICK))
    assert (await client.get("/api/v1/users/x")).status == 500
    await _trial_due(client, users.url)

    assert (await client.get("/api/v1/users/x")).status == 500  # the trial reached the instance and failed

    breaker = await _breaker(client, users.url)
    assert breaker is not None and breaker["state"] == "open"
    assert 0.1 < breaker["retryInSeconds"] <= 0.3
    await _assert_circuit_open(await client.get("/api/v1/users/x"))
    assert users.hits == 2
    metrics = await _metrics(client)
    assert metric_value(metrics, TRANSITIONS, service=SERVICE, instance=users.url, state="open") == 2
    assert metric_value(metrics, TRANSITIONS, service=SERVICE, instance=users.url, state="half-open") == 1
    assert _transitions(caplog, users.url) == [
        _logged(logging.WARNING, users.url, "closed", "open"),
        _logged(logging.INFO, users.url, "open", "half-open"),
        _logged(logging.WARNING, users.url, "half-open", "open"),
    ]


async def test_an_answer_that_started_before_the_breaker_opened_does_not_decide_it(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, "users")
    client = await gateway_client(_registry(registry_path, users.url, breaker={**QUICK, "fail_max": 2}))
    slow = asyncio.create_task(client.get("/api/v1/users/hold"))
    try:
        await wait_until(lambda: users.holding == 1, 3.0, "the slow request to reach the instance")
        assert await _statuses(client, "/api/v1/users/x?status=500", 2) == [500, 500]
        await _trial_due(client, users.url)
    finally:
        users.release.set()
        late = await slow
    assert late.status == 200

    # The late success is not a trial: the breaker still waits for one.
    assert await _state(client, users.url) == "open"
    hits = users.hits
    assert (await client.get("/api/v1/users/x")).status == 200
    assert users.hits == hits + 1
    assert await _state(client, users.url) == "closed"
    metrics = await _metrics(client)
    assert metric_value(metrics, TRANSITIONS, service=SERVICE, instance=users.url, state="half-open") == 1
    assert metric_value(metrics, TRANSITIONS, service=SERVICE, instance=users.url, state="closed") == 1


async def test_an_open_breaker_sends_the_traffic_to_the_other_instance(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    failing = await _start(start_upstream, "failing", status=500)
    healthy = await _start(start_upstream, "healthy")
    client = await gateway_client(_registry(registry_path, failing.url, healthy.url, breaker={"fail_max": 2}))

    statuses = await _statuses(client, "/api/v1/users/x", 12)

    assert statuses.count(500) == 2 and statuses.count(200) == 10
    assert failing.hits == 2
    assert healthy.hits == 10
    assert await _state(client, failing.url) == "open"
    assert await _state(client, healthy.url) == "closed"
    assert metric_value(await _metrics(client), "kadai_gateway_breaker_rejections_total", service=SERVICE) == 0


async def test_with_retries_the_failed_attempt_goes_to_another_instance(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    failing = await _start(start_upstream, "failing", status=503)
    healthy = await _start(start_upstream, "healthy")
    retry = {"backoff": "5ms", "max_backoff": "20ms", "jitter": 0}
    client = await gateway_client(
        _registry(registry_path, failing.url, healthy.url, breaker={"fail_max": 2}, retry=retry)
    )

    for _ in range(8):
        response = await client.get("/api/v1/users/x")
        assert response.status == 200
        assert await response.json() == {"upstream": "healthy"}

    assert failing.hits == 2  # then its breaker opened and no attempt, first or retry, went there
    assert await _state(client, failing.url) == "open"
    metrics = await _metrics(client)
    assert metric_value(metrics, "kadai_gateway_retries_total", service=SERVICE, cause="status") == 2


async def _chunks(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // 100):
        yield b"c" * 100


async def test_client_errors_do_not_count(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, "users")
    client = await gateway_client(_registry(registry_path, users.url, breaker={"fail_max": 2}, max_body_size=1000))

    for status in (400, 401, 403, 404, 409, 422, 429):
        response = await client.get(f"/api/v1/users/x?status={status}")
        assert response.status == status
    assert users.hits == 7
    for _ in range(3):  # over the limit by Content-Length: refused before the instance
        response = await client.post("/api/v1/users/upload", data=b"b" * 1001)
        assert response.status == 413
    assert users.hits == 7
    for _ in range(3):  # chunked: cut off mid-stream, after the instance has started reading
        response = await client.put("/api/v1/users/upload", data=_chunks(5000))
        assert response.status == 413

    assert await _breaker(client, users.url) == {"state": "closed", "failures": 0}
    assert (await client.get("/api/v1/users/x?status=500")).status == 500
    assert await _breaker(client, users.url) == {"state": "closed", "failures": 1}


async def test_breaker_state_is_shown_in_health_services_and_metrics(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    failing = await _start(start_upstream, "failing", status=502)
    healthy = await _start(start_upstream, "healthy")
    client = await gateway_client(
        _registry(registry_path, failing.url, healthy.url, breaker={"fail_max": 2, "reset_timeout": "10s"})
    )
    assert [instance.get("breaker") for instance in (await _listing(client))[0]["instances"]] == [None, None]

    await _statuses(client, "/api/v1/users/x", 4)

    for path in ("/api/v1/gateway/services", "/api/v1/health/detailed"):
        instances = (await _listing(client, path))[0]["instances"]
        first, second = (instance["breaker"] for instance in instances)
        assert (first["state"], first["failures"]) == ("open", 2)
        assert 9 < first["retryInSeconds"] <= 10
        assert second == {"state": "closed", "failures": 0}
    metrics = await _metrics(client)
    assert metric_value(metrics, STATE, service=SERVICE, instance=failing.url) == 2
    assert metric_value(metrics, STATE, service=SERVICE, instance=healthy.url) == 0
    assert metric_value(metrics, TRANSITIONS, service=SERVICE, instance=failing.url, state="open") == 1
    assert metric_value(metrics, TRANSITIONS, service=SERVICE, instance=healthy.url, state="open") == 0


async def test_a_reload_keeps_the_breaker_state_and_applies_new_settings(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, "users", status=500)
    client = await gateway_client(_registry(registry_path, users.url, breaker={"fail_max": 3, "reset_timeout": "20s"}))
    gw_revision = "/api/v1/gateway/status"

    async def reload(breaker: dict[str, Any], revision: int) -> None:
        _registry(registry_path, users.url, breaker=breaker)

        async def applied() -> bool:
            data = assert_success_envelope(await (await client.get(gw_revision)).json())
            return bool(data["config"]["revision"] == revision)

        await wait_until(applied, 3.0, f"revision {revision}")

    assert await _statuses(client, "/api/v1/users/x", 2) == [500, 500]
    await reload({"fail_max": 4, "reset_timeout": "20s"}, 2)

    # Two failures counted before the reload, one after: three, under the new fail_max of four.
    assert await _statuses(client, "/api/v1/users/x", 1) == [500]
    assert await _breaker(client, users.url) == {"state": "closed", "failures": 3}
    assert await _statuses(client, "/api/v1/users/x", 1) == [500]
    assert await _state(client, users.url) == "open"

    await reload({"fail_max": 4, "reset_timeout": "5s"}, 3)

    response = await client.get("/api/v1/users/x")
    retry_after = int(response.headers["Retry-After"])
    await _assert_circuit_open(response, retry_after)
    assert retry_after == 5  # the new reset_timeout, counted from when the breaker opened
    assert users.hits == 4


async def test_a_fail_fast_refusal_is_not_retried(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, "users", status=503)
    retry = {"backoff": "5ms", "max_backoff": "20ms", "jitter": 0}
    client = await gateway_client(
        _registry(registry_path, users.url, breaker={"fail_max": 1, "reset_timeout": "20s"}, retry=retry)
    )

    # The 503 opens the breaker; the retry it earns is refused by that breaker, and that refusal is final.
    await _assert_circuit_open(await client.get("/api/v1/users/x"), retry_after=20)
    await _assert_circuit_open(await client.get("/api/v1/users/x"), retry_after=20)

    assert users.hits == 1
    metrics = await _metrics(client)
    assert metric_value(metrics, "kadai_gateway_retries_total", service=SERVICE, cause="status") == 1
    assert metric_value(metrics, "kadai_gateway_breaker_rejections_total", service=SERVICE) == 2


async def test_an_abandoned_request_is_not_counted_and_an_abandoned_trial_frees_the_trial_slot(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, "users")
    client = await gateway_client(_registry(registry_path, users.url, breaker=QUICK))

    async def abandon(holding: int) -> None:
        """Send a request the instance holds, then hang up; wait until the gateway has let go of it."""
        request = asyncio.create_task(client.get("/api/v1/users/hold"))
        await wait_until(lambda: users.holding == holding, 3.0, "the request to reach the instance")
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)

        async def released() -> bool:
            return all(i["inFlight"] == 0 for entry in await _listing(client) for i in entry["instances"])

        await wait_until(released, 3.0, "the gateway to drop the abandoned request")

    await abandon(holding=1)  # with fail_max 1, a counted cancellation would open the breaker
    assert await _breaker(client, users.url) == {"state": "closed", "failures": 0}

    assert (await client.get("/api/v1/users/x?status=500")).status == 500
    await _trial_due(client, users.url)
    await abandon(holding=2)  # the trial itself
    assert await _state(client, users.url) == "half-open"

    assert (await client.get("/api/v1/users/x")).status == 200  # the next request may be the trial
    assert await _state(client, users.url) == "closed"
    users.release.set()  # the instance's own handlers of the abandoned requests


async def _reload(client: Client, write: Any, revision: int) -> None:
    """Rewrite the registry with `write()` and wait until the gateway serves that revision."""
    write()

    async def applied() -> bool:
        data = assert_success_envelope(await (await client.get("/api/v1/gateway/status")).json())
        return bool(data["config"]["revision"] == revision)

    await wait_until(applied, 3.0, f"revision {revision}")


async def test_services_on_one_backend_keep_their_own_breakers_across_a_reload(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    """Two services served by one backend (a monolith being split up) have an instance each, with the same
    URL: a reload must not make them share one (its breaker, in-flight count and health state)."""
    backend = await _start(start_upstream, "monolith")

    def write(reset_timeout: str = "20s") -> Path:
        breaker = {"fail_max": 1, "reset_timeout": reset_timeout}
        return write_registry(
            registry_path,
            {
                SERVICE: service([backend.url], "/api/v1/users", breaker=breaker, retry=False),
                "order-service": service([backend.url], "/api/v1/orders", breaker=breaker, retry=False),
            },
        )

    client = await gateway_client(write())
    assert (await client.get("/api/v1/users/x?status=500")).status == 500  # opens user-service's breaker
    assert (await client.get("/api/v1/orders/x")).status == 200

    await _reload(client, lambda: write("21s"), 2)

    await _assert_circuit_open(await client.get("/api/v1/users/x"), retry_after=21)
    assert (await client.get("/api/v1/orders/x")).status == 200
    assert backend.hits == 3
    listing = {entry["name"]: entry["instances"] for entry in await _listing(client)}
    assert listing[SERVICE][0]["breaker"]["state"] == "open"
    assert listing["order-service"][0]["breaker"]["state"] == "closed"


async def test_an_instance_removed_by_a_reload_leaves_no_breaker_series_behind(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    """The state gauge of a removed instance would stay at "open" for good, and the breaker alert with it."""
    failing = await _start(start_upstream, "failing", status=500)
    healthy = await _start(start_upstream, "healthy")
    client = await gateway_client(_registry(registry_path, failing.url, healthy.url, breaker={"fail_max": 1}))
    await _statuses(client, "/api/v1/users/x", 2)
    assert await _state(client, failing.url) == "open"
    assert f'{STATE}{{instance="{failing.url}",service="{SERVICE}"}} 2.0' in await _metrics(client)

    await _reload(client, lambda: _registry(registry_path, healthy.url, breaker={"fail_max": 1}), 2)

    metrics = await _metrics(client)
    assert f'{STATE}{{instance="{failing.url}"' not in metrics
    assert f'{STATE}{{instance="{healthy.url}",service="{SERVICE}"}} 0.0' in metrics


async def test_breaker_false_in_a_reload_drops_the_instances_breakers(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    """Switching breakers off (in an incident, say) must not leave an "open" breaker shown and exported."""
    users = await _start(start_upstream, "users", status=500)
    client = await gateway_client(_registry(registry_path, users.url, breaker={"fail_max": 1}))
    assert (await client.get("/api/v1/users/x")).status == 500
    assert await _state(client, users.url) == "open"

    await _reload(client, lambda: _registry(registry_path, users.url, breaker=False), 2)

    assert await _statuses(client, "/api/v1/users/x", 2) == [500, 500]  # no breaker: every request goes through
    assert await _breaker(client, users.url) is None
    assert f'{STATE}{{instance="{users.url}"' not in await _metrics(client)

    await _reload(client, lambda: _registry(registry_path, users.url, breaker={"fail_max": 2}), 3)
    assert await _statuses(client, "/api/v1/users/x", 1) == [500]
    assert await _breaker(client, users.url) == {"state": "closed", "failures": 1}  # a new breaker, from zero
