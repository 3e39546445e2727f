"""Process-wide settings for the long-running commands (`kadai up`, `kadai gateway`, `kadai service`).

- glibc's malloc raises its mmap threshold to the size of any large block freed (up to 32 MiB) and its
  trim threshold to twice that: after one such free, blocks below that size come from the heap, and
  the heap is given back only when twice that much is free at its top. Under steady load the platform
  process (`kadai up`: gateway and services) then grew by about a MiB a minute with the Python heap flat
  (tracemalloc); with the threshold pinned at glibc's default, which turns the adjustment off, the same
  load stays flat (README, "Proof that it holds").
- The cycle collector: after start-up, everything built so far (modules, configuration, route table)
  is moved out of its sight with gc.freeze(), so full collections no longer walk it; and the youngest
  generation is collected every GC_GEN0_THRESHOLD allocations instead of 700, since a busy gateway
  holds a few thousand young objects in flight that the default threshold re-examines many times a
  second to little effect.
"""
from __future__ import annotations

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
