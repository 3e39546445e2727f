"""Hot reload of registry.yaml in a real gateway process: polling, SIGHUP, refused edits, no failed requests."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.process.helpers import json_lines, wait_until
from tests.support import GatewayProcess, service, write_registry

pytestmark = pytest.mark.slow

REJECTED = "registry reload rejected; the last good configuration stays in use"


def _named_app(name: str, delay: float = 0.0) -> tuple[web.Application, list[str]]:
    """An upstream answering {"service": name, "path": ...}; returns the app and the list of paths it saw."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        if delay:
            await asyncio.sleep(delay)
        return web.json_response({"service": name, "path": request.path_qs})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app, seen


class Registry:
    """Writes variants of one registry file: the `stable` service always, `extra` on demand."""

    def __init__(self, path: Path, stable: str, extra: str) -> None:
        self.path = path
        self.stable = stable
        self.extra = extra

    def services(self, extra_prefix: str | None = None, extra_read: str = "10s") -> dict[str, Any]:
        services: dict[str, Any] = {"stable": service([self.stable], "/api/v1/stable")}
        if extra_prefix:
            services["extra"] = service([self.extra], {"prefix": extra_prefix, "timeouts": {"read": extra_read}})
        return services

    def write(self, extra_prefix: str | None = None, extra_read: str = "10s") -> Path:
        return write_registry(self.path, self.services(extra_prefix, extra_read))

    def replace(self, extra_prefix: str | None = None) -> None:
        """Write a new version the way many editors do: a temporary file renamed over the old one."""
        temporary = write_registry(self.path.with_name("registry.yaml.tmp"), self.services(extra_prefix))
        os.replace(temporary, self.path)

    def write_text(self, text: str) -> None:
        self.path.write_text(text)


async def _status(session: aiohttp.ClientSession, gw: GatewayProcess) -> dict[str, Any]:
    async with session.get(f"{gw.url}/api/v1/gateway/status") as response:
        assert response.status == 200
        body = await response.json()
    data: dict[str, Any] = body["data"]
    return data


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.read()


async def _setup(
    tmp_path: Path,
    start_upstream: StartUpstream,
    gateway_process: Callable[..., GatewayProcess],
    env: dict[str, str] | None = None,
    extra_delay: float = 0.0,
    extra_prefix: str | None = None,
) -> tuple[GatewayProcess, Registry, list[str]]:
    stable_app, _ = _named_app("stable")
    extra_app, extra_seen = _named_app("extra", extra_delay)
    registry = Registry(tmp_path / "registry.yaml", await start_upstream(stable_app), await start_upstream(extra_app))
    registry.write(extra_prefix)
    gw = gateway_process(registry.path, env=env or {})
    return gw, registry, extra_seen


