"""The in-process bus (AMQP_URL=memory://): the same services, handlers, outbox, duplicate detection,
retries and dead letters as with RabbitMQ, inside one process."""
from __future__ import annotations

import aiohttp

from services.events.memory import MemoryBroker
from tests.process.helpers import wait_until
from tests.services import demo
from tests.services.conftest import MakeSettings, Serve
from tests.services.helpers import Served, bearer, event_body


async def effects(service: Served) -> list[tuple[str, str]]:
    return [
        (row["event_id"], row["name"])
        for row in await service.runtime.db.fetchall("SELECT event_id, name FROM effects")
    ]


async def test_an_event_committed_by_one_service_is_handled_by_another(
    serve: Serve, make_settings: MakeSettings
) -> None:
    controls = demo.Controls()
    consumer = await serve(demo.consumer(controls), make_settings())
    publisher = await serve(demo.publisher(), make_settings())

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            publisher.url + "/things",
            headers={**bearer(publisher.settings), "X-Request-ID": "mem-1"},
            json={"name": "chair", "quantity": 4},
        ) as response,
    ):
        event_id = (await response.json())["data"]["eventId"]

    await wait_until(
        lambda: consumer.metric("kadai_service_events_consumed_total", type=demo.THING_CREATED, outcome="ok") == 1,
        5,
        "the handler",
    )
    assert await effects(consumer) == [(event_id, "chair")]
    assert controls.calls == [(event_id, 1)]
    assert (await publisher.runtime.relay.pending())[0] == 0
    assert publisher.metric("kadai_service_events_published_total", type=demo.THING_CREATED) == 1


async def test_duplicates_retries_and_dead_letters_follow_the_same_rules(
    serve: Serve, make_settings: MakeSettings
) -> None:
    controls = demo.Controls(poison={"poison"})
    consumer = await serve(demo.consumer(controls), make_settings(max_attempts=3))
    bus = consumer.runtime.bus
    good, bad = event_body(demo.THING_CREATED, {"name": "fine"}), event_body(demo.THING_CREATED, {"name": "poison"})

    for event in (good, good, bad):
        await bus.publish(event)

    await wait_until(
        lambda: consumer.metric("kadai_service_dead_letters_total", type=demo.THING_CREATED) == 1, 5, "the dead letter"
    )
    assert consumer.metric("kadai_service_events_consumed_total", type=demo.THING_CREATED, outcome="duplicate") == 1
    assert [attempt for event_id, attempt in controls.calls if event_id == bad.id] == [1, 2, 3]
    [letter] = await bus.dead_letters()
    assert (letter.event_id, letter.attempts, letter.error) == (bad.id, 3, "ValueError: cannot handle poison")

    controls.poison.clear()
    assert await bus.replay() == [bad.id]

    await wait_until(lambda: len(controls.calls) == 5, 5, "the replayed delivery")
    assert controls.calls[-1] == (bad.id, 1)
    await wait_until(
        lambda: consumer.metric("kadai_service_events_consumed_total", type=demo.THING_CREATED, outcome="ok") == 2,
        5,
        "its commit",
    )
    assert sorted(await effects(consumer)) == sorted([(good.id, "fine"), (bad.id, "poison")])
    assert await bus.dead_letters() == []


async def test_services_of_one_process_share_a_broker_per_prefix_only(
    serve: Serve, make_settings: MakeSettings
) -> None:
    controls = demo.Controls()
    consumer = await serve(demo.consumer(controls), make_settings())
    elsewhere = await serve(
        demo.publisher(), make_settings(events_prefix="another-prefix", data_dir=consumer.settings.data_dir / "x")
    )

    await elsewhere.runtime.bus.publish(event_body(demo.THING_CREATED, {"name": "not for you"}))
    await consumer.runtime.bus.publish(event_body(demo.THING_CREATED, {"name": "for you"}))

    await wait_until(lambda: len(controls.calls) == 1, 5, "the delivery")
    assert [name for _, name in await effects(consumer)] == ["for you"]
    await consumer.stop()
    await elsewhere.stop()
    assert consumer.settings.events_prefix not in MemoryBroker._shared
