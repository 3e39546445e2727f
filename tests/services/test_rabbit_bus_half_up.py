"""A bus closed while its broker accepts the TCP connection but never answers the AMQP handshake (a broker
starting up, a wrong port, a proxy in front of a dead broker): nothing of the attempt may outlive close(),
or the process cannot finish its shutdown."""
from __future__ import annotations

import asyncio
import gc

import pytest

from services.events.rabbit import RabbitBus
from tests.services.conftest import MakeSettings


@pytest.mark.timeout(30)
# aiormq does not close the socket of a handshake that was cancelled: collected, it warns (ResourceWarning).
# That is the library's to fix; this test is about what would stop the process from finishing.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_close_during_a_hanging_handshake_leaves_no_task_behind(make_settings: MakeSettings) -> None:
    async def attempt() -> set[str]:
        # Accepts connections and never says a word: the handshake waits.
        accepted: list[asyncio.StreamWriter] = []
        server = await asyncio.start_server(lambda reader, writer: accepted.append(writer), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        settings = make_settings(amqp_url=f"amqp://guest:guest@127.0.0.1:{port}/", declare_consumers=False)
        bus = RabbitBus("user-service", settings, consumers={})
        await bus.start(None)
        await asyncio.sleep(0.3)  # the handshake is under way
        assert bus.health()["status"] == "down"
        await bus.close()
        server.close()
        await server.wait_closed()
        for writer in accepted:
            writer.close()
        await asyncio.sleep(0.1)  # what close() set going has run its course
        return {repr(task.get_coro()) for task in asyncio.all_tasks() if task is not asyncio.current_task()}

    assert asyncio.run(attempt()) == set()
    gc.collect()  # here, under this test's warning filter, not in whichever test runs next
