"""gateway.runtime: the malloc threshold pin and the collector settings, each in a fresh interpreter so
the test process keeps its own allocator and collector state."""
from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import textwrap

import pytest

_GLIBC = hasattr(ctypes.CDLL(None), "mallopt")

# After one large block is freed, 160 blocks of 256 KiB are taken and given back while a small block
# allocated after them is still held. Prints how much of their 40 MiB is still resident.
_FRAGMENT = textwrap.dedent(
    """
    import ctypes, json, sys
    from gateway.runtime import pin_malloc_mmap_threshold

    pinned = pin_malloc_mmap_threshold() if sys.argv[1] == "pin" else False
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)

    def rss_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    def take(size):
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        return block

    libc.free(take(8 << 20))  # a large block freed: glibc would raise its mmap threshold to 8 MiB
    before = rss_kib()
    blocks = [take(256 << 10) for _ in range(160)]
    holder = take(200 << 10)  # from the top of the heap, after the blocks: the heap cannot shrink past it
    for block in blocks:
        libc.free(block)
    print(json.dumps({"pinned": pinned, "kept_kib": rss_kib() - before}))
    libc.free(holder)
    """
)


def _run(code: str, *args: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not _GLIBC, reason="glibc's mallopt is not in this process (not a glibc system)")
def test_pinned_threshold_gives_freed_blocks_back() -> None:
    result = _run(_FRAGMENT, "pin")
    assert result["pinned"] is True
    assert result["kept_kib"] < 8 * 1024, result  # the 40 MiB went back to the system


@pytest.mark.skipif(not _GLIBC, reason="glibc's mallopt is not in this process (not a glibc system)")
def test_without_the_pin_glibc_keeps_them() -> None:
    # Why the pin exists: glibc's own adjustment keeps the freed 40 MiB in a heap it cannot trim.
    result = _run(_FRAGMENT, "leave")
    assert result["kept_kib"] > 32 * 1024, result


def test_settled_collector_freezes_start_up_objects_and_collects_less_often() -> None:
    code = textwrap.dedent(
        """
        import gc, json
        from gateway.runtime import GC_GEN0_THRESHOLD, settle_garbage_collector
        before = gc.get_threshold()
        settle_garbage_collector()
        print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                          "expected": GC_GEN0_THRESHOLD}))
        """
    )
    result = _run(code)
    assert result["after"][0] == result["expected"] > result["before"][0]
    assert result["after"][1:] == result["before"][1:]
    assert result["frozen"] > 1_000  # at least the interpreter's own modules
