"""Worker threads that never receive the process's signals.

A thread inherits the signal mask of the thread that starts it. Left alone, SIGTERM may be delivered to
a worker thread (aiosqlite's connection threads, the event loop's executor) instead of the main thread;
observed under load at shutdown: the interrupted worker missed the wake-up of its job queue, so a
database call queued during the drain never completed and the service hung until it was killed. Signals
are for the event loop in the main thread only (loop.add_signal_handler), so workers block them all.
"""
from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

_ALL_SIGNALS = signal.valid_signals()


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Block every signal in the calling thread for the block (threads started inside inherit it)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _block_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)


def signal_free_executor() -> ThreadPoolExecutor:
    """An executor for loop.set_default_executor whose threads block every signal."""
    return ThreadPoolExecutor(thread_name_prefix="kadai-worker", initializer=_block_signals)
