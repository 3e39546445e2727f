"""Everything one running service owns: settings, database, bus, outbox relay, verifier, client, metrics.

Built by services/kit/app.py; handlers reach it as call.runtime, event handlers as ctx.runtime.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

from gateway.auth import TokenVerifier
from services.events.bus import Bus, Subscription
from services.events.consumer import Consumer
from services.events.memory import MemoryBus
from services.events.outbox import OutboxRelay
from services.events.rabbit import RabbitBus
from services.kit.client import ServiceClient
from services.kit.config import EnvConfig
from services.kit.db import Database
from services.kit.metrics import ServiceMetrics
from services.kit.settings import ServiceSettings
from services.kit.tokens import TokenSigner

if TYPE_CHECKING:
    from services.kit.service import Service

C = TypeVar("C", bound=EnvConfig)


def make_bus(service: str, settings: ServiceSettings) -> Bus:
    """The bus AMQP_URL asks for: RabbitMQ, or the in-process bus for memory://."""
    if settings.memory_bus:
        return MemoryBus(service, settings.events_prefix, retry_delay=settings.retry_delay, prefetch=settings.prefetch)
    return RabbitBus(service, settings, catalogue_consumers() if settings.declare_consumers else None)


def catalogue_consumers() -> dict[str, frozenset[str]]:
    """Every catalogue service that consumes events, with the types it consumes."""
    from services.catalog import CATALOG, UnknownService, load

    consumers = {}
    for name in CATALOG:
        try:
            declared = load(name)
        except UnknownService:
            continue
        if declared.handlers:
            consumers[name] = frozenset(declared.handlers)
    return consumers


class Runtime:
    def __init__(self, service: Service, settings: ServiceSettings) -> None:
        self.service = service
        self.name = service.name
        self.settings = settings
        # The service's own settings are read now: a bad variable stops the start, naming it.
        self._configs: dict[type[EnvConfig], EnvConfig] = {
            model: model.from_env(settings.environ) for model in service.configs
        }
        self.metrics = ServiceMetrics(service.name)
        self.db = Database(settings.database_path(service.name), service.name, service.publishes)
        self.bus = make_bus(service.name, settings)
        self.relay = OutboxRelay(
            self.db, self.bus, self.metrics, poll_interval=settings.outbox_poll_interval, retention=settings.retention
        )
        self.consumer = (
            Consumer(service.handlers, self.db, self, self.metrics, settings.max_attempts) if service.handlers else None
        )
        self.verifier = TokenVerifier(settings.platform)
        self.signer = TokenSigner(settings)
        self.client = ServiceClient(service.name, settings, self.signer)
        self.started_at = time.time()
        self.draining = False
        """Set once shutdown starts: health answers 503 so the gateway stops routing here."""

    def config(self, model: type[C]) -> C:
        try:
            found = self._configs[model]
        except KeyError:
            raise LookupError(f"{model.__name__} is not among {self.name}'s configs") from None
        assert isinstance(found, model)
        return found

    @property
    def subscription(self) -> Subscription | None:
        if self.consumer is None:
            return None
        return Subscription(self.consumer.types, self.consumer.deliver)

    async def health(self) -> tuple[bool, dict[str, object]]:
        """(healthy, report). Unhealthy (503) only when the database fails or the service is draining: with
        the broker away the service still serves and keeps events in its outbox, so it reports degraded."""
        database_up = await self.db.ping()
        checks: dict[str, object] = {"database": {"status": "up" if database_up else "down"}}
        checks["bus"] = self.bus.health()
        outbox: dict[str, object] = {"status": "unknown"}
        if database_up:
            pending, oldest = await self.relay.refresh_gauges()
            outbox = {"status": "ok", "pending": pending, "oldestPendingSeconds": round(oldest, 3)}
            if pending and not self.bus.connected:
                outbox["status"] = "backlog"
        checks["outbox"] = outbox
        if self.draining:
            status = "draining"
        elif not database_up:
            status = "down"
        elif not self.bus.connected:
            status = "degraded"
        else:
            status = "ok"
        self.metrics.broker_connected.labels(self.name).set(1 if self.bus.connected else 0)
        report: dict[str, object] = {
            "service": self.name,
            "status": status,
            "uptimeSeconds": round(time.time() - self.started_at, 3),
            "checks": checks,
        }
        return status in ("ok", "degraded"), report
