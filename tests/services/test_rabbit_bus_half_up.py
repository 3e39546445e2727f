"""A bus closed while its broker is only half there: it accepts the TCP connection but never answers the
AMQP handshake (a broker starting up, a wrong port, a proxy in front of a dead broker), or it refuses the
connection. Nothing of the attempts may outlive close(): a task left running holds up the process's
shutdown, a socket left open is a leak, and a connection object left looking open makes aio-pika
schedule its close() again from whatever thread collects it."""
from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from services.events.rabbit import RabbitBus
from tests.services.conftest import MakeSettings
from tests.support import free_port


@pytest.mark.timeout(30)
def test_close_during_a_hanging_handshake_leaves_no_task_and_no_socket_behind(make_settings: MakeSettings) -> None:
    async def attempt() -> tuple[set[str], list[bytes]]:
        # Accepts connections and never says a word: the handshake waits.
        accepted: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        server = await asyncio.start_server(
            lambda reader, writer: accepted.append((reader, writer)), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        settings = make_settings(amqp_url=f"amqp://guest:guest@127.0.0.1:{port}/", declare_consumers=False)
        bus = RabbitBus("user-service", settings, consumers={})
        await bus.start(None)
        await asyncio.sleep(0.3)  # the handshake is under way
        assert bus.health()["status"] == "down"
        assert accepted, "the bus never connected to the listener"
        await bus.close()
        # The bus closed its end: what the listener reads ends (the protocol header, then end of file).
        seen = [await asyncio.wait_for(reader.read(), 5) for reader, _writer in accepted]
        server.close()
        await server.wait_closed()
        for _reader, writer in accepted:
            writer.close()
        await asyncio.sleep(0.1)  # what close() set going has run its course
        tasks = {repr(task.get_coro()) for task in asyncio.all_tasks() if task is not asyncio.current_task()}
        return tasks, seen

    tasks, seen = asyncio.run(attempt())
    assert tasks == set()
    assert seen == [b"AMQP\x00\x00\x09\x01"] * len(seen)
    # An unclosed socket warns when collected (ResourceWarning, an error in this suite): here, in this test.
    gc.collect()


@pytest.mark.timeout(30)
async def test_attempts_given_up_leave_nothing_for_the_garbage_collector(make_settings: MakeSettings) -> None:
    # aio-pika's Connection.__del__ schedules close() on any connection it does not see as closed, and one
    # that never connected is not, even after close(). In a thread with no event loop (the collector runs
    # in whichever thread allocates: aiosqlite's, an executor's) that close() is never awaited and warns.
    settings = make_settings(amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/", reconnect_interval=0.05)
    bus = RabbitBus("user-service", settings, consumers={})
    await bus.start(None)
    await asyncio.sleep(0.4)  # several refused attempts
    assert bus.health()["status"] == "down"
    await bus.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await asyncio.to_thread(gc.collect)
    assert [str(warning.message) for warning in caught] == []
