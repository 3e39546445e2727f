"""registry.yaml edited under load in a real gateway process: GETs and POST uploads to routes the edits
leave alone, slow ones in flight across every swap (and every rejected edit), and none of them fails."""
from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.process.conftest import _clean_gateway_environment  # noqa: F401 - autouse: a clean environment
from tests.process.helpers import wait_until
from tests.support import GatewayProcess, service, write_registry

pytestmark = pytest.mark.slow

WORKERS = 8
QUICK_WORKERS = 4
DELAY = 0.6
"""The unchanged route's answer time: longer than a reload takes to be noticed, settled and applied."""
UPLOAD = os.urandom(20_000)


def _app(name: str, delay: float) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(delay)
        digest = hashlib.sha256(body).hexdigest()
        return web.json_response({"service": name, "path": request.path, "method": request.method, "sha": digest})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@dataclass
class Timeline:
    """When each slow request started and ended; how many requests were sent, and what went wrong."""

    spans: list[tuple[float, float]] = field(default_factory=list)
    sent: int = 0
    failures: list[str] = field(default_factory=list)

    def spanning(self, start: float, end: float) -> int:
        """Requests that began before `start` and ended after `end`: in flight all through that interval."""
        return sum(1 for began, ended in self.spans if began < start and ended > end)


async def _load(gateway: GatewayProcess, timeline: Timeline, name: str, index: int, stop: asyncio.Event) -> None:
    """Requests to service `name`, back to back, GETs and POSTs with a body in turn."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.sleep(index * DELAY / WORKERS)  # staggered: some request is always half way through
        count = 0
        while not stop.is_set():
            count += 1
            post = count % 2 == index % 2
            path = f"/{name}/w{index}/{count}"
            expected = {
                "service": name,
                "path": path,
                "method": "POST" if post else "GET",
                "sha": hashlib.sha256(UPLOAD if post else b"").hexdigest(),
            }
            began = time.monotonic()
            try:
                async with session.request(
                    expected["method"], f"{gateway.url}/api/v1{path}", data=UPLOAD if post else None
                ) as response:
                    body = await response.json(content_type=None)
                    if response.status != 200 or body != expected:
                        timeline.failures.append(f"{path}: {response.status} {body}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                timeline.failures.append(f"{path}: {exc!r}")
            timeline.sent += 1
            if name == "stable":
                timeline.spans.append((began, time.monotonic()))


async def test_no_request_to_an_unchanged_route_fails_while_the_registry_is_edited_under_load(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    stable = await start_upstream(_app("stable", DELAY))
    quick = await start_upstream(_app("quick", 0.0))
    extra = [await start_upstream(_app("extra", 0.0)) for _ in range(2)]
    path = tmp_path / "registry.yaml"

    def services(extra_instances: list[str] | None, read: str = "5s") -> dict[str, Any]:
        result: dict[str, Any] = {
            "stable": service([stable], "/api/v1/stable"),
            "quick": service([quick], "/api/v1/quick"),
        }
        if extra_instances:
            result["extra"] = service(extra_instances, {"prefix": "/api/v1/extra", "timeouts": {"read": read}})
        return result

    def write(extra_instances: list[str] | None, read: str = "5s") -> None:
        write_registry(path, services(extra_instances, read))

    def rename(extra_instances: list[str] | None) -> None:
        write_registry(path.with_name("registry.yaml.tmp"), services(extra_instances))
        os.replace(path.with_name("registry.yaml.tmp"), path)

    write(None)
    gateway = gateway_process(path, env={"KADAI_RELOAD_INTERVAL": "100ms"})
    timeline = Timeline()
    stop = asyncio.Event()
    workers = [asyncio.create_task(_load(gateway, timeline, "stable", index, stop)) for index in range(WORKERS)]
    workers += [asyncio.create_task(_load(gateway, timeline, "quick", index, stop)) for index in range(QUICK_WORKERS)]
    swaps: list[tuple[str, float, float]] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

            async def config() -> dict[str, Any]:
                async with session.get(f"{gateway.url}/api/v1/gateway/status") as response:
                    return (await response.json())["data"]["config"]  # type: ignore[no-any-return]

            async def edit(name: str, change: Callable[[], object], revision: int, ok: bool) -> None:
                """Make the change and wait until the gateway has applied (or rejected) it."""
                before = (await config())["lastReload"]

                async def settled() -> bool:
                    current = await config()
                    last = current["lastReload"]
                    if last is None or last == before:  # a reload attempt after this change, not an older one
                        return False
                    return bool(current["revision"] == revision and last["ok"] is ok)

                written = time.monotonic()
                change()
                await wait_until(settled, 5.0, f"the edit {name!r} to settle", interval=0.02)
                swaps.append((name, written, time.monotonic()))

            async def extra_status() -> int:
                async with session.get(f"{gateway.url}/api/v1/extra/x") as response:
                    await response.read()
                    return response.status

            await wait_until(lambda: len(timeline.spans) >= WORKERS, 10.0, "the load to be under way")
            await edit("add a service", lambda: write(extra[:1]), 2, True)
            assert await extra_status() == 200
            await edit("change its instances", lambda: write(extra), 3, True)
            await edit("invalid YAML", lambda: path.write_text("version: 1\nservices:\n  stable: [oops\n"), 3, False)
            await edit("an empty file", lambda: path.write_text(""), 3, False)
            await edit("an invalid field", lambda: write(extra, read="later"), 3, False)
            await edit("remove it, by rename", lambda: rename(None), 4, True)
            assert await extra_status() == 404
            await edit("add it back", lambda: write(extra), 5, True)
            signalled_at = time.monotonic()
            gateway.signal(signal.SIGHUP)  # the same file again: nothing changes
            await asyncio.sleep(0.3)
            assert (await config())["revision"] == 5
            swaps.append(("SIGHUP, unchanged file", signalled_at, time.monotonic()))
    finally:
        stop.set()
        await asyncio.gather(*workers)

    spanning = {name: timeline.spanning(written, settled) for name, written, settled in swaps}
    print(f"\n{timeline.sent} requests to the unchanged routes, {len(timeline.failures)} failed;"
          f" in flight all through each edit: {spanning}")
    assert timeline.failures == [], timeline.failures[:10]
    # Every edit was made and applied (or refused) while slow requests were in flight on an unchanged route.
    assert all(count >= 1 for count in spanning.values()), spanning

