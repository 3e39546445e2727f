"""Load balancing through an in-process gateway with real loopback instances: least_requests sends new
requests to the instance with the fewest in flight, and skips one whose breaker is open."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.helpers import Client, GatewayClient, StartUpstream, assert_success_envelope
from tests.process.helpers import wait_until
from tests.support import service, write_registry

SERVICE = "user-service"


class Backend:
    """A service instance that names itself in its answers; when `holds`, it keeps /hold requests until `release`."""

    def __init__(self, name: str, status: int = 200, holds: bool = False) -> None:
        self.name = name
        self.status = status
        self.holds = holds
        self.hits = 0
        self.holding = 0
        self.release = asyncio.Event()
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.holds and request.path.endswith("/hold"):
            self.holding += 1
            await self.release.wait()
        return web.json_response({"upstream": self.name}, status=self.status)


@pytest.fixture
async def pending() -> AsyncIterator[list[asyncio.Task[Any]]]:
    """Requests a test leaves open; cancelled at teardown if the test did not finish them."""
    tasks: list[asyncio.Task[Any]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _start(start_upstream: StartUpstream, name: str, **options: Any) -> Backend:
    backend = Backend(name, **options)
    backend.url = await start_upstream(backend.app())
    return backend


def _registry(path: Path, *instances: Backend, balancer: str, **options: Any) -> Path:
    """One service; no retries, so each request is one pick of the balancer."""
    urls = [instance.url for instance in instances]
    return write_registry(path, {SERVICE: service(urls, "/api/v1/users", balancer=balancer, retry=False, **options)})


async def _answers(client: Client, count: int) -> list[tuple[int, str]]:
    answers = []
    for _ in range(count):
        response = await client.get("/api/v1/users/x")
        answers.append((response.status, (await response.json())["upstream"]))
    return answers


async def _in_flight(client: Client) -> dict[str, int]:
    data = assert_success_envelope(await (await client.get("/api/v1/gateway/services")).json())
    listing = data if isinstance(data, list) else data["services"]
    entry = next(entry for entry in listing if entry["name"] == SERVICE)
    return {instance["url"]: instance["inFlight"] for instance in entry["instances"]}


@pytest.mark.parametrize(
    ("balancer", "to_busy"), [("least_requests", 0), ("round_robin", 5)], ids=["least-requests", "round-robin"]
)
async def test_least_requests_sends_new_requests_away_from_an_instance_holding_one(
    registry_path: Path,
    start_upstream: StartUpstream,
    gateway_client: GatewayClient,
    pending: list[asyncio.Task[Any]],
    balancer: str,
    to_busy: int,
) -> None:
    busy = await _start(start_upstream, "busy", holds=True)
    idle = await _start(start_upstream, "idle")
    client = await gateway_client(_registry(registry_path, busy, idle, balancer=balancer))

    # /hold requests until one is held open on `busy` (the other instance answers them at once).
    while busy.holding == 0:
        assert len(pending) < 4, "no /hold request reached the busy instance"
        pending.append(asyncio.create_task(client.get("/api/v1/users/hold")))
        await wait_until(lambda: pending[-1].done() or busy.holding == 1, 3.0, "the /hold request to land")
    assert (await _in_flight(client))[busy.url] == 1

    answers = await _answers(client, 10)

    assert [status for status, _ in answers] == [200] * 10
    # The contrast with round-robin shows what least_requests decides: it never adds to the busy instance.
    assert [name for _, name in answers].count("busy") == to_busy
    busy.release.set()
    held = await pending[-1]
    assert held.status == 200 and (await held.json())["upstream"] == "busy"


async def test_least_requests_skips_an_instance_whose_breaker_is_open_even_when_it_is_the_least_busy(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, pending: list[asyncio.Task[Any]]
) -> None:
    failing = await _start(start_upstream, "failing", status=500)
    healthy = await _start(start_upstream, "healthy", holds=True)
    breaker = {"fail_max": 1, "reset_timeout": "20s"}
    registry = _registry(registry_path, failing, healthy, balancer="least_requests", breaker=breaker)
    client = await gateway_client(registry)

    answers = await _answers(client, 6)
    # Its one failure opened the breaker of `failing`; every other request went to `healthy`.
    assert answers.count((500, "failing")) == 1 and answers.count((200, "healthy")) == 5
    assert failing.hits == 1

    # `healthy` now holds requests while `failing` holds none: the open breaker still wins over the count.
    pending.extend(asyncio.create_task(client.get("/api/v1/users/hold")) for _ in range(2))
    await wait_until(lambda: healthy.holding == 2, 3.0, "two requests held by the healthy instance")
    assert await _in_flight(client) == {failing.url: 0, healthy.url: 2}
    assert await _answers(client, 5) == [(200, "healthy")] * 5
    assert failing.hits == 1
    healthy.release.set()
    assert [response.status for response in await asyncio.gather(*pending)] == [200, 200]
