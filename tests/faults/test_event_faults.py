"""Faults on the event path with the real RabbitMQ: the broker gone while orders keep coming, the whole
platform killed in the middle of its event traffic, and a consumer killed between its commit and its
acknowledgement. After each, every committed event has reached every consumer once (their processed-event
tables) and had its effects once (orders, payments, messages, analytics, stock).

The broker outage is a relay between the platform and RabbitMQ that drops every connection and refuses new
ones: the shared broker itself keeps running for the rest of the suite. KADAI_FAULTS_OUTAGE sets its length
in seconds (default 60, the minute the platform promises to ride out; shorten it for a quick local run).
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from services.catalog import CATALOG
from services.events.bus import Topology
from services.platform.demo import Client
from tests.faults.event_support import Shop, exactly_once_problems, left_on_broker, read_ledger
from tests.platform.helpers import UpProcess, platform_env, registry_on_free_ports
from tests.process.helpers import clean_env, wait_until
from tests.services import demo
from tests.services.conftest import (  # noqa: F401 - fixtures of the service tests, used here too
    MakeSettings,
    Serve,
    events_prefix,
    make_settings,
    probe,
    serve,
)
from tests.services.helpers import EventProbe, TcpRelay, delete_topology, event_body
from tests.support import REPO, free_port

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]

OUTAGE = float(os.environ.get("KADAI_FAULTS_OUTAGE", "60"))
ORDER_INTERVAL = 0.2
"""Pause between orders: 5 a second over 3 buyers stays well inside each buyer's rate limit."""
BUYERS = 3
SETTLE = 60.0
"""Longest wait for the platform to work off what piled up."""
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=15, sock_connect=3)


@pytest.fixture
def platform() -> Iterator[list[UpProcess]]:
    """`kadai up` processes of the test, killed at teardown if still running."""
    started: list[UpProcess] = []
    yield started
    for process in started:
        process.kill()


def start_platform(started: list[UpProcess], registry: Path, env: dict[str, str], port: int = 0) -> UpProcess:
    process = UpProcess(registry, env, port=port) if port else UpProcess(registry, env)
    started.append(process.start())
    return process


async def keep_ordering(shop: Shop, stop: asyncio.Event) -> None:
    """Place an order every ORDER_INTERVAL until told to stop; any answer but 201 fails the test."""
    while not stop.is_set():
        await shop.place()
        await asyncio.sleep(ORDER_INTERVAL)


LOST = "lost the event broker; reconnecting"
DUPLICATE = "duplicate delivery ignored"


