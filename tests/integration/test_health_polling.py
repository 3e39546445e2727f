"""Active health checks in-process: instances whose health endpoint fails leave routing within the threshold,
and hanging polls run side by side without holding up requests."""
from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.integration.helpers import (
    TIMESTAMP,
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
HEALTH = {"interval": "200ms", "timeout": "200ms", "unhealthy_threshold": 2, "healthy_threshold": 2}
GAUGE = "kadai_gateway_instance_healthy"
CHECKS = "kadai_gateway_health_checks_total"


class Monitored:
    """An instance whose /health answers by `mode` (ok, fail: 500, hang: no answer); other paths say its name."""

    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name = name
        self.mode = mode
        self.polls: collections.Counter[str] = collections.Counter()
        self.poll_agents: set[str] = set()
        self.hangs: list[tuple[float, float]] = []
        """(start, end) on time.monotonic() of each hanging poll: it ends when the gateway drops it (or at 2 s)."""
        self.served = 0
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        if request.path != "/health":
            self.served += 1
            return web.json_response({"upstream": self.name})
        mode = self.mode
        self.polls[mode] += 1
        self.poll_agents.add(request.headers.get("User-Agent", ""))
        if mode == "fail":
            return web.json_response({"status": "down"}, status=500)
        if mode == "hang":
            started = time.monotonic()
            deadline = started + 2.0
            try:
                while (
                    request.transport is not None and not request.transport.is_closing() and time.monotonic() < deadline
                ):
                    await asyncio.sleep(0.02)
            finally:
                self.hangs.append((started, time.monotonic()))
        return web.json_response({"status": "ok"})


async def _start(start_upstream: StartUpstream, name: str, mode: str = "ok") -> Monitored:
    upstream = Monitored(name, mode)
    upstream.url = await start_upstream(upstream.app())
    return upstream


def _registry(path: Path, *upstreams: Monitored, health: dict[str, Any] | None = None) -> Path:
    """No retries and no breaker: where a request lands shows what the health checks decided."""
    return write_registry(
        path,
        {
            SERVICE: service(
                [upstream.url for upstream in upstreams],
                "/api/v1/users",
                health=HEALTH if health is None else health,
                retry=False,
                breaker=False,
            )
        },
    )


async def _metrics(client: Client) -> str:
    return await (await client.get("/metrics")).text()


def _has_series(text: str, name: str, instance: str) -> bool:
    return f'{name}{{instance="{instance}",service="{SERVICE}"}}' in text


def _gauge(text: str, instance: str) -> float | None:
    """The instance's routability gauge; None before its first poll result."""
    return metric_value(text, GAUGE, service=SERVICE, instance=instance) if _has_series(text, GAUGE, instance) else None


async def _data(client: Client, path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200
    return assert_success_envelope(await response.json())


async def _instances(client: Client) -> dict[str, dict[str, Any]]:
    listing = await _data(client, "/api/v1/health/detailed")
    entry = next(entry for entry in listing["services"] if entry["name"] == SERVICE)
    return {instance["url"]: instance for instance in entry["instances"]}


async def _answers(client: Client, count: int) -> list[str]:
    names = []
    for _ in range(count):
        response = await client.get("/api/v1/users/x")
        assert response.status == 200
        names.append((await response.json())["upstream"])
    return names


async def _flip(client: Client, upstream: Monitored, mode: str, healthy: int, threshold: int) -> float:
    """Switch the instance's health to `mode` and scrape until the gateway's gauge reads `healthy`.

    Each scrape holds the check counter and the gauge of one moment: the state must flip at exactly
    `threshold` results in a row, neither earlier nor later. Returns the seconds it took."""
    result = "ok" if healthy else "failed"

    async def settled() -> bool:  # the gauge exists and reads the other state: the flip starts from there
        return _gauge(await _metrics(client), upstream.url) == 1 - healthy

    await wait_until(settled, 2.0, f"the gauge of {upstream.name} to read {1 - healthy}")
    before = metric_value(await _metrics(client), CHECKS, service=SERVICE, instance=upstream.url, result=result)
    upstream.mode = mode
    started = time.monotonic()
    while True:
        metrics = await _metrics(client)
        count = metric_value(metrics, CHECKS, service=SERVICE, instance=upstream.url, result=result) - before
        if _gauge(metrics, upstream.url) == healthy:
            assert count == threshold, f"flipped after {count} results, not {threshold}"
            return time.monotonic() - started
        assert count < threshold, f"{count} results in a row and still not flipped"
        assert time.monotonic() - started < 3.0, "no flip within 3 s"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(("mode", "error"), [("fail", "status 500"), ("hang", "no answer within 0.2s")])
async def test_an_instance_failing_its_health_checks_leaves_routing_and_comes_back(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient, mode: str, error: str
) -> None:
    first = await _start(start_upstream, "first")
    second = await _start(start_upstream, "second")
    client = await gateway_client(_registry(registry_path, first, second))

    async def both_healthy() -> bool:
        return [i["state"] for i in (await _instances(client)).values()] == ["healthy", "healthy"]

    await wait_until(both_healthy, 2.0, "both instances to pass their first poll")
    assert first.poll_agents == {"kadai-gateway-health"}

    took = await _flip(client, first, mode, healthy=0, threshold=2)

    assert took < 1.5  # two polls 200 ms apart, plus the poller's tick and the poll timeout
    served = first.served
    assert await _answers(client, 6) == ["second"] * 6
    assert first.served == served
    instances = await _instances(client)
    assert instances[first.url]["state"] == "unhealthy"
    assert instances[first.url]["lastError"] == error
    assert TIMESTAMP.match(instances[first.url]["lastCheck"])
    assert instances[second.url]["state"] == "healthy" and instances[second.url]["lastError"] is None
    detailed = await _data(client, "/api/v1/health/detailed")
    assert detailed["status"] == "degraded"
    assert next(entry for entry in detailed["services"] if entry["name"] == SERVICE)["state"] == "degraded"
    summary = await _data(client, "/api/v1/health")
    assert summary["status"] == "degraded"

    await _flip(client, first, "ok", healthy=1, threshold=2)

    assert sorted(await _answers(client, 4)) == ["first", "first", "second", "second"]
    instances = await _instances(client)
    assert instances[first.url]["state"] == "healthy" and instances[first.url]["lastError"] is None
    assert (await _data(client, "/api/v1/health"))["status"] == "ok"


async def test_with_its_only_instance_unhealthy_the_service_answers_503(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    only = await _start(start_upstream, "only")
    client = await gateway_client(_registry(registry_path, only))
    await wait_until(lambda: only.polls["ok"] >= 1, 2.0, "the first poll")
    assert await _answers(client, 1) == ["only"]

    await _flip(client, only, "fail", healthy=0, threshold=2)

    response = await client.get("/api/v1/users/x")
    assert response.status == 503
    body = await response.json()
    assert_error_envelope(body, 503, response.headers["X-Request-ID"])
    assert body["error"] == f"No healthy instance of {SERVICE}"
    assert body["details"] == {"service": SERVICE}
    assert only.served == 1
    detailed = await _data(client, "/api/v1/health/detailed")
    assert next(entry for entry in detailed["services"] if entry["name"] == SERVICE)["state"] == "down"

    await _flip(client, only, "ok", healthy=1, threshold=2)

    assert await _answers(client, 2) == ["only", "only"]


async def test_the_first_poll_of_a_new_instance_decides_its_state(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    good = await _start(start_upstream, "good")
    bad = await _start(start_upstream, "bad", mode="fail")
    client = await gateway_client(_registry(registry_path, good, bad))

    async def decided() -> bool:
        return {i["state"] for i in (await _instances(client)).values()} <= {"healthy", "unhealthy"}

    await wait_until(decided, 2.0, "the first polls")
    metrics = await _metrics(client)
    # One result each, and the state already follows it (no threshold for an instance never checked).
    assert metric_value(metrics, CHECKS, service=SERVICE, instance=bad.url, result="failed") == 1
    assert metric_value(metrics, GAUGE, service=SERVICE, instance=bad.url) == 0
    assert metric_value(metrics, CHECKS, service=SERVICE, instance=good.url, result="ok") == 1
    assert metric_value(metrics, GAUGE, service=SERVICE, instance=good.url) == 1
    assert await _answers(client, 4) == ["good"] * 4
    assert bad.served == 0


async def test_polls_follow_the_interval(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    users = await _start(start_upstream, "users")
    health = {**HEALTH, "interval": "500ms"}
    await gateway_client(_registry(registry_path, users, health=health))
    await wait_until(lambda: users.polls["ok"] == 1, 2.0, "the first poll")
    started = time.monotonic()

    await wait_until(lambda: users.polls["ok"] == 3, 3.0, "two more polls")

    assert 0.9 <= time.monotonic() - started < 1.6  # two intervals, each late by at most one 250 ms tick


async def test_a_reload_that_switches_polling_off_puts_unhealthy_instances_back_into_routing(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    good = await _start(start_upstream, "good")
    bad = await _start(start_upstream, "bad", mode="fail")
    clock = await _start(start_upstream, "clock")  # another service, still polled: shows time passing

    def registry(health: dict[str, Any]) -> Path:
        return write_registry(
            registry_path,
            {
                SERVICE: service([good.url, bad.url], "/api/v1/users", health=health, retry=False, breaker=False),
                "clock-service": service([clock.url], "/api/v1/clock", health=HEALTH),
            },
        )

    client = await gateway_client(registry(HEALTH))

    async def bad_is_out() -> bool:
        return bool((await _instances(client))[bad.url]["state"] == "unhealthy")

    await wait_until(bad_is_out, 2.0, "the failing instance to leave routing")
    registry({"enabled": False})

    async def bad_is_back() -> bool:
        return bool((await _instances(client))[bad.url]["state"] == "unknown")

    # Nobody polls it any more: a verdict that will never be revisited must not keep it out of routing.
    await wait_until(bad_is_back, 3.0, "the instance to be routable again")
    assert sorted(await _answers(client, 4)) == ["bad", "bad", "good", "good"]
    metrics = await _metrics(client)
    assert not _has_series(metrics, GAUGE, bad.url)
    assert not _has_series(metrics, GAUGE, good.url)
    assert metric_value(metrics, GAUGE, service="clock-service", instance=clock.url) == 1
    polls = bad.polls["fail"] + good.polls["ok"]
    clock_polls = clock.polls["ok"]
    await wait_until(lambda: clock.polls["ok"] >= clock_polls + 2, 3.0, "two more polls of the clock service")
    assert bad.polls["fail"] + good.polls["ok"] == polls


async def test_an_instance_removed_by_a_reload_is_forgotten(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    kept = await _start(start_upstream, "kept")
    removed = await _start(start_upstream, "removed", mode="fail")
    client = await gateway_client(_registry(registry_path, kept, removed))

    async def both_polled() -> bool:
        metrics = await _metrics(client)
        return _has_series(metrics, GAUGE, kept.url) and _has_series(metrics, GAUGE, removed.url)

    await wait_until(both_polled, 2.0, "the first polls")
    _registry(registry_path, kept)

    async def forgotten() -> bool:
        return not _has_series(await _metrics(client), GAUGE, removed.url)

    # A series left behind at 0 would keep an "instance down" alert firing for an instance nobody runs.
    await wait_until(forgotten, 3.0, "the gauge of the removed instance to go")
    polls = removed.polls["fail"]
    assert _has_series(await _metrics(client), GAUGE, kept.url)
    kept_polls = kept.polls["ok"]
    await wait_until(lambda: kept.polls["ok"] >= kept_polls + 2, 3.0, "two more polls of the kept instance")
    assert removed.polls["fail"] == polls


async def test_hanging_health_checks_are_polled_concurrently_and_never_hold_up_requests(
    registry_path: Path, start_upstream: StartUpstream, gateway_client: GatewayClient
) -> None:
    hanging = [await _start(start_upstream, f"hanging-{n}", mode="hang") for n in range(5)]
    healthy = await _start(start_upstream, "healthy")
    # One round only (long interval); the poll timeout well below Monitored's own 2 s hang limit.
    health = {**HEALTH, "interval": "30s", "timeout": "1500ms"}
    registry = write_registry(
        registry_path,
        {
            "slow-service": service([upstream.url for upstream in hanging], "/api/v1/slow", health=health),
            SERVICE: service([healthy.url], "/api/v1/users", health=health, retry=False, breaker=False),
        },
    )
    client = await gateway_client(registry)
    await wait_until(lambda: all(u.polls["hang"] == 1 for u in hanging), 2.0, "every hanging instance's poll")

    # While all five polls hang, requests to the healthy service are answered as fast as ever.
    for _ in range(10):
        started = time.monotonic()
        assert await _answers(client, 1) == ["healthy"]
        assert time.monotonic() - started < 0.5
    assert not any(upstream.hangs for upstream in hanging), "a poll ended before the requests did"

    async def all_failed() -> bool:
        metrics = await _metrics(client)
        return all(
            metric_value(metrics, CHECKS, service="slow-service", instance=u.url, result="failed") == 1 for u in hanging
        )

    await wait_until(all_failed, 5.0, "every hanging poll to time out")
    decided = time.monotonic()
    await wait_until(lambda: all(u.hangs for u in hanging), 2.0, "every instance to see its poll dropped")
    spans = [span for upstream in hanging for span in upstream.hangs]
    assert len(spans) == 5
    # Every poll was running at once: the last one started before the first one was dropped ...
    assert max(start for start, _ in spans) < min(end for _, end in spans)
    # ... so the round took about one timeout (1.5 s), not five of them in a row (7.5 s).
    assert 1.4 <= decided - min(start for start, _ in spans) < 3.0
    instances = await _data(client, "/api/v1/health/detailed")
    slow = next(entry for entry in instances["services"] if entry["name"] == "slow-service")
    assert {(i["state"], i["lastError"]) for i in slow["instances"]} == {("unhealthy", "no answer within 1.5s")}
