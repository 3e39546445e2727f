"""The one interface for publishing and consuming domain events, whatever carries them.

Two implementations: RabbitBus (services/events/rabbit.py, AMQP_URL=amqp://...) and MemoryBus
(services/events/memory.py, AMQP_URL=memory://, one process). Both run the same consumer core
(services/events/consumer.py): the bus moves bytes, acknowledges, retries and dead-letters; the core
decides what a delivery's outcome is.

    outbox relay --publish(event)--> Bus --deliver(body, attempt)--> Consumer --> handler(event, ctx)
                                       <------------- Verdict --------------
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Literal, Protocol

from services.events.event import Event

Outcome = Literal["ok", "duplicate", "retry", "dead", "unhandled"]
ATTEMPT_HEADER = "x-kadai-attempt"
ERROR_HEADER = "x-kadai-error"
FAILED_AT_HEADER = "x-kadai-failed-at"
REPLAYS_HEADER = "x-kadai-replays"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the consumer core decided about one delivery; the bus acts on it."""

    outcome: Outcome
    error: str | None = None
    """Why the handler failed (retry, dead); recorded with a dead letter."""


Deliver = Callable[[bytes, int], Awaitable[Verdict]]
"""The consumer core: (message body, attempt number from 1) -> verdict."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """What a consuming service asks of the bus: the event types it handles and who handles them."""

    types: tuple[str, ...]
    deliver: Deliver


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event given up on after its attempts, with the last error."""

    event_id: str
    type: str
    attempts: int
    error: str
    failed_at: str
    body: bytes


class PublishFailed(Exception):
    """The bus did not confirm a publish (not connected, timeout, refused): the event stays pending."""


@dataclass(frozen=True, slots=True)
class Topology:
    """Names of a service's exchange and queues; the prefix keeps environments (and tests) apart."""

    prefix: str
    service: str

    @property
    def exchange(self) -> str:
        """The durable topic exchange every service publishes its domain events to."""
        return f"{self.prefix}.events"

    @property
    def queue(self) -> str:
        """The service's own durable queue, bound to the types it handles."""
        return f"{self.prefix}.{self.service}.events"

    @property
    def retry_queue(self) -> str:
        """Where a failed delivery waits out the retry delay before going back to `queue`."""
        return f"{self.prefix}.{self.service}.retry"

    @property
    def dead_letter_queue(self) -> str:
        """Where a delivery goes after its last failed attempt, with the error in its headers."""
        return f"{self.prefix}.{self.service}.dlq"

    @property
    def queues(self) -> tuple[str, str, str]:
        return self.queue, self.retry_queue, self.dead_letter_queue


class Bus(Protocol):
    kind: str
    """"rabbitmq" or "memory"."""

    @property
    def connected(self) -> bool:
        """Whether publish() can succeed right now."""

    def health(self) -> dict[str, object]:
        """State for GET /health: status (up, down), kind, and the last error while down. Never raises."""

    def on_ready(self, callback: Callable[[], None]) -> None:
        """Call back each time the bus (re)connects: the outbox relay drains what piled up."""

    async def start(self, subscription: Subscription | None) -> None:
        """Begin connecting and, with a subscription, consuming. Returns at once: an unreachable broker
        does not stop the service from starting; it connects in the background."""

    async def publish(self, event: Event) -> None:
        """Publish persistently and wait for the bus's confirm; PublishFailed otherwise."""

    async def stop_consuming(self, timeout: float) -> None:
        """Take no new deliveries and wait (up to timeout) for the ones being handled."""

    async def close(self) -> None:
        """Stop consuming and disconnect."""

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The service's dead letters, oldest first, left in place."""

    async def replay(self, event_ids: Collection[str] | None = None) -> list[str]:
        """Send dead letters (all, or those with the given event IDs) back to the service's queue with
        a fresh set of attempts; returns the IDs of the events sent."""
