"""Request metrics: in-flight gauge, request counter and latency histogram, by target service, and the
last minute of each service for the dashboard (gateway.stats)."""
from __future__ import annotations

from typing import Any, ClassVar

from gateway.exchange import Exchange, Reply
from gateway.middleware.base import BuildContext, Handler, Middleware, MiddlewareConfig
from gateway.stats import recent_stats
from gateway.telemetry import GatewayMetrics

NAME = "metrics"
PRIORITY = 9_500


class MetricsConfig(MiddlewareConfig):
    """No settings yet: the metric names and labels are fixed so dashboards can rely on them."""


class MetricsMiddleware(Middleware):
    NAME: ClassVar[str] = NAME
    PRIORITY: ClassVar[int] = PRIORITY
    Config: ClassVar[type[MiddlewareConfig]] = MetricsConfig
    ENABLED_BY_DEFAULT: ClassVar[bool] = True
    EDGE: ClassVar[bool] = True

    def __init__(self, config: MiddlewareConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        self.metrics: GatewayMetrics = context.resources.metrics
        self.tally = self.metrics.tally
        self.in_flight = self.metrics.in_flight
        self.duration = self.metrics.request_seconds.labels(context.service)
        self.recent = recent_stats(self.metrics).window(context.service)
        self._counters: dict[tuple[str, int], Any] = {}
        """Counter children by (method, status): labels() locks and hashes its arguments on every call."""

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Reply:
        self.tally.add(self.in_flight)
        exchange.on_finish(self._record)
        return await call_next(exchange)

    def _record(self, exchange: Exchange) -> None:
        tally = self.tally
        tally.add(self.in_flight, -1)
        key = (exchange.request.method, exchange.status // 100)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counter(exchange, key)
        tally.add(counter)
        elapsed = exchange.elapsed
        tally.observe(self.duration, elapsed)
        self.recent.record(exchange.status, elapsed)

    def _counter(self, exchange: Exchange, key: tuple[str, int]) -> Any:
        metrics = self.metrics
        method, status_class = metrics.method_label(key[0]), f"{key[1]}xx" if key[1] else "none"
        counter = metrics.requests.labels(exchange.service, method, status_class)
        if len(self._counters) < 64 and method != "OTHER":  # client-chosen methods must not grow the cache
            self._counters[key] = counter
        return counter
