"""Events through the real RabbitMQ: the outbox relay, consumers that survive broker and process
failures, duplicates, retries, dead letters and their replay with `kadai events dlq`."""
from __future__ import annotations

import asyncio
import logging
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika
import aiohttp
import pytest
from yarl import URL

from gateway.cli import main as kadai
from services.events.bus import Topology
from services.events.event import Event
from services.events.outbox import OutboxRelay
from services.kit import EventContext, Routes, Service
from services.notification import SERVICE as NOTIFICATIONS
from services.user import SERVICE as USERS
from tests.process.helpers import wait_until
from tests.services import demo
from tests.services.conftest import DROPPED_CONNECTION_WARNING, MakeSettings, Serve
from tests.services.helpers import (
    EventProbe,
    Served,
    TcpRelay,
    bearer,
    close_from_broker,
    event_body,
    rabbitmqctl,
)
from tests.support import REPO, free_port

pytestmark = pytest.mark.rabbitmq


async def post_thing(service: Served, name: str, **headers: str) -> dict[str, object]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            service.url + "/things", headers={**bearer(service.settings), **headers}, json={"name": name, "quantity": 1}
        ) as response,
    ):
        assert response.status == 201, await response.text()
        return (await response.json())["data"]


async def consuming(service: Served) -> None:
    await wait_until(lambda: service.runtime.bus.health().get("consuming") is True, 10, "the consumer")


async def effects(service: Served) -> list[tuple[str, str]]:
    return [
        (row["event_id"], row["name"])
        for row in await service.runtime.db.fetchall("SELECT event_id, name FROM effects")
    ]


async def test_committed_events_are_published_persistently_with_their_context(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str
) -> None:
    service = await serve(demo.publisher(), make_settings(amqp_url=rabbitmq_server))

    created = await post_thing(service, "kettle", **{"X-Request-ID": "trace-42"})

    [event] = await probe.wait_for(1)
    message = probe.received[0]
    assert (event.id, event.type, event.source, event.request_id) == (
        created["eventId"],
        demo.THING_CREATED,
        "product-service",
        "trace-42",
    )
    assert event.data == {"thingId": created["id"], "name": "kettle"}
    assert message.delivery_mode == 2 and message.message_id == event.id and message.content_type == "application/json"
    await wait_until(
        lambda: service.metric("kadai_service_events_published_total", type=demo.THING_CREATED) == 1, 5, "the count"
    )
    # Rows are marked sent once the relay's whole batch is confirmed: a moment after the count moved.
    await wait_until(lambda: _nothing_pending(service.runtime.relay), 5, "the outbox to be marked sent")


async def _nothing_pending(relay: OutboxRelay) -> bool:
    return await relay.pending() == (0, 0.0)


