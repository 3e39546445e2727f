"""Request metrics: in-flight gauge, request counter and latency histogram, by target service, and the
last minute of each service for the dashboard (gateway.stats)."""
from __future__ import annotations

from typing import ClassVar

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
        self.duration = self.metrics.request_seconds.labels(context.service)
        self.recent = recent_stats(self.metrics).window(context.service)

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Reply:
        self.metrics.in_flight.inc()
        exchange.on_finish(self._record)
        return await call_next(exchange)

    def _record(self, exchange: Exchange) -> None:
        metrics = self.metrics
        metrics.in_flight.dec()
        status_class = f"{exchange.status // 100}xx" if exchange.status else "none"
        metrics.requests.labels(exchange.service, metrics.method_label(exchange.request.method), status_class).inc()
        elapsed = exchange.elapsed
        self.duration.observe(elapsed)
        self.recent.record(exchange.status, elapsed)
