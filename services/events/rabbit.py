"""The RabbitMQ bus: one durable topic exchange, a durable queue per consuming service, retries through
a per-service retry queue, and a per-service dead-letter queue.

    publish --(routing key = event type)--> <prefix>.events (topic)
        --binding per handled type--> <prefix>.<service>.events --> consumer (manual ack, prefetch)
    failed, attempts left  --> <prefix>.<service>.retry (message TTL = retry delay)
                               --dead-lettered by the broker on expiry--> <prefix>.<service>.events
    failed, last attempt   --> <prefix>.<service>.dlq (headers: attempt, error, failed-at)

The attempt number travels in the x-kadai-attempt header: retries are counted by us rather than by a
quorum queue's delivery limit, so a broker redelivering after a crash (which is not a failure of the
handler) does not use up attempts. Copies to the retry and dead-letter queues are published with
confirms before the original is acknowledged: a failure in between means a redelivery, not a loss.

The service starts whether or not the broker answers: the connection is made in the background with
a bounded timeout per attempt, and aio-pika's robust connection restores channels, queues, bindings
and the consumer after a broker restart.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    DeliveryMode,
)
from aio_pika.exceptions import ChannelNotFoundEntity
from yarl import URL

from gateway.config.settings import mask_url
from gateway.envelope import utc_timestamp
from gateway.logs import log_fields
from services.events.bus import (
    ATTEMPT_HEADER,
    ERROR_HEADER,
    FAILED_AT_HEADER,
    REPLAYS_HEADER,
    DeadLetter,
    PublishFailed,
    Subscription,
    Topology,
)
from services.events.broker_sockets import TrackedSockets
from services.events.event import Event, MalformedEvent
from services.events.log_noise import quiet_reconnect_attempts

if TYPE_CHECKING:
    # Type-only: importing services.kit here would import the kit (which imports this module) first.
    from services.kit.settings import ServiceSettings

log = logging.getLogger("services.events")

# Logged again after this many failed attempts in a row, so a long outage does not flood the log.
_LOG_EVERY = 30


class NoDeadLetterQueue(LookupError):
    """The service never declared its queues on this broker (it has not consumed with this prefix)."""


class RabbitBus:
    kind = "rabbitmq"

    def __init__(
        self, service: str, settings: ServiceSettings, consumers: Mapping[str, Collection[str]] | None = None
    ) -> None:
        self.service = service
        self.settings = settings
        quiet_reconnect_attempts()  # the bus reports an outage once; the libraries would per attempt
        self.topology = Topology(settings.events_prefix, service)
        self.consumers: Mapping[str, Collection[str]] = consumers or {}
        """Other services by name, with the event types each consumes: their queues are declared too."""
        # Named after the service, so it can be told apart (and closed) on the broker.
        self.url = URL(settings.amqp_url).update_query(name=f"{service} [{settings.events_prefix}]")
        self._connection: AbstractRobustConnection | None = None
        self._sockets: TrackedSockets | None = None
        self._exchange: AbstractExchange | None = None
        self._publish_channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._subscription: Subscription | None = None
        self._connector: asyncio.Task[None] | None = None
        self._ready_callbacks: list[Callable[[], None]] = []
        self._last_error: str | None = None
        self._work: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        connection = self._connection
        return (
            connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
            and self._exchange is not None
        )

    def health(self) -> dict[str, object]:
        report: dict[str, object] = {
            "status": "up" if self.connected else "down",
            "kind": self.kind,
            "url": mask_url(self.settings.amqp_url),
        }
        if not self.connected and self._last_error:
            report["lastError"] = self._last_error
        if self._subscription is not None:
            report["queue"] = self.topology.queue
            report["consuming"] = self._consumer_tag is not None
        return report

    def on_ready(self, callback: Callable[[], None]) -> None:
        self._ready_callbacks.append(callback)
        if self.connected:
            callback()

    async def start(self, subscription: Subscription | None) -> None:
        self._subscription = subscription
        self._connector = asyncio.create_task(self._connect(), name=f"{self.service} broker connection")

    async def _connect(self) -> None:
        failures = 0
        while True:
            # Built here rather than by aio_pika.connect_robust(): an attempt that fails or is cancelled
            # must be closed by us, or its reconnection task outlives the bus (and holds up the loop's end),
            # and so must the socket of a handshake it abandoned.
            connection = aio_pika.RobustConnection(self.url, reconnect_interval=self.settings.reconnect_interval)
            sockets = TrackedSockets.attach(connection)
            try:
                await connection.connect(timeout=self.settings.connect_timeout)
                await self._declare(connection)
            except asyncio.CancelledError:
                await _close_quietly(connection, sockets)
                raise
            except Exception as exc:  # noqa: BLE001 - any failure to connect is retried in the background
                self._last_error = _describe(exc)
                if failures % _LOG_EVERY == 0:
                    log.warning(
                        "event broker unreachable; the service runs and keeps events in its outbox",
                        extra=log_fields(
                            url=mask_url(self.settings.amqp_url), error=self._last_error, attempt=failures + 1
                        ),
                    )
                failures += 1
                await _close_quietly(connection, sockets)
                self._exchange = None
                await asyncio.sleep(self.settings.reconnect_interval)
                continue
            break
        self._connection, self._sockets = connection, sockets
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        self._last_error = None
        log.info(
            "connected to the event broker",
            extra=log_fields(url=mask_url(self.settings.amqp_url), exchange=self.topology.exchange),
        )
        self._announce_ready()

    async def _declare(self, connection: AbstractRobustConnection) -> None:
        topology = self.topology
        channel = await connection.channel(publisher_confirms=True)
        self._exchange = await channel.declare_exchange(topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        self._publish_channel = channel
        # The exchange drops what no queue is bound to: every known consumer's queue exists before this
        # service publishes, so an event published before its consumer ever started waits for it there.
        for consumer, types in self.consumers.items():
            if consumer == topology.service:
                continue
            queue = await channel.declare_queue(Topology(topology.prefix, consumer).queue, durable=True)
            for event_type in sorted(types):
                await queue.bind(self._exchange, routing_key=event_type)
        if self._subscription is None:
            return
        consume = await connection.channel()
        await consume.set_qos(prefetch_count=self.settings.prefetch)
        # Declared on this channel too: the robust channel re-declares it before re-binding after a restart.
        exchange = await consume.declare_exchange(topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await consume.declare_queue(topology.queue, durable=True)
        await consume.declare_queue(
            topology.retry_queue,
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": topology.queue},
        )
        await consume.declare_queue(topology.dead_letter_queue, durable=True)
        for event_type in self._subscription.types:
            await queue.bind(exchange, routing_key=event_type)
        self._queue = queue
        self._consumer_tag = await queue.consume(self._on_message)

    def _on_connection_lost(self, _sender: object, exc: BaseException | None) -> None:
        if self._connection is None or self._connection.close_called:
            return
        # Called again for every failed reconnection attempt: said once per outage, not once per attempt.
        already_lost = self._last_error is not None
        self._last_error = _describe(exc) if exc else "connection closed"
        if not already_lost:
            log.warning("lost the event broker; reconnecting", extra=log_fields(error=self._last_error))

    def _on_reconnected(self, _sender: object) -> None:
        self._last_error = None
        log.info("reconnected to the event broker")
        self._announce_ready()

    def _announce_ready(self) -> None:
        for callback in self._ready_callbacks:
            callback()

    async def publish(self, event: Event) -> None:
        exchange, channel = self._exchange, self._publish_channel
        if exchange is None or channel is None or channel.is_closed or not self.connected:
            raise PublishFailed(self._last_error or "not connected to the event broker")
        # The properties aio_pika.Message would build, built once, without its per-field checks.
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=DeliveryMode.PERSISTENT,
            priority=0,
            message_id=event.id,
            message_type=event.type,
            app_id=event.source,
            correlation_id=event.request_id,
            timestamp=datetime.now(tz=UTC),
            headers={},
        )
        try:
            # asyncio.timeout, not wait_for (a task per publish): the timeout bounds the wait for a confirm
            # on a connection that broke mid-publish.
            async with asyncio.timeout(self.settings.publish_timeout):
                underlay = await channel.get_underlay_channel()
                # Not mandatory: an event no service subscribes to is not an error. wait=False: the publish
                # does not hold the channel until its frames reach the socket, so the publishes of a batch
                # go out back to back (still in the order they were made) and only their confirms are
                # awaited; aio-pika's Exchange.publish always waits.
                await underlay.basic_publish(
                    event.to_json(),
                    exchange=exchange.name,
                    routing_key=event.type,
                    properties=properties,
                    mandatory=False,
                    wait=False,
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the caller keeps the event pending whatever went wrong
            raise PublishFailed(_describe(exc)) from exc

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aio-pika cancels a channel's consumer callbacks when the connection drops. The handling runs in a
        # task of its own so that a handler already running finishes and commits: its acknowledgement is
        # lost with the channel, and the redelivery is then recognised as a duplicate.
        work = asyncio.create_task(self._settle(message))
        self._work.add(work)
        work.add_done_callback(self._work.discard)
        await asyncio.shield(work)

    async def _settle(self, message: AbstractIncomingMessage) -> None:
        assert self._subscription is not None
        try:
            attempt = _header_int(message.headers, ATTEMPT_HEADER, 1)
            verdict = await self._subscription.deliver(message.body, attempt)
            if verdict.outcome == "retry":
                await self._forward(
                    message, self.topology.retry_queue, attempt + 1, verdict.error, expiration=self.settings.retry_delay
                )
            elif verdict.outcome == "dead":
                await self._forward(message, self.topology.dead_letter_queue, attempt, verdict.error)
            await message.ack()
        except asyncio.CancelledError:
            raise  # shutdown: not acknowledged, so the broker delivers it again
        except Exception as exc:  # noqa: BLE001 - the channel or connection went away mid-delivery
            log.warning(
                "could not settle an event delivery; the broker will deliver it again",
                extra=log_fields(messageId=message.message_id, error=_describe(exc)),
            )
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)

    async def _forward(
        self,
        message: AbstractIncomingMessage,
        queue: str,
        attempt: int,
        error: str | None,
        expiration: float | None = None,
    ) -> None:
        """Publish a copy of a delivery straight to one of the service's queues (default exchange)."""
        headers = dict(message.headers or {})
        headers[ATTEMPT_HEADER] = attempt
        headers[ERROR_HEADER] = error or ""
        headers[FAILED_AT_HEADER] = utc_timestamp()
        await self._publish_direct(_copy(message, headers, expiration), queue)

    async def _publish_direct(self, message: aio_pika.Message, queue: str) -> None:
        channel = self._publish_channel
        if channel is None:
            raise PublishFailed("not connected to the event broker")
        await asyncio.wait_for(
            channel.default_exchange.publish(message, routing_key=queue, mandatory=False),
            self.settings.publish_timeout,
        )

    async def stop_consuming(self, timeout: float) -> None:
        queue, tag = self._queue, self._consumer_tag
        self._consumer_tag = None
        if queue is not None and tag is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(queue.cancel(tag), min(timeout, self.settings.publish_timeout) or 0.1)
        if not self._work:
            return
        pending = set(self._work)
        if timeout > 0:
            _done, pending = await asyncio.wait(pending, timeout=timeout)
        if pending:
            log.warning(
                "event handlers still running at shutdown were stopped; their events will be delivered again",
                extra=log_fields(count=len(pending)),
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)

    async def close(self) -> None:
        await self.stop_consuming(timeout=0)
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
            self._connector = None
        if self._connection is not None:
            await _close_quietly(self._connection, self._sockets)
            self._connection = self._sockets = None
        self._exchange = None
        self._publish_channel = None

    @contextlib.asynccontextmanager
    async def _admin_channel(self) -> AsyncIterator[AbstractChannel]:
        """A short-lived connection of its own, for the dead-letter commands (the service may be down)."""
        url = URL(self.settings.amqp_url).update_query(name=f"kadai events dlq {self.service}")
        connection = aio_pika.Connection(url)
        sockets = TrackedSockets.attach(connection)
        try:
            await connection.connect(timeout=self.settings.connect_timeout)
            yield await connection.channel(publisher_confirms=True)
        finally:
            await _close_quietly(connection, sockets)

    async def _dead_letter_queue(self, channel: AbstractChannel) -> AbstractQueue:
        try:
            return await channel.declare_queue(self.topology.dead_letter_queue, passive=True)
        except ChannelNotFoundEntity:
            raise NoDeadLetterQueue(
                f"no queue {self.topology.dead_letter_queue} on the broker: {self.service} has not consumed "
                f"events with prefix {self.topology.prefix!r} there"
            ) from None

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        async with self._admin_channel() as channel:
            queue = await self._dead_letter_queue(channel)
            held: list[AbstractIncomingMessage] = []
            while len(held) < limit:
                message = await queue.get(no_ack=False, fail=False, timeout=self.settings.publish_timeout)
                if message is None:
                    break
                held.append(message)
            letters = [_dead_letter(message) for message in held]
            for message in held:  # back in place, in order: listing changes nothing
                await message.nack(requeue=True)
        return letters

    async def replay(self, event_ids: Collection[str] | None = None) -> list[str]:
        wanted = None if event_ids is None else set(event_ids)
        replayed: list[str] = []
        async with self._admin_channel() as channel:
            queue = await self._dead_letter_queue(channel)
            kept: list[AbstractIncomingMessage] = []
            while wanted is None or wanted:
                message = await queue.get(no_ack=False, fail=False, timeout=self.settings.publish_timeout)
                if message is None:
                    break
                letter = _dead_letter(message)
                if wanted is not None and letter.event_id not in wanted:
                    kept.append(message)  # held unacknowledged, so get() moves on to the next one
                    continue
                headers = {
                    key: value
                    for key, value in (message.headers or {}).items()
                    if key not in (ATTEMPT_HEADER, ERROR_HEADER, FAILED_AT_HEADER, "x-death")
                }
                headers[REPLAYS_HEADER] = _header_int(message.headers, REPLAYS_HEADER, 0) + 1
                # Confirmed before the dead letter is removed: a failure in between leaves a copy, not none.
                await asyncio.wait_for(
                    channel.default_exchange.publish(_copy(message, headers), routing_key=self.topology.queue),
                    self.settings.publish_timeout,
                )
                await message.ack()
                replayed.append(letter.event_id)
                if wanted is not None:
                    wanted.discard(letter.event_id)
            for message in kept:
                await message.nack(requeue=True)
        return replayed


