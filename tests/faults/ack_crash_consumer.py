"""A consumer service process that stops between committing an event's effects and acknowledging it, for a
test to kill there: the consumer core returns (its transaction committed), prints `committed <outcome>`,
and never hands the verdict to the bus, so the acknowledgement is never sent.

Run by tests/faults/test_event_faults.py as `python -m tests.faults.ack_crash_consumer PORT` with the
service's settings in the environment.
"""
from __future__ import annotations

import asyncio
import sys

from gateway.logs import configure_logging
from services.events.bus import Verdict
from services.events.consumer import Consumer
from services.kit.server import serve
from services.kit.settings import load_service_settings
from tests.services import demo

_deliver = Consumer.deliver


async def _deliver_then_hang(self: Consumer, body: bytes, attempt: int) -> Verdict:
    verdict = await _deliver(self, body, attempt)
    print(f"committed {verdict.outcome}", flush=True)
    await asyncio.Event().wait()  # until the kill
    return verdict


def main() -> None:
    settings = load_service_settings()
    configure_logging("INFO", "ack-crash-consumer")
    Consumer.deliver = _deliver_then_hang  # type: ignore[method-assign]
    asyncio.run(serve(demo.consumer(demo.Controls()), settings, "127.0.0.1", int(sys.argv[1])))


if __name__ == "__main__":
    main()