async def settle(data_dir: Path, shop: Shop, process: UpProcess) -> None:
    """Wait until the platform has worked off every event (the problems left, if it does not)."""
    ledger = read_ledger(data_dir)

    def done() -> bool:
        nonlocal ledger
        assert process.proc is not None and process.proc.poll() is None, process.describe()
        ledger = read_ledger(data_dir)
        return ledger.settled(shop.placed)

    try:
        await wait_until(done, SETTLE, "every event handled", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {exactly_once_problems(ledger, shop)}") from None


def logged(process: UpProcess, message: str) -> Counter[str]:
    """Service -> lines of its log with this message."""
    return Counter(record.get("service", "?") for record in process.logs() if record.get("message") == message)


@pytest.mark.timeout(OUTAGE + 100)
async def test_orders_placed_while_the_broker_is_away_reach_every_consumer_once(
    tmp_path: Path, platform: list[UpProcess], rabbitmq_server: str
) -> None:
    broker = URL(rabbitmq_server)
    relay = await TcpRelay(broker.host or "127.0.0.1", broker.port or 5672).start()
    registry, _ports = registry_on_free_ports(tmp_path / "registry.yaml")
    env = platform_env(
        tmp_path,
        REDIS_URL="memory://",
        AMQP_URL=relay.url(rabbitmq_server),
        KADAI_AMQP_RECONNECT_INTERVAL="500ms",
        KADAI_AMQP_CONNECT_TIMEOUT="1s",
    )
    data_dir = Path(env["KADAI_DATA_DIR"])
    try:
        process = start_platform(platform, registry, env)
        await process.wait_ready()
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
            shop = await Shop(Client(session, process.url), os.urandom(4).hex()).open(BUYERS)
            stop = asyncio.Event()
            ordering = asyncio.create_task(keep_ordering(shop, stop))
            await asyncio.sleep(2)

            # The broker goes away: every connection dropped, new ones refused, while orders keep coming.
            await relay.stop_listening()
            relay.cut()
            before, outage_started = len(shop.placed), time.monotonic()
            await asyncio.sleep(OUTAGE)
            assert not ordering.done(), ordering.exception()  # every order so far was accepted (201)
            during = len(shop.placed) - before
            held = read_ledger(data_dir).unsent
            connections = relay.accepted

            await relay.start()  # the broker is back, on the same address
            outage = time.monotonic() - outage_started
            await asyncio.sleep(2)
            stop.set()
            await ordering

            await settle(data_dir, shop, process)
        assert relay.accepted > connections  # the services came back on new connections
        assert held > 0 and during > 0
        assert logged(process, LOST) == {name: 1 for name in CATALOG}  # once per outage, not at every attempt
        duplicates = logged(process, DUPLICATE).total()
        assert await process.stop() == 0

        final = read_ledger(data_dir)
        assert exactly_once_problems(final, shop) == []
        assert await left_on_broker(rabbitmq_server, env["KADAI_EVENTS_PREFIX"]) == {}
        print(
            f"\noutage {outage:.1f}s: {len(shop.placed)} orders ({during} during the outage), "
            f"{held} events held in outboxes, {len(final.published)} events in all, "
            f"{sum(len(ids) for ids in final.processed.values())} deliveries handled once, "
            f"{duplicates} redeliveries recognised"
        )
    finally:
        await relay.close()
        await delete_topology(rabbitmq_server, {Topology(env["KADAI_EVENTS_PREFIX"], name) for name in CATALOG})


async def test_the_platform_killed_mid_flow_delivers_every_event_once_after_its_restart(
    tmp_path: Path, platform: list[UpProcess], rabbitmq_server: str
) -> None:
    registry, _ports = registry_on_free_ports(tmp_path / "registry.yaml")
    env = platform_env(tmp_path, REDIS_URL="memory://", AMQP_URL=rabbitmq_server)
    data_dir = Path(env["KADAI_DATA_DIR"])
    try:
        first = start_platform(platform, registry, env)
        await first.wait_ready()
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
            shop = await Shop(Client(session, first.url), os.urandom(4).hex()).open(BUYERS)
            for _ in range(6):
                await shop.place()
            # A burst, then SIGKILL as soon as it is answered: its events are being published and handled.
            await asyncio.gather(*(shop.place() for _ in range(3 * BUYERS)))
            assert first.proc is not None
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(timeout=10)

            cut_short = read_ledger(data_dir)
            in_flight = cut_short.unsent + sum(len(gap) for gap in cut_short.missing().values())
            assert in_flight > 0, "the kill landed after the platform had finished its work"

            second = start_platform(platform, registry, env, port=first.port)
            await second.wait_ready()
            await settle(data_dir, shop, second)
        duplicates = logged(second, DUPLICATE).total()
        assert await second.stop() == 0

        final = read_ledger(data_dir)
        assert exactly_once_problems(final, shop) == []
        assert await left_on_broker(rabbitmq_server, env["KADAI_EVENTS_PREFIX"]) == {}
        print(
            f"\nkilled with {cut_short.unsent} events unsent and "
            f"{in_flight - cut_short.unsent} deliveries not yet handled; after the restart "
            f"{len(final.published)} events, each handled once by each consumer, {duplicates} redeliveries recognised"
        )
    finally:
        await delete_topology(rabbitmq_server, {Topology(env["KADAI_EVENTS_PREFIX"], name) for name in CATALOG})


async def test_a_consumer_killed_after_its_commit_before_its_ack_does_not_apply_the_redelivery(
    serve: Serve,
    make_settings: MakeSettings,
    probe: EventProbe,
    rabbitmq_server: str,
    events_prefix: str,
    tmp_path: Path,
) -> None:
    settings = make_settings(amqp_url=rabbitmq_server)
    env = clean_env(
        AMQP_URL=rabbitmq_server,
        KADAI_EVENTS_PREFIX=events_prefix,
        KADAI_DATA_DIR=str(settings.data_dir),
        KADAI_AMQP_RECONNECT_INTERVAL="0.2",
        PYTHONUNBUFFERED="1",
    )
    log_path = tmp_path / "ack-crash.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.ack_crash_consumer", str(free_port())],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    queue = Topology(events_prefix, "analytics-service").queue
    event = event_body(demo.THING_CREATED, {"name": "committed, never acknowledged"})
    try:
        await wait_until(lambda: _consumers(probe, queue, 1), 15, "the consumer process")
        await probe.publish(event)
        await wait_until(lambda: b"committed ok" in log_path.read_bytes(), 10, "the handler's commit")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    controls = demo.Controls()
    service = await serve(demo.consumer(controls), settings)

    def duplicates() -> float:
        return service.metric("kadai_service_events_consumed_total", type=demo.THING_CREATED, outcome="duplicate")

    await wait_until(lambda: duplicates() == 1, 10, "the redelivery, recognised as handled")
    assert controls.calls == []  # the handler did not run again
    rows = await service.runtime.db.fetchall("SELECT event_id, name FROM effects")
    assert [(row["event_id"], row["name"]) for row in rows] == [(event.id, "committed, never acknowledged")]
    await wait_until(lambda: _ready(probe, queue, 0), 5, "the queue to be empty")


async def _consumers(probe: EventProbe, queue: str, count: int) -> bool:
    return await probe.consumers(queue) == count


async def _ready(probe: EventProbe, queue: str, count: int) -> bool:
    return await probe.ready_messages(queue) == count
