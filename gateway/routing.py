"""The live route table: services, their instances, and each route's compiled middleware chain.

A table is immutable once built; a reload builds a new one and swaps it in, so a request keeps the
route it started with. Instances are carried over by service and URL, keeping their health and breaker
state across reloads.
"""
from __future__ import annotations

import enum
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from yarl import URL

from gateway.config.schema import Balancer, HealthCheck, RegistryConfig, RouteConfig
from gateway.envelope import utc_timestamp
from gateway.exchange import Exchange, Reply
from gateway.middleware.base import (
    BuildContext,
    Handler,
    Middleware,
    MiddlewareConfig,
    compile_chain,
)
from gateway.resources import Resources
from gateway.stats import RecentWindow

if TYPE_CHECKING:
    from gateway.middleware.breaker import InstanceBreaker

_BREAKER = "breaker"
"""NAME of the breaker middleware (gateway.middleware.breaker imports this module, not the reverse)."""


class InstanceState(enum.StrEnum):
    UNKNOWN = "unknown"
    """Not checked yet; routable."""
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    """Taken out of routing until it passes its health checks again."""


class Instance:
    __slots__ = (
        "url", "origin", "base_path", "state", "in_flight", "breaker", "passes", "fails", "checked_at", "last_error",
        "window",
    )

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = URL(url)
        self.origin: str | None = str(parsed.origin()) if parsed.scheme == "http" else None
        """scheme://host:port for the gateway's own connection pool; None for https (aiohttp's client)."""
        self.base_path = parsed.raw_path.rstrip("/")
        """The instance URL's path, put in front of every upstream path ("" for most)."""
        self.state = InstanceState.UNKNOWN
        self.in_flight = 0
        self.breaker: InstanceBreaker | None = None
        """Set by the breaker middleware of the service's routes; None when no route guards it."""
        self.passes = 0
        """Health polls passed in a row (reset by a failure)."""
        self.fails = 0
        """Health polls failed in a row (reset by a pass)."""
        self.checked_at: float | None = None
        self.last_error: str | None = None
        self.window = RecentWindow()
        """The last minute of the requests this instance answered, for the dashboard (the forwarder
        records them). It lives and dies with the instance, so a reload that drops the instance drops it."""

    @property
    def routable(self) -> bool:
        return self.state is not InstanceState.UNHEALTHY

    def describe(self) -> dict[str, object]:
        described: dict[str, object] = {"url": self.url, "state": self.state.value, "inFlight": self.in_flight}
        if self.checked_at is not None:
            described["lastCheck"] = utc_timestamp(self.checked_at)
            described["lastError"] = self.last_error
        if self.breaker is not None:
            described["breaker"] = self.breaker.describe()
        return described


Admit = Callable[[Instance], bool]


class Service:
    """A named service and its instances, balanced over the routable ones (round-robin or least requests)."""

    __slots__ = ("name", "instances", "health", "balancer", "_turn")

    def __init__(
        self, name: str, instances: tuple[Instance, ...], health: HealthCheck, balancer: Balancer = "round_robin"
    ) -> None:
        self.name = name
        self.instances = instances
        self.health = health
        self.balancer = balancer
        self._turn = itertools.count()

    def pick(self, admit: Admit | None = None, avoid: tuple[Instance, ...] | None = None) -> Instance | None:
        """A routable instance that `admit` accepts (the breaker's say), or None; one not in `avoid` (those
        a retried request already failed on) while there is such an instance."""
        if avoid:
            fresh = self._pick(lambda i: i not in avoid and (admit is None or admit(i)))
            if fresh is not None:
                return fresh
        return self._pick(admit)

    def _pick(self, admit: Admit | None) -> Instance | None:
        """A routable instance that `admit` accepts, or None.

        least_requests takes the one with the fewest requests in flight, ties in turn, so equal
        instances still share the load."""
        instances = self.instances
        count = len(instances)
        if count == 0:
            return None
        start = next(self._turn)
        if self.balancer == "least_requests":
            # The turn indexes the tied instances themselves: a rotating start over all instances would
            # hand a tie to whichever comes first after a busier one (2 of 3 picks for a tie of 2 out of 3).
            ties: list[Instance] = []
            for instance in instances:
                if instance.routable and (admit is None or admit(instance)):
                    if not ties or instance.in_flight < ties[0].in_flight:
                        ties = [instance]
                    elif instance.in_flight == ties[0].in_flight:
                        ties.append(instance)
            return ties[start % len(ties)] if ties else None
        if count == 1:
            instance = instances[0]
            return instance if instance.routable and (admit is None or admit(instance)) else None
        # The turn indexes the instances that can take requests, so they share the load evenly
        # (skipping to the next instance would hand it the skipped one's turns too).
        usable = [i for i in instances if i.routable and (admit is None or admit(i))]
        return usable[start % len(usable)] if usable else None

    @property
    def state(self) -> str:
        """no-instances, down (none routable), degraded (some unhealthy), up (all healthy),
        or unchecked (all routable, some not health-checked yet)."""
        if not self.instances:
            return "no-instances"
        states = [instance.state for instance in self.instances]
        if InstanceState.UNHEALTHY in states:
            return "down" if all(state is InstanceState.UNHEALTHY for state in states) else "degraded"
        return "unchecked" if InstanceState.UNKNOWN in states else "up"


