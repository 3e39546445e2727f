"""A real gateway process polling a real upstream process: killed, it leaves routing within the poll
threshold; restarted, it comes back."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import StartUpstream
from tests.integration.helpers import metric_value
from tests.process.helpers import json_lines, wait_until
from tests.process.test_upstream_faults import UpstreamProcess, stable_upstream
from tests.support import GatewayProcess, free_port, service, write_registry

pytestmark = pytest.mark.slow

SERVICE = "flaky"
HEALTH = {"interval": "200ms", "timeout": "200ms", "unhealthy_threshold": 2, "healthy_threshold": 2}
GAUGE = "kadai_gateway_instance_healthy"
CHECKS = "kadai_gateway_health_checks_total"


class Gateway:
    """The client side of one gateway process."""

    def __init__(self, process: GatewayProcess, session: aiohttp.ClientSession) -> None:
        self.url = process.url
        self.session = session

    async def data(self, path: str) -> Any:
        async with self.session.get(self.url + path) as response:
            assert response.status == 200
            return (await response.json())["data"]

    async def states(self) -> dict[str, str]:
        listing = await self.data("/api/v1/gateway/services")
        entry = next(entry for entry in listing if entry["name"] == SERVICE)
        return {instance["url"]: instance["state"] for instance in entry["instances"]}

    async def metrics(self) -> str:
        async with self.session.get(self.url + "/metrics") as response:
            return await response.text()

    async def answered_by(self, count: int) -> list[Any]:
        """Who answered each of `count` requests: the upstream process's pid, or "stable"."""
        answers = []
        for index in range(count):
            async with self.session.get(f"{self.url}/api/v1/flaky/item/{index}") as response:
                assert response.status == 200, await response.text()
                body = await response.json()
            answers.append(body.get("pid", body.get("service")))
        return answers

    async def flip(
        self, instance: str, change: Callable[[], object], healthy: int, result: str, threshold: int
    ) -> float:
        """Make the change, then scrape until the instance's gauge reads `healthy`: it must flip at exactly
        `threshold` new `result`s in a row (each scrape shows the counter and the gauge of one moment)."""
        before = metric_value(await self.metrics(), CHECKS, service=SERVICE, instance=instance, result=result)
        change()  # after the count above: a poll may come as soon as the process is gone, or listening
        started = time.monotonic()
        while True:
            metrics = await self.metrics()
            count = metric_value(metrics, CHECKS, service=SERVICE, instance=instance, result=result) - before
            if metric_value(metrics, GAUGE, service=SERVICE, instance=instance) == healthy:
                assert count == threshold, f"flipped after {count} results, not {threshold}"
                return time.monotonic() - started
            assert count < threshold, f"{count} results in a row and still not flipped"
            assert time.monotonic() - started < 5.0, "no flip within 5 s"
            await asyncio.sleep(0.02)


async def test_a_killed_instance_leaves_routing_within_its_threshold_and_returns_when_restarted(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    upstream = UpstreamProcess(tmp_path, free_port()).start()
    try:
        stable = await stable_upstream(start_upstream)
        registry = write_registry(
            tmp_path / "registry.yaml",
            # No retries or breaker: where requests land shows the health checks' decision alone.
            {SERVICE: service([upstream.url, stable], "/api/v1/flaky", health=HEALTH, retry=False, breaker=False)},
        )
        process = gateway_process(registry)
        async with aiohttp.ClientSession() as session:
            gw = Gateway(process, session)

            async def both_healthy() -> bool:
                return set((await gw.states()).values()) == {"healthy"}

            await wait_until(both_healthy, 5.0, "both instances to pass their first poll")
            assert upstream.proc is not None
            first_pid = upstream.proc.pid
            assert sorted(await gw.answered_by(4), key=str) == sorted([first_pid] * 2 + ["stable"] * 2, key=str)

            took = await gw.flip(upstream.url, upstream.kill, healthy=0, result="failed", threshold=2)

            assert took < 2.0
            assert (await gw.states())[upstream.url] == "unhealthy"
            assert await gw.answered_by(6) == ["stable"] * 6
            metrics = await gw.metrics()
            assert metric_value(metrics, "kadai_gateway_upstream_errors_total", service=SERVICE) == 0

            await gw.flip(upstream.url, upstream.start, healthy=1, result="ok", threshold=2)
            assert upstream.proc is not None and upstream.proc.pid != first_pid

            assert (await gw.states())[upstream.url] == "healthy"
            answers = await gw.answered_by(4)
            assert sorted(answers, key=str) == sorted([upstream.proc.pid] * 2 + ["stable"] * 2, key=str)
        records = [r for r in json_lines(process.output()) if r.get("instance") == upstream.url]
        changes = [(r["level"], r["state"]) for r in records if "routing" in r.get("message", "")]
        assert changes == [("warning", "unhealthy"), ("info", "healthy")]
    finally:
        upstream.stop()
