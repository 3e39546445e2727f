"""Fixtures of the service tests: settings with a tmp data dir and an events prefix of the test's own,
service apps served on loopback ports, and a probe on the real broker."""
from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aiohttp import web
from yarl import URL

from gateway.config.settings import Settings
from gateway.protocol import use_envelope_errors
from services.catalog import CATALOG
from services.events.bus import Topology
from services.kit import Service, ServiceSettings, build_app
from tests import backends
from tests.services.helpers import EventProbe, Served, delete_topology

MakeSettings = Callable[..., ServiceSettings]
Serve = Callable[[Service, ServiceSettings], Awaitable[Served]]


@pytest.fixture
def events_prefix() -> str:
    """Exchange and queue names of this test only (deleted at teardown)."""
    return "test-" + os.urandom(6).hex()


# aiormq 6.9 leaves the StreamWriter of a connection whose peer went away unclosed; Python warns when it is
# garbage collected. Tests that cut connections on purpose carry this filter and the `dropped_connections`
# fixture, which collects before the test ends so the warning cannot surface in a later test.
DROPPED_CONNECTION_WARNING = "ignore:unclosed <StreamWriter:ResourceWarning"


@pytest.fixture
def dropped_connections() -> Iterator[None]:
    yield
    gc.collect()


@pytest.fixture
def make_settings(tmp_path: Path, events_prefix: str) -> MakeSettings:
    """Settings for a service under test: its own data dir and prefix, the in-process bus unless amqp_url
    is given, and short delays."""

    def make(**overrides: Any) -> ServiceSettings:
        environ = {"USER_SCRYPT_COST": "10", **overrides.pop("environ", {})}
        values: dict[str, Any] = {
            "platform": Settings(drain_timeout=2.0),
            "data_dir": tmp_path / "data",
            "amqp_url": "memory://",
            "events_prefix": events_prefix,
            "max_attempts": 3,
            "retry_delay": 0.05,
            "publish_timeout": 2.0,
            "connect_timeout": 1.0,
            "reconnect_interval": 0.2,
            "outbox_poll_interval": 0.2,
            "environ": environ,
        }
        values.update(overrides)
        return ServiceSettings(**values)

    return make


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serve a service app on a free 127.0.0.1 port (the way `kadai service` does, without signals)."""
    served: list[Served] = []

    async def start(service: Service, settings: ServiceSettings) -> Served:
        runner = web.AppRunner(
            build_app(service, settings), handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        try:
            await runner.setup()
        except BaseException:
            await runner.cleanup()
            raise
        use_envelope_errors(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        running = Served(f"http://127.0.0.1:{port}", runner, settings)
        served.append(running)
        return running

    yield start
    for running in reversed(served):
        await running.stop()
    # Whatever a test declared on the suite's broker goes with it (also when it reached it through a relay).
    # Publishers also declare the queues of every catalogue consumer (KADAI_EVENTS_DECLARE_CONSUMERS), so
    # those go too.
    prefixes = {running.settings.events_prefix for running in served if not running.settings.memory_bus}
    await delete_topology(
        backends.amqp_url(),
        {Topology(running.settings.events_prefix, running.runtime.name) for running in served if not running.settings.memory_bus}
        | {Topology(prefix, name) for prefix in prefixes for name in CATALOG},
    )


@pytest.fixture
async def probe(rabbitmq_server: str, events_prefix: str, request: pytest.FixtureRequest) -> AsyncIterator[EventProbe]:
    """A connection of the test's own (named after it) with a queue bound to every event of its prefix."""
    url = URL(rabbitmq_server).update_query(name=f"test {request.node.name}")
    connection = await aio_pika.connect(url, timeout=5)
    channel = await connection.channel()
    probe = EventProbe(connection, channel, events_prefix)
    await probe.bind("#")
    yield probe
    try:
        channel = await connection.channel()
        with contextlib.suppress(Exception):
            await channel.exchange_delete(Topology(events_prefix, "-").exchange)
    finally:
        await connection.close()
    # A service process of the test (not served by `serve`) declared the catalogue consumers' queues too.
    await delete_topology(rabbitmq_server, {Topology(events_prefix, name) for name in CATALOG})