@dataclass(frozen=True, slots=True)
class Route:
    config: RouteConfig
    service: Service
    chain: Handler
    timeout: aiohttp.ClientTimeout
    middleware: tuple[str, ...]

    @property
    def prefix(self) -> str:
        return self.config.prefix


class RouteTable:
    def __init__(
        self,
        config: RegistryConfig,
        revision: int,
        routes: Mapping[str, Route],
        services: Mapping[str, Service],
        edge_chain: Handler,
    ) -> None:
        self.config = config
        self.revision = revision
        self.routes = routes
        self.services = services
        self.edge_chain = edge_chain

    def match(self, path: str) -> Route | None:
        """Longest prefix on segment boundaries: /api/v1/users matches /api/v1/users/x, not /api/v1/usersx."""
        routes = self.routes
        candidate = path
        while candidate:
            route = routes.get(candidate)
            if route is not None:
                return route
            cut = candidate.rfind("/")
            if cut <= 0:
                return None
            candidate = candidate[:cut]
        return None


async def _edge_terminal(exchange: Exchange) -> Reply:
    assert exchange.terminal is not None
    return await exchange.terminal(exchange)


def build_table(
    config: RegistryConfig,
    resources: Resources,
    forward: Handler,
    revision: int,
    previous: RouteTable | None = None,
) -> RouteTable:
    """Build every route's chain once, reusing the Instance objects of the previous table."""
    # Keyed by service too: two services on one backend URL must not end up sharing one Instance (its
    # breaker, in-flight count and health verdict) after a reload.
    known: dict[tuple[str, str], Instance] = {}
    if previous is not None:
        for service in previous.services.values():
            known.update(((service.name, instance.url), instance) for instance in service.instances)
    services = {
        name: Service(
            name,
            tuple(known.pop((name, url), None) or Instance(url) for url in spec.instances),
            spec.health,
            spec.balancer,
        )
        for name, spec in config.services.items()
    }
    routes: dict[str, Route] = {}
    for route_config in config.routes:
        context = BuildContext(route_config.service, route_config.prefix, resources)
        middleware = _instantiate(config, route_config.middleware, context)
        timeouts = route_config.options.timeouts
        routes[route_config.prefix] = Route(
            config=route_config,
            service=services[route_config.service],
            chain=compile_chain(middleware, forward),
            timeout=aiohttp.ClientTimeout(
                total=timeouts.total or None, sock_connect=timeouts.connect, sock_read=timeouts.read
            ),
            middleware=tuple(type(m).NAME for m in middleware),
        )
    edge_context = BuildContext("gateway", "", resources)
    edge = compile_chain(_instantiate(config, config.edge_middleware, edge_context), _edge_terminal)
    # Breakers nobody consults any more drop their state series (an open one would keep its alert firing),
    # once the table is sure to replace the previous one: a plugin's constructor may still fail above.
    for instance in known.values():  # removed; requests still running on it keep the retired breaker
        if instance.breaker is not None:
            instance.breaker.retire()
    guarded = {route.service.name for route in routes.values() if _BREAKER in route.middleware}
    for name, service in services.items():
        for instance in service.instances if name not in guarded else ():
            if instance.breaker is not None:
                instance.breaker.retire()
                instance.breaker = None  # switched back on later, it starts afresh
    return RouteTable(config, revision, routes, services, edge)


def _instantiate(
    config: RegistryConfig, enabled: Mapping[str, MiddlewareConfig], context: BuildContext
) -> list[Middleware]:
    classes = config.middleware_classes
    ordered = sorted(enabled, key=lambda name: (-classes[name].PRIORITY, name))
    return [classes[name](enabled[name], context) for name in ordered]