async def test_events_committed_while_the_broker_was_unreachable_are_delivered_after_a_restart(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str
) -> None:
    first = await serve(demo.publisher(), make_settings(amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/"))
    for name in ("one", "two", "three"):
        await post_thing(first, name)
    async with aiohttp.ClientSession() as session, session.get(first.url + "/health") as response:
        health = (await response.json())["data"]
    assert health["status"] == "degraded"
    assert health["checks"]["outbox"]["pending"] == 3 and health["checks"]["outbox"]["status"] == "backlog"
    await first.stop()

    # Same data directory, now pointing at the broker.
    second = await serve(demo.publisher(), make_settings(amqp_url=rabbitmq_server))

    events = await probe.wait_for(3)
    assert [event.data["name"] for event in events] == ["one", "two", "three"]
    await wait_until(lambda: len(probe.received) == 3, 1, "no more events")
    await wait_until(lambda: _nothing_pending(second.runtime.relay), 5, "the outbox to be marked sent")


async def test_the_relay_delivers_as_soon_as_the_broker_answers_and_on_every_commit(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str
) -> None:
    broker = URL(rabbitmq_server)
    relay = TcpRelay(broker.host or "127.0.0.1", broker.port or 5672)
    port = free_port()  # nothing listens there yet: the broker is "down"
    # A poll interval far beyond the test: deliveries must come from the reconnect and commit wake-ups.
    service = await serve(
        demo.publisher(),
        make_settings(amqp_url=str(broker.with_host("127.0.0.1").with_port(port)), outbox_poll_interval=60),
    )
    try:
        await post_thing(service, "early")
        assert (await service.runtime.relay.pending())[0] == 1

        await relay.start(port)
        await probe.wait_for(1, timeout=10)
        await post_thing(service, "late")
        events = await probe.wait_for(2, timeout=2)
    finally:
        await service.stop()
        await relay.close()
    assert [event.data["name"] for event in events] == ["early", "late"]


async def test_a_duplicate_delivery_is_handled_once(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str
) -> None:
    controls = demo.Controls()
    service = await serve(demo.consumer(controls), make_settings(amqp_url=rabbitmq_server))
    await consuming(service)
    event = event_body(demo.THING_CREATED, {"name": "twice"})

    await probe.publish(event)
    await probe.publish(event)

    await wait_until(
        lambda: (
            service.metric("kadai_service_events_consumed_total", type=demo.THING_CREATED, outcome="duplicate") == 1
        ),
        5,
        "the duplicate",
    )
    assert await effects(service) == [(event.id, "twice")]
    assert controls.calls == [(event.id, 1)]
    assert service.metric("kadai_service_events_consumed_total", type=demo.THING_CREATED, outcome="ok") == 1


@pytest.mark.filterwarnings(DROPPED_CONNECTION_WARNING)
async def test_a_delivery_cut_off_after_its_commit_is_redelivered_and_not_applied_twice(
    dropped_connections: None, serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str
) -> None:
    broker = URL(rabbitmq_server)
    relay = await TcpRelay(broker.host or "127.0.0.1", broker.port or 5672).start()
    controls = demo.Controls(gate=asyncio.Event())
    service = await serve(demo.consumer(controls), make_settings(amqp_url=relay.url(rabbitmq_server)))
    try:
        await consuming(service)
        event = event_body(demo.THING_CREATED, {"name": "cut"})
        await probe.publish(event)
        await wait_until(controls.entered.is_set, 5, "the handler to start")

        relay.cut()  # the connection dies while the handler runs: its acknowledgement can never arrive
        assert controls.gate is not None
        controls.gate.set()  # the handler commits its effect anyway

        await wait_until(
            lambda: (
                service.metric("kadai_service_events_consumed_total", type=demo.THING_CREATED, outcome="duplicate") == 1
            ),
            10,
            "the redelivery, recognised as a duplicate",
        )
        assert relay.accepted >= 2  # the consumer came back on a new connection
        assert await effects(service) == [(event.id, "cut")]
        assert controls.calls == [(event.id, 1)]

        after = event_body(demo.THING_CREATED, {"name": "after"})
        await probe.publish(after)
        await wait_until(lambda: _effects_are(service, [(event.id, "cut"), (after.id, "after")]), 5, "the next event")
    finally:
        await service.stop()
        await relay.close()


async def test_a_poison_event_is_retried_dead_lettered_listed_and_replayed(
    serve: Serve,
    make_settings: MakeSettings,
    probe: EventProbe,
    rabbitmq_server: str,
    events_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    controls = demo.Controls(poison={"poison"})
    service = await serve(demo.consumer(controls), make_settings(amqp_url=rabbitmq_server, max_attempts=3))
    await consuming(service)
    bad, good = event_body(demo.THING_CREATED, {"name": "poison"}), event_body(demo.THING_CREATED, {"name": "fine"})

    await probe.publish(bad)
    await probe.publish(good)

    await wait_until(
        lambda: service.metric("kadai_service_dead_letters_total", type=demo.THING_CREATED) == 1, 10, "the dead letter"
    )
    assert [attempt for event_id, attempt in controls.calls if event_id == bad.id] == [1, 2, 3]
    assert service.metric("kadai_service_events_consumed_total", type=demo.THING_CREATED, outcome="retried") == 2
    assert await effects(service) == [(good.id, "fine")]  # the failing attempts left nothing behind
    topology = Topology(events_prefix, "analytics-service")
    await wait_until(lambda: _ready(probe, topology.dead_letter_queue, 1), 5, "the dead-letter queue")

    monkeypatch.setenv("AMQP_URL", rabbitmq_server)
    monkeypatch.setenv("KADAI_EVENTS_PREFIX", events_prefix)
    assert await asyncio.to_thread(kadai, ["events", "dlq", "analytics"]) == 0
    listing = capsys.readouterr().out
    assert f"1 dead-lettered event(s) in {topology.dead_letter_queue}" in listing
    [row] = [line for line in listing.splitlines() if line.startswith(bad.id)]
    assert row.split()[1:3] == [demo.THING_CREATED, "3"] and row.endswith("ValueError: cannot handle poison")

    assert await asyncio.to_thread(kadai, ["events", "dlq", "analytics-service", "--json"]) == 0
    [record] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["eventId"] == bad.id and record["attempts"] == 3 and record["event"]["data"] == {"name": "poison"}
    assert await probe.ready_messages(topology.dead_letter_queue) == 1  # listing leaves them in place

    controls.poison.clear()  # the bug is fixed
    assert await asyncio.to_thread(kadai, ["events", "dlq", "analytics-service", "replay", "--id", bad.id]) == 0
    assert f"replayed 1 event(s) to {topology.queue}" in capsys.readouterr().out

    await wait_until(lambda: len(controls.calls) == 5, 5, "the replayed delivery")
    assert controls.calls[-1] == (bad.id, 1)  # a fresh set of attempts
    await wait_until(
        lambda: service.metric("kadai_service_events_consumed_total", type=demo.THING_CREATED, outcome="ok") == 2,
        5,
        "its commit",
    )
    assert sorted(await effects(service)) == sorted([(good.id, "fine"), (bad.id, "poison")])
    assert await probe.ready_messages(topology.dead_letter_queue) == 0
    assert await asyncio.to_thread(kadai, ["events", "dlq", "analytics-service", "replay", "--id", "evt_missing"]) == 1


async def test_a_message_that_is_not_an_event_goes_straight_to_the_dead_letters(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str
) -> None:
    controls = demo.Controls()
    service = await serve(demo.consumer(controls), make_settings(amqp_url=rabbitmq_server))
    await consuming(service)

    await probe.publish_raw(b"\xff not json", routing_key=demo.THING_CREATED)

    await wait_until(
        lambda: service.metric("kadai_service_dead_letters_total", type="unknown") == 1, 5, "the dead letter"
    )
    [letter] = await service.runtime.bus.dead_letters()
    assert letter.attempts == 1 and letter.error.startswith("not an event") and controls.calls == []


@pytest.mark.slow
@pytest.mark.filterwarnings(DROPPED_CONNECTION_WARNING)
async def test_a_consumer_comes_back_after_the_broker_closes_its_connection(
    dropped_connections: None,
    serve: Serve,
    make_settings: MakeSettings,
    probe: EventProbe,
    rabbitmq_server: str,
    events_prefix: str,
) -> None:
    controls = demo.Controls()
    service = await serve(demo.consumer(controls), make_settings(amqp_url=rabbitmq_server))
    await consuming(service)

    assert await close_from_broker(f"analytics-service [{events_prefix}]") == 1
    event = event_body(demo.THING_CREATED, {"name": "after the restart"})
    await probe.publish(event)

    await wait_until(lambda: len(controls.calls) == 1, 10, "the consumer to come back")
    await wait_until(
        lambda: service.metric("kadai_service_events_consumed_total", type=demo.THING_CREATED, outcome="ok") == 1,
        5,
        "its commit",
    )
    assert await effects(service) == [(event.id, "after the restart")]


@pytest.mark.slow
async def test_a_consumer_killed_mid_message_gets_it_again_and_applies_it_once(
    serve: Serve,
    make_settings: MakeSettings,
    probe: EventProbe,
    rabbitmq_server: str,
    events_prefix: str,
    tmp_path: Path,
) -> None:
    settings = make_settings(amqp_url=rabbitmq_server)
    port = free_port()
    env = {
        **os.environ,
        "AMQP_URL": rabbitmq_server,
        "KADAI_EVENTS_PREFIX": events_prefix,
        "KADAI_DATA_DIR": str(settings.data_dir),
        "KADAI_AMQP_RECONNECT_INTERVAL": "0.2",
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "crash.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.services.crash_consumer", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    topology = Topology(events_prefix, "analytics-service")
    try:
        await wait_until(lambda: _consumed(probe, topology.queue), 15, "the crash consumer")
        event = event_body(demo.THING_CREATED, {"name": "survivor"})
        await probe.publish(event)
        # Delivered (no longer ready) to the process, whose handler now waits inside its transaction.
        await wait_until(lambda: _ready(probe, topology.queue, 0), 5, "the delivery to the process")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()

    controls = demo.Controls()
    service = await serve(demo.consumer(controls), settings)

    await wait_until(
        lambda: service.metric("kadai_service_events_consumed_total", type=demo.THING_CREATED, outcome="ok") == 1,
        10,
        "the redelivery",
    )
    assert controls.calls == [(event.id, 1)]  # a crash is not a failed attempt
    assert await effects(service) == [(event.id, "survivor")]


async def _effects_are(service: Served, expected: list[tuple[str, str]]) -> bool:
    return await effects(service) == expected


async def _ready(probe: EventProbe, queue: str, count: int) -> bool:
    return await probe.ready_messages(queue) == count


async def _consumed(probe: EventProbe, queue: str) -> bool:
    return await probe.consumers(queue) == 1


async def test_shutdown_stops_consuming_and_lets_a_running_handler_finish(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str, events_prefix: str
) -> None:
    controls = demo.Controls(gate=asyncio.Event())
    settings = make_settings(amqp_url=rabbitmq_server)
    service = await serve(demo.consumer(controls), settings)
    await consuming(service)
    queue = Topology(events_prefix, "analytics-service").queue
    event = event_body(demo.THING_CREATED, {"name": "in flight"})
    await probe.publish(event)
    await wait_until(controls.entered.is_set, 5, "the handler to start")

    stopping = asyncio.create_task(service.stop())
    await wait_until(lambda: _consumers(probe, queue, 0), 5, "the consumer to stop taking deliveries")
    assert not stopping.done()  # waiting for the handler
    assert controls.gate is not None
    controls.gate.set()
    await asyncio.wait_for(stopping, 5)

    with sqlite3.connect(settings.database_path("analytics-service")) as conn:
        assert conn.execute("SELECT event_id, name FROM effects").fetchall() == [(event.id, "in flight")]
    assert await probe.ready_messages(queue) == 0  # acknowledged before the connection closed, not handed back


async def _consumers(probe: EventProbe, queue: str, count: int) -> bool:
    return await probe.consumers(queue) == count


@pytest.mark.rabbitmq
async def test_an_event_published_before_its_consumer_ever_started_waits_for_it(
    serve: Serve, make_settings: MakeSettings, rabbitmq_server: str
) -> None:
    """The exchange drops what no queue is bound to; publishers declare the catalogue consumers' queues
    first, so user.created is kept for notification-service, which has never run on this prefix."""
    users = await serve(USERS, make_settings(amqp_url=rabbitmq_server))
    async with aiohttp.ClientSession() as session, session.post(
        users.url + "/auth/register",
        json={"email": "early@example.com", "password": "correct horse battery", "name": "Early"},
    ) as response:
        assert response.status == 201
    queue_name = Topology(users.settings.events_prefix, NOTIFICATIONS.name).queue

    async def waiting() -> bool:
        connection = await aio_pika.connect(rabbitmq_server, timeout=5)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(queue_name, passive=True)
            return (queue.declaration_result.message_count or 0) >= 1
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False  # user-service is still connecting in the background
        finally:
            await connection.close()

    await wait_until(waiting, 10, "user.created in notification-service's queue")

    # The consumer starts later and handles it: its local copy of users has the new user.
    notifications = await serve(NOTIFICATIONS, make_settings(amqp_url=rabbitmq_server))

    async def handled() -> bool:
        row = await notifications.runtime.db.fetchone("SELECT COUNT(*) AS n FROM kadai_processed_events")
        return bool(row and row["n"] >= 1)

    await wait_until(handled, 10, "notification-service handling the early event")


@pytest.mark.rabbitmq
async def test_publishers_can_be_told_not_to_declare_consumers(
    serve: Serve, make_settings: MakeSettings, rabbitmq_server: str
) -> None:
    users = await serve(USERS, make_settings(amqp_url=rabbitmq_server, declare_consumers=False))
    assert users.runtime.bus.consumers == {}  # type: ignore[attr-defined]


async def broker_list(url: str, kind: str, *columns: str) -> dict[str, list[str]]:
    """`rabbitmqctl list_<kind> name COLUMNS` in the vhost of url: name -> the other columns."""
    tool = rabbitmqctl()
    vhost = URL(url).path[1:] or "/"
    command = [tool, f"list_{kind}", "-p", vhost, "name", *columns, "-q", "--no-table-headers"]
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines() if line]
    return {row[0]: row[1:] for row in rows}


async def test_the_exchange_and_every_queue_are_durable(
    serve: Serve, make_settings: MakeSettings, rabbitmq_server: str, events_prefix: str
) -> None:
    consumer = await serve(demo.consumer(demo.Controls()), make_settings(amqp_url=rabbitmq_server))
    publisher = await serve(demo.publisher(), make_settings(amqp_url=rabbitmq_server))
    await consuming(consumer)
    await wait_until(lambda: publisher.runtime.bus.connected, 10, "the publisher's connection")

    exchanges = await broker_list(rabbitmq_server, "exchanges", "type", "durable")
    queues = await broker_list(rabbitmq_server, "queues", "durable")

    assert exchanges[Topology(events_prefix, "-").exchange] == ["topic", "true"]
    own = Topology(events_prefix, "analytics-service")
    assert {name: queues[name] for name in own.queues} == {name: ["true"] for name in own.queues}
    # The publisher declared the queue of every catalogue consumer, the same way.
    declared = {name: durable for name, durable in queues.items() if name.startswith(f"{events_prefix}.")}
    catalogue = publisher.runtime.bus.consumers  # type: ignore[attr-defined]
    consumers = {Topology(events_prefix, name).queue for name in catalogue if name != "product-service"}
    assert len(consumers) >= 5 and consumers <= set(declared)
    assert all(durable == ["true"] for durable in declared.values()), declared


async def test_a_consumer_holds_no_more_unacknowledged_events_than_its_prefetch(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str, events_prefix: str
) -> None:
    controls = demo.Controls(gate=asyncio.Event())
    service = await serve(demo.consumer(controls), make_settings(amqp_url=rabbitmq_server, prefetch=2))
    await consuming(service)
    queue = Topology(events_prefix, "analytics-service").queue
    events = [event_body(demo.THING_CREATED, {"name": f"thing {number}"}) for number in range(5)]

    for event in events:
        await probe.publish(event)

    async def counts() -> list[str]:
        return (await broker_list(rabbitmq_server, "queues", "messages_ready", "messages_unacknowledged"))[queue]

    await wait_until(lambda: _counts_are(counts, ["3", "2"]), 10, "2 deliveries in progress, 3 ready")
    await wait_until(controls.entered.is_set, 5, "the first handler")
    await asyncio.sleep(0.5)
    assert await counts() == ["3", "2"]  # still: the consumer takes no more while 2 are unacknowledged
    assert 1 <= len(controls.calls) <= 2
    assert controls.gate is not None
    controls.gate.set()
    await wait_until(lambda: _count_effects(service, 5), 10, "every event handled")
    assert sorted(event_id for event_id, _name in await effects(service)) == sorted(event.id for event in events)
    await wait_until(lambda: _counts_are(counts, ["0", "0"]), 10, "the queue to empty")


async def _counts_are(counts: Callable[[], Awaitable[list[str]]], expected: list[str]) -> bool:
    return await counts() == expected


async def _count_effects(service: Served, count: int) -> bool:
    return len(await effects(service)) == count


def failing_consumer(calls: list[tuple[int, float]]) -> Service:
    """analytics-service with a handler that always fails, recording (attempt, monotonic time) of each call."""

    async def on_thing(event: Event, ctx: EventContext) -> None:
        calls.append((ctx.attempt, time.monotonic()))
        raise ValueError("always fails")

    return Service(name="analytics-service", port=3007, routes=Routes(), handlers={demo.THING_CREATED: on_thing})


@pytest.mark.slow
async def test_a_failed_event_waits_the_retry_delay_before_each_new_attempt(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str, events_prefix: str
) -> None:
    delay = 1.0
    calls: list[tuple[int, float]] = []
    service = await serve(
        failing_consumer(calls), make_settings(amqp_url=rabbitmq_server, retry_delay=delay, max_attempts=3)
    )
    await consuming(service)

    await probe.publish(event_body(demo.THING_CREATED, {"name": "slow retry"}))

    await wait_until(
        lambda: service.metric("kadai_service_dead_letters_total", type=demo.THING_CREATED) == 1, 20, "the dead letter"
    )
    assert [attempt for attempt, _at in calls] == [1, 2, 3]
    gaps = [later - earlier for (_, earlier), (_, later) in zip(calls, calls[1:])]
    assert all(delay <= gap < delay + 5 for gap in gaps), gaps
    await wait_until(
        lambda: _ready(probe, Topology(events_prefix, "analytics-service").dead_letter_queue, 1), 5, "the dead letter"
    )


@pytest.mark.filterwarnings(DROPPED_CONNECTION_WARNING)
async def test_an_outage_is_logged_once_not_once_per_reconnection_attempt(
    dropped_connections: None,
    serve: Serve,
    make_settings: MakeSettings,
    rabbitmq_server: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = URL(rabbitmq_server)
    relay = await TcpRelay(broker.host or "127.0.0.1", broker.port or 5672).start()
    settings = make_settings(amqp_url=relay.url(rabbitmq_server), reconnect_interval=0.1)
    service = await serve(demo.consumer(demo.Controls()), settings)
    try:
        await consuming(service)
        caplog.clear()
        # The libraries' own loggers too: an earlier test may have left a level on them.
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, "aiormq"), caplog.at_level(
            logging.DEBUG, "aio_pika"
        ):
            await relay.stop_listening()
            relay.cut()  # the broker is away: every attempt is refused for a second and a half
            await asyncio.sleep(1.5)
            await relay.start()
            await wait_until(
                # record.msg: some library records cannot be formatted once their objects are gone.
                lambda: any(record.msg == "reconnected to the event broker" for record in caplog.records),
                10,
                "the bus to reconnect",
            )
        lost = [record for record in caplog.records if record.msg == "lost the event broker; reconnecting"]
        attempts = sum(1 for record in caplog.records if record.msg == "Connecting to: %s")  # aiormq, debug
        library = [
            record.msg
            for record in caplog.records
            if record.name.startswith(("aio_pika", "aiormq")) and record.levelno >= logging.INFO
        ]
        assert len(lost) == 1
        assert attempts >= 5, "the outage should have seen several reconnection attempts"
        # What the libraries still say is said once per lost channel, not once per attempt.
        assert len(library) <= 4, library
    finally:
        await service.stop()
        await relay.close()
