"""Process-wide settings for the long-running commands (`kadai up`, `kadai gateway`, `kadai service`),
and the drain delay their shutdowns share.

- glibc's malloc raises its mmap threshold to the size of any large block freed (up to 32 MiB) and its
  trim threshold to twice that. asyncio reads a socket into a fresh 256 KiB buffer and shrinks it to
  what arrived, so after the first read those buffers come from the heap, and the small results that
  stay alive (a message kept, a row cached) leave holes the heap cannot give back. Under steady load the
  platform process (`kadai up`: gateway and services) grew by about 0.28 MiB a minute once warm, with
  the Python heap flat (tracemalloc). Pinning the threshold at glibc's default (which turns the
  adjustment off) maps each such buffer and unmaps it when freed; the same load then grew about half as
  fast, and with the token cache's idle eviction a quarter as fast
  (README, "Proof that it holds"). Measured alternatives: a 1 MiB threshold grew as before; malloc_trim()
  every minute barely slowed it. The cost is three system calls per socket read, a few microseconds:
  nothing next to a service's request, but a fifth of the gateway's CPU per proxied request in the
  benchmark. So the services' commands pin it and `kadai gateway` does not: its memory is flat without
  (`ops/bench/run --soak`).
- The cycle collector: after start-up, everything built so far (modules, configuration, route table)
  is moved out of its sight with gc.freeze(), so full collections no longer walk it; and the youngest
  generation is collected every GC_GEN0_THRESHOLD allocations instead of 700, since a busy gateway
  holds a few thousand young objects in flight that the default threshold re-examines many times a
  second to little effect.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc

M_MMAP_THRESHOLD = -3
"""mallopt() parameter number, from glibc's malloc.h."""
MMAP_THRESHOLD_BYTES = 128 * 1024
"""glibc's own default: blocks of this size and more are mapped, and unmapped when freed."""
GC_GEN0_THRESHOLD = 10_000


def pin_malloc_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold (see the module docstring); False where there is no glibc mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the symbols already loaded into this process: libc's
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def settle_garbage_collector() -> None:
    """Call once start-up is done: freeze what exists, collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def keep_serving_while_draining(stop: asyncio.Event, delay: float) -> None:
    """After the first stop signal: keep the listener open for `delay` seconds while health reports
    draining, so health checks and load balancers take this process out before its port closes. A second
    signal (stop set again) cuts it short."""
    if delay <= 0:
        return
    stop.clear()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
