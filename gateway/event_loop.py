"""The event loop `kadai gateway` serves on: uvloop where it is installed, asyncio's own otherwise.

uvloop runs the loop, its timers and its socket transports in C (libuv). On the proxied path that is
what asyncio does in Python for every request: a Handle per callback, the selector's bookkeeping, the
transport's write and read wrappers. Interleaved A/B rounds of the benchmark measured 8-10 % less CPU
per proxied request with it. The gateway's own code runs the same on both loops; the tests of what
touches sockets and the loop run on both (KADAI_TEST_LOOP picks one for every test).
"""
from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import Literal

EventLoopName = Literal["uvloop", "asyncio"]
EVENT_LOOPS: tuple[EventLoopName, ...] = ("uvloop", "asyncio")


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def default_event_loop() -> EventLoopName:
    return "uvloop" if uvloop_installed() else "asyncio"


def loop_factory(name: EventLoopName) -> Callable[[], asyncio.AbstractEventLoop]:
    """What asyncio.Runner builds its loop with."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def running_event_loop() -> EventLoopName:
    """Which kind of loop runs the calling coroutine."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