async def test_added_service_answers_within_two_seconds(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    gw, registry, _ = await _setup(tmp_path, start_upstream, gateway_process)
    async with aiohttp.ClientSession() as session:
        status, body = await _get(session, f"{gw.url}/api/v1/extra/hello")
        assert status == 404 and body["success"] is False

        registry.write(extra_prefix="/api/v1/extra")
        edited = time.monotonic()

        async def answers() -> bool:
            code, data = await _get(session, f"{gw.url}/api/v1/extra/hello?x=1")
            return code == 200 and data == {"service": "extra", "path": "/extra/hello?x=1"}

        await wait_until(answers, 5.0, "the added route to answer", interval=0.02)
        took = time.monotonic() - edited
        print(f"\nadded route answered {took:.3f}s after the edit (poll interval 0.5s)")
        assert took < 2.0

        config = (await _status(session, gw))["config"]
        assert config["revision"] == 2
        assert config["lastReload"]["ok"] is True and config["lastReload"]["error"] is None
        assert (await _get(session, f"{gw.url}/api/v1/stable/x"))[0] == 200

    reloaded = [r for r in json_lines(gw.output()) if r["message"] == "registry reloaded"]
    assert len(reloaded) == 1 and reloaded[0]["revision"] == 2 and reloaded[0]["routes"] == 2


async def test_invalid_edit_keeps_the_old_config_and_reports_the_error(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    gw, registry, _ = await _setup(tmp_path, start_upstream, gateway_process)
    async with aiohttp.ClientSession() as session:
        before = (await _status(session, gw))["config"]
        assert before["revision"] == 1 and before["lastReload"] is None

        # A file that would add a route, were it not for one bad field.
        registry.write(extra_prefix="/api/v1/extra", extra_read="soon")

        async def rejected() -> bool:
            last = (await _status(session, gw))["config"]["lastReload"]
            return last is not None and last["ok"] is False

        await wait_until(rejected, 3.0, "the reload to be rejected")
        config = (await _status(session, gw))["config"]
        assert config["revision"] == 1
        assert config["digest"] == before["digest"]
        error = config["lastReload"]["error"]
        assert str(registry.path) in error
        assert "services.extra.routes[0].timeouts.read" in error
        assert config["lastReload"]["revision"] == 1

        assert (await _get(session, f"{gw.url}/api/v1/stable/x"))[0] == 200
        assert (await _get(session, f"{gw.url}/api/v1/extra/x"))[0] == 404

        async with session.get(f"{gw.url}/metrics") as response:
            metrics = await response.text()
        assert 'kadai_gateway_config_reloads_total{result="failed"} 1.0' in metrics
        assert "kadai_gateway_config_revision 1.0" in metrics

    records = [r for r in json_lines(gw.output()) if r["message"] == REJECTED]
    assert len(records) == 1, gw.output()
    assert records[0]["level"] == "error"
    assert "services.extra.routes[0].timeouts.read" in records[0]["error"]


async def test_invalid_yaml_is_rejected_with_its_line(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    gw, registry, _ = await _setup(tmp_path, start_upstream, gateway_process)
    registry.write_text("version: 1\nservices:\n  stable: [unclosed\n")
    async with aiohttp.ClientSession() as session:

        async def rejected() -> bool:
            last = (await _status(session, gw))["config"]["lastReload"]
            return last is not None and last["ok"] is False

        await wait_until(rejected, 3.0, "the reload to be rejected")
        error = (await _status(session, gw))["config"]["lastReload"]["error"]
        assert "invalid YAML" in error and "line " in error
        assert (await _get(session, f"{gw.url}/api/v1/stable/x"))[0] == 200
    assert any(r["message"] == REJECTED and "invalid YAML" in r["error"] for r in json_lines(gw.output()))


async def test_restoring_the_good_file_clears_the_reload_error(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    gw, registry, _ = await _setup(tmp_path, start_upstream, gateway_process)
    good = registry.path.read_bytes()
    async with aiohttp.ClientSession() as session:
        registry.write_text("version: 1\nservices: {stable: nonsense}\n")

        async def last_ok(expected: bool) -> bool:
            last = (await _status(session, gw))["config"]["lastReload"]
            return last is not None and last["ok"] is expected

        await wait_until(lambda: last_ok(False), 3.0, "the bad edit to be rejected")
        registry.path.write_bytes(good)  # the operator reverts the bad edit
        # The file on disk is valid and is the one serving: status must stop reporting the old error.
        await wait_until(lambda: last_ok(True), 2.0, "lastReload to report the restored file as ok")


async def test_sighup_reloads_at_once(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    # Polling every minute: only SIGHUP can make the edit apply within the test.
    gw, registry, _ = await _setup(tmp_path, start_upstream, gateway_process, env={"KADAI_RELOAD_INTERVAL": "60s"})
    async with aiohttp.ClientSession() as session:
        registry.write(extra_prefix="/api/v1/extra")
        await asyncio.sleep(1.0)
        assert (await _get(session, f"{gw.url}/api/v1/extra/x"))[0] == 404, "the edit applied without SIGHUP"

        gw.signal(signal.SIGHUP)
        signalled = time.monotonic()

        async def answers() -> bool:
            return (await _get(session, f"{gw.url}/api/v1/extra/x"))[0] == 200

        await wait_until(answers, 3.0, "the route added before SIGHUP to answer", interval=0.02)
        took = time.monotonic() - signalled
        print(f"\nSIGHUP reload applied in {took:.3f}s")
        assert took < 1.0
        assert (await _status(session, gw))["config"]["revision"] == 2

        # SIGHUP with an unchanged file changes nothing, and the process keeps running.
        gw.signal(signal.SIGHUP)
        await asyncio.sleep(0.4)
        assert gw.proc is not None and gw.proc.poll() is None
        config = (await _status(session, gw))["config"]
        assert config["revision"] == 2 and config["lastReload"]["ok"] is True


async def test_request_in_flight_finishes_on_a_removed_route(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    gw, registry, extra_seen = await _setup(
        tmp_path, start_upstream, gateway_process, extra_delay=1.5, extra_prefix="/api/v1/extra"
    )
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(_get(session, f"{gw.url}/api/v1/extra/slow"))
        try:
            await wait_until(lambda: extra_seen == ["/extra/slow"], 3.0, "the slow request to reach its upstream")
            registry.write()  # extra removed

            async def removed() -> bool:
                revision: int = (await _status(session, gw))["config"]["revision"]
                return revision == 2

            await wait_until(removed, 3.0, "the removal to apply")
            assert not slow.done()
            assert (await _get(session, f"{gw.url}/api/v1/extra/new"))[0] == 404
            status, body = await asyncio.wait_for(slow, 5.0)
        finally:
            slow.cancel()
            await asyncio.gather(slow, return_exceptions=True)
    assert status == 200 and body == {"service": "extra", "path": "/extra/slow"}


async def test_no_request_fails_while_the_registry_changes(
    tmp_path: Path, start_upstream: StartUpstream, gateway_process: Callable[..., GatewayProcess]
) -> None:
    gw, registry, _ = await _setup(tmp_path, start_upstream, gateway_process)
    clients, minimum_each = 10, 20
    edits_done = asyncio.Event()
    failures: list[str] = []
    sent = [0] * clients

    async def client(index: int) -> None:
        # Its own session: keep-alive connections that live across the reloads.
        async with aiohttp.ClientSession() as session:
            while not (edits_done.is_set() and sent[index] >= minimum_each):
                sent[index] += 1
                url = f"{gw.url}/api/v1/stable/c{index}/{sent[index]}"
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                        body = await response.json()
                        expected = {"service": "stable", "path": f"/stable/c{index}/{sent[index]}"}
                        if response.status != 200 or body != expected:
                            failures.append(f"{url}: {response.status} {body}")
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    failures.append(f"{url}: {exc!r}")
                await asyncio.sleep(0.1)

    async def edits() -> list[str]:
        done: list[str] = []
        async with aiohttp.ClientSession() as session:

            async def config() -> dict[str, Any]:
                current: dict[str, Any] = (await _status(session, gw))["config"]
                return current

            async def route_status(path: str) -> int:
                return (await _get(session, gw.url + path))[0]

            async def settled(revision: int, ok: bool, error_part: str | None = None) -> bool:
                current = await config()
                last = current["lastReload"]
                if current["revision"] != revision or last is None or last["ok"] is not ok:
                    return False
                return error_part is None or error_part in (last["error"] or "")

            await asyncio.sleep(0.3)
            registry.write(extra_prefix="/api/v1/extra")
            await wait_until(lambda: settled(2, True), 3.0, "extra to be added")
            assert await route_status("/api/v1/extra/x") == 200
            done.append("added extra")

            registry.write_text("version: 1\nservices:\n  stable: {instances: [oops\n")
            await wait_until(lambda: settled(2, False, "invalid YAML"), 3.0, "invalid YAML to be rejected")
            done.append("invalid YAML rejected")

            registry.replace()  # extra removed, by rename
            await wait_until(lambda: settled(3, True), 3.0, "extra to be removed")
            assert await route_status("/api/v1/extra/x") == 404
            done.append("removed extra")

            registry.write(extra_prefix="/api/v1/extra", extra_read="later")
            await wait_until(
                lambda: settled(3, False, "services.extra.routes[0].timeouts.read"), 3.0, "bad field to be rejected"
            )
            assert await route_status("/api/v1/extra/x") == 404
            done.append("bad field rejected")

            registry.write(extra_prefix="/api/v1/more")
            await wait_until(lambda: settled(4, True), 3.0, "extra to be added back")
            assert await route_status("/api/v1/more/x") == 200
            done.append("added extra again")
            await asyncio.sleep(0.3)
        return done

    started = time.monotonic()
    client_tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    try:
        done = await edits()
    finally:
        edits_done.set()
        results = await asyncio.wait_for(asyncio.gather(*client_tasks, return_exceptions=True), 15.0)
    elapsed = time.monotonic() - started
    assert all(result is None for result in results), results

    total = sum(sent)
    print(f"\n{total} requests from {clients} clients over {elapsed:.2f}s during {len(done)} edits: {done}")
    assert len(done) == 5
    assert total >= 200
    assert failures == [], failures[:10]
    rejected = [r for r in json_lines(gw.output()) if r["message"] == REJECTED]
    assert len(rejected) == 2
