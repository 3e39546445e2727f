"""Prometheus metrics of a service (prometheus-client), one registry per service app.

The names and labels are fixed: the deployment's alerts and dashboards rely on them.
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

from gateway.telemetry import LATENCY_BUCKETS, GatewayMetrics

CONSUME_OUTCOMES = ("ok", "duplicate", "retried", "dead_lettered", "unhandled")


class ServiceMetrics:
    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        self.requests = Counter(
            "kadai_service_requests_total",
            "Requests answered, by service, method, route template and status class.",
            ["service", "method", "route", "status_class"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "kadai_service_request_duration_seconds",
            "Time from request received to response ready, by service and route template.",
            ["service", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.events_published = Counter(
            "kadai_service_events_published_total",
            "Events confirmed by the bus (sent from the outbox), by service and type.",
            ["service", "type"],
            registry=registry,
        )
        self.events_consumed = Counter(
            "kadai_service_events_consumed_total",
            "Event deliveries handled, by service, type and outcome "
            "(ok, duplicate, retried, dead_lettered, unhandled).",
            ["service", "type", "outcome"],
            registry=registry,
        )
        self.outbox_pending = Gauge(
            "kadai_service_outbox_pending",
            "Events committed but not yet confirmed by the bus.",
            ["service"],
            registry=registry,
        )
        self.outbox_oldest_seconds = Gauge(
            "kadai_service_outbox_oldest_pending_seconds",
            "Age of the oldest event waiting in the outbox (0 when none).",
            ["service"],
            registry=registry,
        )
        self.publish_failures = Counter(
            "kadai_service_outbox_publish_failures_total",
            "Outbox publishes that failed (no confirm in time, broker gone); they are retried.",
            ["service"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "kadai_service_dead_letters_total",
            "Events moved to the service's dead-letter queue, by service and type.",
            ["service", "type"],
            registry=registry,
        )
        self.broker_connected = Gauge(
            "kadai_service_broker_connected",
            "1 while the service is connected to its event bus, 0 otherwise.",
            ["service"],
            registry=registry,
        )
        self.handler_seconds = Histogram(
            "kadai_service_event_handler_duration_seconds",
            "Time an event handler took, its transaction included, by service and type.",
            ["service", "type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    method_label = staticmethod(GatewayMetrics.method_label)

    def consumed(self, event_type: str, outcome: str) -> None:
        self.events_consumed.labels(self.service, event_type, outcome).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
