"""The outbox relay: publishes committed events from the service's outbox table, in commit order.

A row is marked sent only after the bus confirmed it, so every committed event is delivered at least
once (consumers ignore the second copy by event ID). The relay wakes at once when a transaction that
published events commits, when the bus (re)connects, and otherwise every poll interval; while the
bus is away, events wait in the table, and the service keeps serving.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.logs import log_fields
from services.events.bus import Bus, PublishFailed
from services.events.event import Event, MalformedEvent

if TYPE_CHECKING:
    # Type-only: importing services.kit here would import the kit (which imports this module) first.
    from services.kit.db import Database, Row
    from services.kit.metrics import ServiceMetrics

log = logging.getLogger("services.events")

BATCH = 500
"""Events read per pass and published together, their confirms awaited at once."""
_PRUNE_EVERY = 3600.0


class OutboxRelay:
    def __init__(
        self,
        db: Database,
        bus: Bus,
        metrics: ServiceMetrics,
        *,
        poll_interval: float,
        retention: float,
    ) -> None:
        self.db = db
        self.bus = bus
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.retention = retention
        self._wake = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        self._failing = False
        self._stopping = False
        db.commit_listeners.append(self._committed)
        bus.on_ready(self.wake)

    def wake(self) -> None:
        self._wake.set()

    def _committed(self, _events: Sequence[Event]) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"{self.metrics.service} outbox relay")

    async def _run(self) -> None:
        while not self._stopping:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that lands
            # in the same tick as a wake-up (a commit), and stop() would wait for the relay forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                break
            try:
                await self.drain()
                await self._prune()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bad pass (database busy, ...) must not end the relay
                log.exception("outbox relay pass failed; trying again")

    async def drain(self) -> int:
        """Publish pending events until none is left or the bus fails; returns how many were sent."""
        sent = 0
        async with self._drain_lock:
            while self.bus.connected:
                rows = await self._pending_rows()
                if not rows:
                    break
                confirmed, failure = await self._publish(rows)
                sent += confirmed
                if failure is not None:
                    if not self._failing:
                        log.warning(
                            "could not publish from the outbox; will retry", extra=log_fields(error=str(failure))
                        )
                    self._failing = True
                    break
                if self._failing:
                    log.info("outbox publishing works again")
                    self._failing = False
                if len(rows) < BATCH:
                    break  # all there was; a commit since then has woken the relay for another pass
        await self.refresh_gauges()
        return sent

    async def _pending_rows(self) -> list[Row]:
        # On the writer's connection, in a transaction of its own: a read on the shared reader connection
        # can land inside another task's open statement, whose snapshot predates our last _mark_sent, and
        # the relay would publish those events again (and miss the ones just committed until the next poll).
        async with self.db.transaction() as tx:
            return await tx.fetchall(
                "SELECT seq, body FROM kadai_outbox WHERE sent_at IS NULL ORDER BY seq LIMIT ?", (BATCH,)
            )

    async def _publish(self, rows: Sequence[Row]) -> tuple[int, PublishFailed | None]:
        """Publish a batch with its confirms in flight together and mark sent exactly the confirmed events;
        returns (how many, the first failure). The publishes start in commit order and the channel keeps
        it; one that fails leaves its event pending for a later pass, whatever happened to its neighbours."""
        done: list[int] = []
        publishing: list[tuple[int, str, asyncio.Task[None]]] = []
        for row in rows:
            event = _parse(row["body"])
            if event is None:
                done.append(row["seq"])
            else:
                publishing.append((row["seq"], event.type, asyncio.ensure_future(self.bus.publish(event))))
        failure: PublishFailed | None = None
        unexpected: BaseException | None = None
        try:
            if publishing:
                await asyncio.wait([task for _seq, _type, task in publishing])
        finally:
            # Also when the pass is cancelled: what the bus confirmed by then is marked, the rest waits.
            published: Counter[str] = Counter()
            failed = 0
            for seq, event_type, task in publishing:
                if not task.done() or task.cancelled():
                    task.cancel()
                    continue
                error = task.exception()
                if error is None:
                    done.append(seq)
                    published[event_type] += 1
                elif isinstance(error, PublishFailed):
                    failed += 1
                    failure = failure or error
                else:
                    unexpected = unexpected or error
            for event_type, count in published.items():
                self.metrics.events_published.labels(self.metrics.service, event_type).inc(count)
            if failed:
                self.metrics.publish_failures.labels(self.metrics.service).inc(failed)
            await self._mark_sent(done)
        if unexpected is not None:
            raise unexpected
        return len(done), failure

    async def _mark_sent(self, seqs: list[int]) -> None:
        if not seqs:
            return
        now = time.time()
        async with self.db.transaction() as tx:
            await tx.executemany("UPDATE kadai_outbox SET sent_at = ? WHERE seq = ?", [(now, seq) for seq in seqs])

    async def pending(self) -> tuple[int, float]:
        """(events waiting, age in seconds of the oldest)."""
        row = await self.db.fetchone("SELECT COUNT(*), MIN(created_at) FROM kadai_outbox WHERE sent_at IS NULL")
        if row is None or not row[0]:
            return 0, 0.0
        return int(row[0]), max(0.0, time.time() - float(row[1]))

    async def refresh_gauges(self) -> tuple[int, float]:
        count, oldest = await self.pending()
        self.metrics.outbox_pending.labels(self.metrics.service).set(count)
        self.metrics.outbox_oldest_seconds.labels(self.metrics.service).set(oldest)
        return count, oldest

    async def _prune(self) -> None:
        """Forget sent events and processed event IDs older than the retention."""
        now = time.monotonic()
        if now - self._last_prune < _PRUNE_EVERY:
            return
        self._last_prune = now
        cutoff = time.time() - self.retention
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM kadai_outbox WHERE sent_at IS NOT NULL AND sent_at < ?", (cutoff,))
            await tx.execute("DELETE FROM kadai_processed_events WHERE processed_at < ?", (cutoff,))

    async def stop(self, flush_timeout: float) -> None:
        """Stop the loop, then publish what is pending, all within flush_timeout.

        The loop is asked to stop and finishes the pass it is in. It is cancelled only when that pass
        overruns the timeout: under load at shutdown, cancelling a pass in the middle of its database
        calls was seen to leave the next database call waiting forever (the service then hung in its
        drain until killed), so the common case cancels nothing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + flush_timeout
        task, self._task = self._task, None
        self._stopping = True
        self._wake.set()
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=flush_timeout)
        while task is not None and not task.done():
            # Cancelled again until it ends: Python 3.11's wait_for (around each publish) can swallow a
            # cancellation that lands as the publish completes.
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        try:
            async with asyncio.timeout_at(max(deadline, loop.time() + 1.0)):
                await self.drain()
        except TimeoutError:
            log.warning("outbox not fully flushed at shutdown; the rest is sent at the next start")
        count, _oldest = await self.pending()
        if count:
            log.info("events left in the outbox for the next start", extra=log_fields(pending=count))


def _parse(body: bytes) -> Event | None:
    try:
        return Event.from_json(body)
    except MalformedEvent:
        # Written by Transaction.publish, so this is corruption; skipping it beats blocking every event behind it.
        log.error("unreadable event in the outbox; skipped")
        return None
