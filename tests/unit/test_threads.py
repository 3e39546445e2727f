"""Worker threads block the process's signals, so SIGTERM always reaches the event loop's thread."""
from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path

from gateway.threads import signal_free_executor, signals_blocked
from services.kit.db import Database


def _blocked_in(thread_id: int) -> int:
    """The SigBlk mask of one thread of this process, from /proc."""
    status = Path(f"/proc/self/task/{thread_id}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("SigBlk:")]
    return int(line.split()[1], 16)


def _term_bit() -> int:
    return 1 << (signal.SIGTERM - 1)


def test_a_thread_started_under_signals_blocked_blocks_sigterm_and_the_caller_gets_its_mask_back() -> None:
    seen: list[int] = []
    ready, release = threading.Event(), threading.Event()

    def worker() -> None:
        seen.append(threading.get_native_id())
        ready.set()
        release.wait(5)  # alive until its mask has been read

    with signals_blocked():
        thread = threading.Thread(target=worker)
        thread.start()
        ready.wait(5)
        assert _blocked_in(seen[0]) & _term_bit()
    release.set()
    thread.join(5)
    assert not _blocked_in(threading.get_native_id()) & _term_bit()
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_executor_threads_block_sigterm() -> None:
    executor = signal_free_executor()
    try:
        native_id = executor.submit(threading.get_native_id).result(5)
        assert _blocked_in(native_id) & _term_bit()
    finally:
        executor.shutdown()


def test_database_threads_block_sigterm_while_open(tmp_path: Path) -> None:
    async def scenario() -> list[int]:
        db = Database(tmp_path / "t.sqlite3", "test")
        await db.open()
        try:
            ids = [t.native_id for t in threading.enumerate() if "_connection_worker_thread" in t.name]
            return [_blocked_in(i) & _term_bit() for i in ids if i is not None]
        finally:
            await db.close()

    masks = asyncio.run(scenario())
    assert masks and all(masks)
