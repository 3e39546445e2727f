"""A consumer service process whose event handler never finishes, for a test to kill mid-message.

Run by tests/services/test_events_rabbitmq.py as `python -m tests.services.crash_consumer PORT` with
the service's settings in the environment.
"""
from __future__ import annotations

import asyncio
import sys

from gateway.logs import configure_logging
from services.kit.server import serve
from services.kit.settings import load_service_settings
from tests.services import demo


def main() -> None:
    settings = load_service_settings()
    configure_logging("INFO", "crash-consumer")
    controls = demo.Controls(gate=asyncio.Event())  # never set: every handler call waits until the kill
    asyncio.run(serve(demo.consumer(controls), settings, "127.0.0.1", int(sys.argv[1])))


if __name__ == "__main__":
    main()
