"""Prometheus metrics of the gateway (prometheus-client).

With several workers, PROMETHEUS_MULTIPROC_DIR is set before any worker starts and /metrics aggregates
every worker's values (prometheus-client's multiprocess mode).
"""
from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from gateway.tally import TickTally

# The *_created series double the exposition size and no dashboard of ours reads them.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def multiprocess_mode() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class GatewayMetrics:
    """Every metric the gateway core exports, registered in one registry per gateway."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tally = TickTally()
        """Where the hot path's per-request updates wait for the end of their tick (gateway.tally)."""
        if not multiprocess_mode():
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        registry = self.registry
        self.requests = Counter(
            "kadai_gateway_requests_total",
            "Requests answered, by target service, method and status class.",
            ["service", "method", "status_class"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "kadai_gateway_request_duration_seconds",
            "Time from request received to response fully written, by target service.",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "kadai_gateway_upstream_duration_seconds",
            "Time from sending a request to an instance to its response headers, by service.",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "kadai_gateway_upstream_errors_total",
            "Upstream exchanges that failed, by service and kind (connect, timeout, reset, invalid, body_too_large).",
            ["service", "kind"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "kadai_gateway_requests_in_flight",
            "Requests being handled right now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.config_reloads = Counter(
            "kadai_gateway_config_reloads_total",
            "Registry reloads, by result (ok, failed).",
            ["result"],
            registry=registry,
        )
        self.config_revision = Gauge(
            "kadai_gateway_config_revision",
            "Revision of the registry in use (1 at start, +1 per applied reload).",
            registry=registry,
            multiprocess_mode="livemax",
        )

        # The resilience chain (issue #3): one block per middleware, so dashboards can rely on the names.
        self.auth_rejections = Counter(
            "kadai_gateway_auth_rejections_total",
            "Requests refused by the JWT check, by service and reason (missing, malformed, expired, signature, claims, role).",
            ["service", "reason"],
            registry=registry,
        )
        self.ratelimit_decisions = Counter(
            "kadai_gateway_ratelimit_decisions_total",
            "Rate-limit decisions by service, outcome (allowed, rejected, failed_open, failed_closed) and the tier that "
            "decided (the tripped tier for a rejection, '-' otherwise).",
            ["service", "outcome", "tier"],
            registry=registry,
        )
        self.ratelimit_backend_errors = Counter(
            "kadai_gateway_ratelimit_backend_errors_total",
            "Limiter calls to Redis that failed, by kind (timeout, connection, error).",
            ["kind"],
            registry=registry,
        )
        self.retries = Counter(
            "kadai_gateway_retries_total",
            "Upstream attempts repeated by the retry policy, by service and cause (connect, timeout, status).",
            ["service", "cause"],
            registry=registry,
        )
        self.retry_budget_exhausted = Counter(
            "kadai_gateway_retry_budget_exhausted_total",
            "Retries not made because the service's retry budget was spent, by service.",
            ["service"],
            registry=registry,
        )
        self.breaker_state = Gauge(
            "kadai_gateway_breaker_state",
            "Circuit breaker of each instance: 0 closed, 1 half-open, 2 open.",
            ["service", "instance"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.breaker_transitions = Counter(
            "kadai_gateway_breaker_transitions_total",
            "Circuit breaker state changes, by service, instance and new state.",
            ["service", "instance", "state"],
            registry=registry,
        )
        self.breaker_rejections = Counter(
            "kadai_gateway_breaker_rejections_total",
            "Requests failed fast because the breakers of every candidate instance were open, by service.",
            ["service"],
            registry=registry,
        )
        self.instance_healthy = Gauge(
            "kadai_gateway_instance_healthy",
            "Health of each instance as the poller sees it: 1 routable, 0 taken out of routing.",
            ["service", "instance"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.health_checks = Counter(
            "kadai_gateway_health_checks_total",
            "Health polls of instances, by service, instance and result (ok, failed).",
            ["service", "instance", "result"],
            registry=registry,
        )
        self.cache_lookups = Counter(
            "kadai_gateway_cache_lookups_total",
            "Response cache lookups, by service and result (hit, miss, stale, bypass, error).",
            ["service", "result"],
            registry=registry,
        )

    @staticmethod
    def method_label(method: str) -> str:
        """Client-chosen method names are unbounded; keep the label set small."""
        return method if method in KNOWN_METHODS else "OTHER"

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        self.tally.flush()
        if multiprocess_mode():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
