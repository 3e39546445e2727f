"""Fixtures shared by every test: loopback upstream servers, registries and gateways."""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import Gateway
from gateway.config.settings import Settings
from tests import backends
from tests.gateway_server import GatewayTestServer
from tests.support import GatewayProcess

StartUpstream = Callable[[web.Application], Awaitable[str]]


# Tests of what touches sockets and the loop directly run on both loops: asyncio's, and uvloop, which
# `kadai gateway` serves on (the process and fault tests start real gateways, so they run on uvloop).
# KADAI_TEST_LOOP=asyncio or =uvloop runs every asyncio test on that one loop instead.
_BOTH_LOOPS_DIRS = frozenset({"upstream"})
_BOTH_LOOPS_MODULES = frozenset({
    "test_admin", "test_client_aborts", "test_expect", "test_headers_hygiene", "test_redis_batch",
    "test_reply_edges", "test_streaming", "test_whole_reply",
})
_LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_configure(config: pytest.Config) -> None:
    forced = os.environ.get("KADAI_TEST_LOOP")
    if forced is not None and forced not in _LOOPS:
        raise pytest.UsageError(f"KADAI_TEST_LOOP must be asyncio or uvloop, not {forced!r}")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    forced = os.environ.get("KADAI_TEST_LOOP")
    if forced is not None:
        return {forced: _LOOPS[forced]}
    path = Path(item.path)
    if path.parent.name in _BOTH_LOOPS_DIRS or (path.parent.name == "integration" and path.stem in _BOTH_LOOPS_MODULES):
        return dict(_LOOPS)
    return {"asyncio": asyncio.new_event_loop}


StopServer = Callable[[], Awaitable[None]]
StartStoppable = Callable[[web.Application], Awaitable[tuple[str, StopServer]]]


@pytest.fixture
async def stoppable_upstream() -> AsyncIterator[StartStoppable]:
    """Serve an aiohttp app on a free 127.0.0.1 port; returns its base URL and a stop() after which the
    port refuses connections (what remains running is stopped at the end of the test)."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> tuple[str, StopServer]:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        async def stop() -> None:
            runners.remove(runner)
            await runner.cleanup()

        return f"http://127.0.0.1:{port}", stop

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
def start_upstream(stoppable_upstream: StartStoppable) -> StartUpstream:
    """Serve an aiohttp app on a free 127.0.0.1 port; returns its base URL."""

    async def start(app: web.Application) -> str:
        url, _stop = await stoppable_upstream(app)
        return url

    return start


@pytest.fixture
def settings() -> Settings:
    return Settings(reload_interval=0.1, drain_timeout=2.0)


@pytest.fixture
async def gateway_client(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], settings: Settings
) -> Callable[[Path], Awaitable[TestClient[Any, Any]]]:
    """An in-process gateway over a registry file, with a test client; the Gateway is client.app's."""

    async def make(registry: Path) -> TestClient[Any, Any]:
        gw = Gateway(settings, registry)
        return await aiohttp_client(GatewayTestServer(gw))

    return make


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start real gateway processes; all are stopped at teardown."""
    started: list[GatewayProcess] = []

    def start(registry: Path, **kwargs: Any) -> GatewayProcess:
        process = GatewayProcess(registry, **kwargs).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def redis_server() -> str:
    """URL of a Redis that answers; fails under CI and skips loudly elsewhere when there is none."""
    url = backends.redis_url()
    backends.require("Redis", backends.redis_answers(url), url)
    return url


@pytest.fixture(scope="session")
def rabbitmq_server() -> str:
    """URL of a RabbitMQ that answers; fails under CI and skips loudly elsewhere when there is none."""
    url = backends.amqp_url()
    backends.require("RabbitMQ", backends.amqp_answers(url), url)
    return url
