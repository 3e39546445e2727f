"""Helpers of the service tests: a served service app, a probe on the event exchange, a TCP relay that
can cut connections, tokens, the broker's own view of connections and queues, and a check of a service's
OpenAPI document."""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aiohttp import web
from openapi_spec_validator import validate
from yarl import URL

from services.events.bus import Topology
from services.events.event import Event
from services.kit import Service
from services.kit.keys import RUNTIME_KEY
from services.kit.openapi import document
from services.kit.runtime import Runtime
from services.kit.service import METHODS
from services.kit.settings import ServiceSettings
from services.kit.tokens import TokenSigner
from tests import backends
from tests.process.helpers import wait_until

_PARAMETER = re.compile(r"\{[^}]*\}")


@dataclass
class Served:
    """A service app served in-process on a loopback port."""

    url: str
    runner: web.AppRunner
    settings: ServiceSettings
    stopped: bool = False

    @property
    def runtime(self) -> Runtime:
        return self.runner.app[RUNTIME_KEY]

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()

    def metric(self, name: str, **labels: str) -> float:
        """A sample of the service's own metrics registry (0 when absent)."""
        value = self.runtime.metrics.registry.get_sample_value(name, {"service": self.runtime.name, **labels})
        return value or 0.0


def token(settings: ServiceSettings, sub: str, role: str = "customer", email: str | None = None, ttl: int = 300) -> str:
    claims: dict[str, object] = {"sub": sub, "role": role}
    if email:
        claims["email"] = email
    return TokenSigner(settings).sign(claims, ttl).token


def bearer(settings: ServiceSettings, sub: str = "user_1", role: str = "customer", **extra: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(settings, sub, role, **extra)}"}


@dataclass
class EventProbe:
    """A test's own queue on the event exchange: counts and keeps what services publish."""

    connection: AbstractConnection
    channel: AbstractChannel
    prefix: str
    queue: AbstractQueue | None = None
    received: list[AbstractIncomingMessage] = field(default_factory=list)

    async def bind(self, pattern: str = "#") -> EventProbe:
        exchange = await self.channel.declare_exchange(
            Topology(self.prefix, "-").exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        if self.queue is None:
            self.queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
            await self.queue.consume(self._keep, no_ack=True)
        await self.queue.bind(exchange, routing_key=pattern)
        return self

    async def _keep(self, message: AbstractIncomingMessage) -> None:
        self.received.append(message)

    @property
    def events(self) -> list[Event]:
        return [Event.from_json(message.body) for message in self.received]

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Event]:
        await wait_until(lambda: len(self.received) >= count, timeout, f"{count} event(s) on the probe")
        return self.events

    async def publish(self, event: Event, *, routing_key: str | None = None) -> None:
        """Publish an event the way a service's relay does."""
        exchange = await self.channel.get_exchange(Topology(self.prefix, "-").exchange)
        await exchange.publish(
            aio_pika.Message(
                event.to_json(), message_id=event.id, type=event.type, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            ),
            routing_key=routing_key or event.type,
        )

    async def publish_raw(self, body: bytes, routing_key: str) -> None:
        exchange = await self.channel.get_exchange(Topology(self.prefix, "-").exchange)
        await exchange.publish(aio_pika.Message(body), routing_key=routing_key)

    async def ready_messages(self, queue: str) -> int:
        """Messages waiting (not delivered to a consumer) in a queue, as the broker counts them."""
        declared = await self.channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)

    async def consumers(self, queue: str) -> int:
        """Consumers of a queue as the broker counts them; 0 when the queue does not exist (yet)."""
        channel = await self.connection.channel()  # a failed passive declare closes its channel
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return 0
        finally:
            if not channel.is_closed:
                await channel.close()
        return int(declared.declaration_result.consumer_count or 0)


async def delete_topology(url: str, topologies: set[Topology]) -> None:
    """Delete the exchanges and queues the services of a test declared on the broker."""
    if not topologies or not backends.amqp_answers(url, timeout=1.0):
        return
    connection = await aio_pika.connect(url, timeout=5)
    try:
        names = [("queue", name) for topology in topologies for name in topology.queues]
        names += [("exchange", name) for name in {topology.exchange for topology in topologies}]
        for kind, name in names:
            channel = await connection.channel()  # a failed delete closes its channel
            with contextlib.suppress(Exception):
                await (channel.queue_delete(name) if kind == "queue" else channel.exchange_delete(name))
            if not channel.is_closed:
                await channel.close()
    finally:
        await connection.close()


class TcpRelay:
    """A TCP forwarder between a service and the broker that can cut every connection or stop listening:
    what a network failure or a broker going away looks like from the service's side."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0

    async def start(self, port: int = 0) -> TcpRelay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port or self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, base: str) -> str:
        """base (an amqp:// URL) pointed at the relay."""
        return str(URL(base).with_host("127.0.0.1").with_port(self.port))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._pipes.update((writer, upstream_writer))
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()
            self._pipes.discard(sink)

    def cut(self) -> None:
        """Close every relayed connection, both sides, at once (as a peer that goes away does)."""
        for writer in list(self._pipes):
            writer.close()
        self._pipes.clear()

    async def stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def close(self) -> None:
        await self.stop_listening()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))


def rabbitmqctl() -> str:
    """Path of rabbitmqctl (the broker's own admin tool); fails under CI and skips loudly elsewhere without it."""
    path = shutil.which("rabbitmqctl")
    backends.require("rabbitmqctl (to close a connection from the broker side)", path is not None, backends.amqp_url())
    assert path is not None
    return path


async def close_from_broker(connection_name: str) -> int:
    """Have the broker close the connections named connection_name (CONNECTION_FORCED, as at a broker
    restart); returns how many. Needs rabbitmqctl that reaches the broker's node."""
    tool = rabbitmqctl()

    def run() -> int | None:
        listed = subprocess.run(
            [tool, "list_connections", "pid", "client_properties", "-q", "--no-table-headers"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if listed.returncode != 0:
            return None
        closed = 0
        for line in listed.stdout.splitlines():
            pid, _, properties = line.partition("\t")
            if f'{{"connection_name",{json.dumps(connection_name)}}}' in properties:
                subprocess.run(
                    [tool, "close_connection", pid, "closed by a test"], capture_output=True, timeout=30, check=True
                )
                closed += 1
        return closed

    closed = await asyncio.to_thread(run)
    backends.require("the broker's node through rabbitmqctl", closed is not None, backends.amqp_url())
    assert closed is not None
    return closed


def event_body(event_type: str, data: dict[str, Any]) -> Event:
    """An event as another service would publish it."""
    return Event.create(event_type, "test-service", data)


def check_openapi(service: Service) -> None:
    """The document the kit serves for the service is valid OpenAPI 3.1 with every schema inlined, holds
    exactly its routes (the module's OPENAPI_PATHS adds no path of its own; a path parameter may be named
    otherwise than in the route), and every operation names its handler and asks for the bearer token."""
    spec = document(service)
    validate(spec)
    assert "$ref" not in json.dumps(spec) and "$defs" not in json.dumps(spec)
    documented = {
        (method, _PARAMETER.sub("{}", path)): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method.upper() in METHODS
    }
    routed = {(route.method.lower(), _PARAMETER.sub("{}", route.path)): route for route in service.routes}
    assert set(documented) == set(routed)
    for key, route in routed.items():
        operation = documented[key]
        assert (operation["operationId"], operation["security"]) == (route.handler.__name__, [{"bearerAuth": []}])
