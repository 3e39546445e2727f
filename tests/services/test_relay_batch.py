"""The outbox relay publishes a batch with its confirms in flight together, through the real RabbitMQ: it
marks sent exactly the events the broker confirmed, keeps commit order on the wire, publishes the rest
on a later pass, and does not publish a batch twice when a reader of the database is mid-statement."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from services.events.bus import Topology
from services.events.event import Event
from services.events.outbox import BATCH, OutboxRelay
from services.events.rabbit import RabbitBus
from services.kit.db import Database
from services.kit.metrics import ServiceMetrics
from tests.process.helpers import wait_until
from tests.services.conftest import MakeSettings
from tests.services.helpers import EventProbe, delete_topology

pytestmark = pytest.mark.rabbitmq

SERVICE = "relay-test-service"
WIDE = "relay.thing.wide"
NARROW = "relay.thing.narrow"


@dataclass
class Outbox:
    db: Database
    bus: RabbitBus
    relay: OutboxRelay
    metrics: ServiceMetrics

    async def commit(self, *types: str) -> list[str]:
        """One transaction per event, in order; returns their event IDs."""
        ids = []
        for number, event_type in enumerate(types):
            async with self.db.transaction() as tx:
                ids.append(tx.publish(event_type, {"number": number}).id)
        return ids

    async def unsent(self) -> list[str]:
        rows = await self.db.fetchall("SELECT event_id FROM kadai_outbox WHERE sent_at IS NULL ORDER BY seq")
        return [row["event_id"] for row in rows]

    def failures(self) -> float:
        sample = self.metrics.registry.get_sample_value(
            "kadai_service_outbox_publish_failures_total", {"service": SERVICE}
        )
        return sample or 0.0

    def published(self, event_type: str) -> float:
        sample = self.metrics.registry.get_sample_value(
            "kadai_service_events_published_total", {"service": SERVICE, "type": event_type}
        )
        return sample or 0.0


@pytest.fixture
async def outbox(
    tmp_path: Path, make_settings: MakeSettings, rabbitmq_server: str, events_prefix: str
) -> AsyncIterator[Outbox]:
    """A database with an outbox and ONE relay over a RabbitBus, its loop not started: each test drives
    drain() itself, so every pass is deterministic."""
    settings = make_settings(amqp_url=rabbitmq_server, declare_consumers=False)
    db = Database(tmp_path / "relay.sqlite3", SERVICE, {WIDE, NARROW})
    await db.open()
    bus = RabbitBus(SERVICE, settings, consumers={})
    metrics = ServiceMetrics(SERVICE)
    relay = OutboxRelay(db, bus, metrics, poll_interval=60.0, retention=3600.0)
    await bus.start(None)
    try:
        await wait_until(lambda: bus.connected, 10, "the relay's bus to connect")
        yield Outbox(db, bus, relay, metrics)
    finally:
        await bus.close()
        await db.close()
        await delete_topology(rabbitmq_server, {Topology(events_prefix, SERVICE)})


async def bounded_queue(channel: AbstractChannel, prefix: str, routing_key: str) -> AbstractQueue:
    """A queue that holds one message and makes the broker refuse (nack) the next one it is sent."""
    exchange = await channel.declare_exchange(Topology(prefix, "-").exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(
        exclusive=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    await queue.bind(exchange, routing_key=routing_key)
    return queue


async def test_a_refused_publish_in_the_middle_of_a_batch_leaves_exactly_that_event_pending(
    outbox: Outbox, probe: EventProbe, events_prefix: str
) -> None:
    narrow = await bounded_queue(probe.channel, events_prefix, NARROW)
    ids = await outbox.commit(WIDE, WIDE, NARROW, NARROW, WIDE, WIDE)
    refused = ids[3]  # the second narrow event finds its queue full: the broker nacks it

    assert await outbox.relay.drain() == 5
    assert await outbox.unsent() == [refused]
    assert (outbox.published(WIDE), outbox.published(NARROW), outbox.failures()) == (4, 1, 1)
    # The broker got the batch in commit order: the probe sees every event, the refused one included
    # (only the full queue turned it away), in the order committed.
    received = await probe.wait_for(6)
    assert [event.id for event in received] == ids

    # Still full: the next pass fails again and sends nothing; the other events are not published again.
    assert await outbox.relay.drain() == 0
    assert await outbox.unsent() == [refused]

    await narrow.purge()
    assert await outbox.relay.drain() == 1
    assert await outbox.unsent() == []
    redelivered = await probe.wait_for(8)
    assert [event.id for event in redelivered[6:]] == [refused, refused]  # the failed pass reached the probe too
    assert (outbox.published(WIDE), outbox.published(NARROW), outbox.failures()) == (4, 2, 2)
    narrowed = await narrow.get(timeout=5)
    assert narrowed.message_id == refused


async def test_a_reader_in_the_middle_of_a_statement_does_not_make_the_relay_publish_twice(
    outbox: Outbox, probe: EventProbe
) -> None:
    """A read on the shared reader connection keeps the snapshot of a statement still open on it; the
    relay's next pass must see the rows its last pass marked sent, or it publishes them again (forever,
    while the statement stays open)."""
    count = BATCH + BATCH // 2
    async with outbox.db.transaction() as tx:
        ids = [tx.publish(WIDE, {"number": number}).id for number in range(count)]
    # Another task's read, stepped once and not finished (as one that awaits between its rows): the reader
    # connection's snapshot stays where it is until it ends.
    reading = await outbox.db._reader_conn().execute("SELECT event_id FROM kadai_outbox")
    try:
        assert await reading.fetchone() is not None
        async with asyncio.timeout(30):
            assert await outbox.relay.drain() == count
    finally:
        await reading.close()
    assert await outbox.unsent() == []
    # Every copy the relay published was confirmed, so it is queued ahead of this marker.
    await probe.publish(Event.create(WIDE, "test", {"marker": True}))
    received = await probe.wait_for(count + 1)
    assert [event.id for event in received[:-1]] == ids
    assert received[-1].data == {"marker": True}
