"""The in-process bus (AMQP_URL=memory://): no broker, events delivered inside this process.

For development with every service in one process, and for tests. Same handlers, same outbox, same
retry and dead-letter rules as RabbitMQ; what is in flight is lost when the process ends (which is why
production refuses it). Services of one process share a MemoryBroker per events prefix.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from typing import ClassVar

from gateway.envelope import utc_timestamp
from gateway.logs import log_fields
from services.events.bus import DeadLetter, Subscription, Verdict
from services.events.event import Event

log = logging.getLogger("services.events")


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: `*` is exactly one word, `#` zero or more."""

    def match(words: list[str], keys: list[str]) -> bool:
        if not words:
            return not keys
        head, rest = words[0], words[1:]
        if head == "#":
            return any(match(rest, keys[skip:]) for skip in range(len(keys) + 1))
        if not keys:
            return False
        return (head == "*" or head == keys[0]) and match(rest, keys[1:])

    return match(pattern.split("."), routing_key.split("."))


@dataclass(slots=True)
class _Message:
    body: bytes
    event_id: str
    type: str
    attempt: int = 1


@dataclass(slots=True)
class _Queue:
    patterns: tuple[str, ...]
    messages: asyncio.Queue[_Message] = field(default_factory=asyncio.Queue)
    dead: list[tuple[_Message, DeadLetter]] = field(default_factory=list)


class MemoryBroker:
    """The exchange and the queues of one events prefix inside this process."""

    _shared: ClassVar[dict[str, tuple[MemoryBroker, int]]] = {}

    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}

    @classmethod
    def attach(cls, prefix: str) -> MemoryBroker:
        broker, users = cls._shared.get(prefix, (None, 0))
        broker = broker or MemoryBroker()
        cls._shared[prefix] = (broker, users + 1)
        return broker

    @classmethod
    def detach(cls, prefix: str) -> None:
        broker, users = cls._shared.get(prefix, (None, 0))
        if broker is None:
            return
        if users <= 1:
            del cls._shared[prefix]
        else:
            cls._shared[prefix] = (broker, users - 1)

    def declare(self, service: str, patterns: tuple[str, ...]) -> _Queue:
        queue = self.queues.get(service)
        if queue is None:
            queue = self.queues[service] = _Queue(patterns)
        else:
            queue.patterns = patterns
        return queue

    def route(self, message: _Message) -> None:
        for queue in self.queues.values():
            if any(topic_matches(pattern, message.type) for pattern in queue.patterns):
                queue.messages.put_nowait(replace(message))


class MemoryBus:
    kind = "memory"

    def __init__(self, service: str, prefix: str, *, retry_delay: float, prefetch: int) -> None:
        self.service = service
        self.prefix = prefix
        self.retry_delay = retry_delay
        self.broker = MemoryBroker.attach(prefix)
        self._queue: _Queue | None = None
        self._subscription: Subscription | None = None
        self._worker: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(prefetch)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._retries: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def connected(self) -> bool:
        return not self._closed

    def health(self) -> dict[str, object]:
        return {"status": "up" if self.connected else "down", "kind": self.kind}

    def on_ready(self, callback: Callable[[], None]) -> None:
        callback()  # always ready

    async def start(self, subscription: Subscription | None) -> None:
        if subscription is None:
            return
        self._subscription = subscription
        self._queue = self.broker.declare(self.service, subscription.types)
        self._worker = asyncio.create_task(self._consume(self._queue), name=f"{self.service} memory consumer")

    async def publish(self, event: Event) -> None:
        self.broker.route(_Message(event.to_json(), event.id, event.type))

    async def _consume(self, queue: _Queue) -> None:
        while True:
            message = await queue.messages.get()
            await self._slots.acquire()
            task = asyncio.create_task(self._handle(queue, message))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _handle(self, queue: _Queue, message: _Message) -> None:
        assert self._subscription is not None
        try:
            verdict: Verdict = await self._subscription.deliver(message.body, message.attempt)
        finally:
            self._slots.release()
        if verdict.outcome == "retry":
            retry = asyncio.create_task(self._retry_later(queue, replace(message, attempt=message.attempt + 1)))
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)
        elif verdict.outcome == "dead":
            letter = DeadLetter(
                message.event_id, message.type, message.attempt, verdict.error or "", utc_timestamp(), message.body
            )
            queue.dead.append((message, letter))

    async def _retry_later(self, queue: _Queue, message: _Message) -> None:
        await asyncio.sleep(self.retry_delay)
        queue.messages.put_nowait(message)

    async def stop_consuming(self, timeout: float) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        if self._in_flight:
            _done, pending = await asyncio.wait(set(self._in_flight), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "event handlers still running at shutdown were cancelled", extra=log_fields(count=len(pending))
                )
                await asyncio.wait(pending)

    async def close(self) -> None:
        await self.stop_consuming(timeout=0)
        for retry in set(self._retries):
            retry.cancel()
        if self._retries:
            await asyncio.wait(set(self._retries))
        if not self._closed:
            self._closed = True
            MemoryBroker.detach(self.prefix)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return [letter for _message, letter in self._dead()[:limit]]

    async def replay(self, event_ids: Collection[str] | None = None) -> list[str]:
        queue = self._queue
        if queue is None:
            return []
        wanted = None if event_ids is None else set(event_ids)
        keep, replayed = [], []
        for message, letter in queue.dead:
            if wanted is None or letter.event_id in wanted:
                queue.messages.put_nowait(replace(message, attempt=1))
                replayed.append(letter.event_id)
            else:
                keep.append((message, letter))
        queue.dead[:] = keep
        return replayed

    def _dead(self) -> list[tuple[_Message, DeadLetter]]:
        return self._queue.dead if self._queue is not None else []