def _copy(
    message: AbstractIncomingMessage, headers: dict[str, Any], expiration: float | None = None
) -> aio_pika.Message:
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        type=message.type,
        app_id=message.app_id,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        expiration=expiration,
    )


def _dead_letter(message: AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers or {}
    event_id, event_type = message.message_id, message.type
    if not event_id or not event_type:
        try:
            event = Event.from_json(message.body)
            event_id, event_type = event_id or event.id, event_type or event.type
        except MalformedEvent:
            pass
    return DeadLetter(
        event_id=event_id or "(none)",
        type=event_type or "(unknown)",
        attempts=_header_int(headers, ATTEMPT_HEADER, 1),
        error=_header_text(headers, ERROR_HEADER),
        failed_at=_header_text(headers, FAILED_AT_HEADER),
        body=message.body,
    )


def _header_int(headers: Mapping[str, Any] | None, name: str, default: int) -> int:
    value = (headers or {}).get(name)
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _header_text(headers: Mapping[str, Any], name: str) -> str:
    value = headers.get(name)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


async def _close_quietly(connection: Any, sockets: TrackedSockets | None) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.close(), 5.0)
    if sockets is not None:  # what the close left open: a handshake or a reconnection it cut short
        sockets.close_all()
    # aio-pika marks a connection closed only when it had a transport to close. One that never connected
    # would otherwise have its __del__ schedule close() again, from whichever thread the collector runs
    # in: with no event loop there, that coroutine is never awaited (RuntimeWarning).
    closed = connection.closed()
    if not closed.done():
        closed.set_result(True)
