"""TickTally: a tick's metric updates reach prometheus-client exactly as one-by-one updates would."""
from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.tally import TickTally
from gateway.telemetry import LATENCY_BUCKETS, GatewayMetrics

# Bounds themselves, values between them, zero, negative, past the last bound.
VALUES = (0.0, 0.0005, 0.001, 0.0010001, 0.0025, 0.007, 0.05, 0.3, 1.0, 2.4999, 10.0, 30.0, 31.0, 1e9, -0.5)


def _metrics() -> tuple[CollectorRegistry, Counter, Gauge, Histogram]:
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["service"], registry=registry)
    gauge = Gauge("g", "g", registry=registry)
    histogram = Histogram("h", "h", ["service"], buckets=LATENCY_BUCKETS, registry=registry)
    return registry, counter, gauge, histogram


def test_a_flushed_tally_exposes_what_one_by_one_updates_expose() -> None:
    direct, tallied = _metrics(), _metrics()
    _, counter, gauge, histogram = direct
    for value in VALUES:
        histogram.labels("a").observe(value)
        counter.labels("a").inc()
    counter.labels("b").inc(3)
    gauge.inc()
    gauge.inc()
    gauge.dec()

    tally = TickTally()
    _, counter, gauge, histogram = tallied
    for value in VALUES:
        tally.observe(histogram.labels("a"), value)
        tally.add(counter.labels("a"))
    tally.add(counter.labels("b"), 3)
    tally.add(gauge)
    tally.add(gauge)
    tally.add(gauge, -1)
    tally.flush()

    assert generate_latest(tallied[0]) == generate_latest(direct[0])
    assert tallied[0].get_sample_value("h_bucket", {"service": "a", "le": "0.001"}) == 4  # -0.5, 0, 0.0005, 0.001
    assert tallied[0].get_sample_value("h_bucket", {"service": "a", "le": "+Inf"}) == len(VALUES)
    assert tallied[0].get_sample_value("g") == 1


async def test_updates_are_applied_at_the_end_of_the_tick() -> None:
    registry, counter, gauge, histogram = _metrics()
    tally = TickTally()
    tally.add(counter.labels("a"))
    tally.add(gauge)
    tally.observe(histogram.labels("a"), 0.2)
    assert registry.get_sample_value("c_total", {"service": "a"}) == 0  # held within the tick
    await asyncio.sleep(0)
    assert registry.get_sample_value("c_total", {"service": "a"}) == 1
    assert registry.get_sample_value("g") == 1
    assert registry.get_sample_value("h_sum", {"service": "a"}) == 0.2
    # A later tick schedules its own flush, and a gauge that went up and down within it stays put.
    tally.add(gauge)
    tally.add(gauge, -1)
    tally.add(counter.labels("a"), 2)
    await asyncio.sleep(0)
    assert registry.get_sample_value("c_total", {"service": "a"}) == 3
    assert registry.get_sample_value("g") == 1


def test_without_a_running_loop_updates_apply_at_once() -> None:
    registry, counter, _gauge, histogram = _metrics()
    tally = TickTally()
    tally.add(counter.labels("a"))
    tally.observe(histogram.labels("a"), 0.004)
    assert registry.get_sample_value("c_total", {"service": "a"}) == 1
    assert registry.get_sample_value("h_bucket", {"service": "a", "le": "0.005"}) == 1


async def test_rendering_metrics_includes_the_current_tick() -> None:
    metrics = GatewayMetrics()
    metrics.tally.add(metrics.requests.labels("svc", "GET", "2xx"))
    metrics.tally.observe(metrics.request_seconds.labels("svc"), 0.003)
    body, _ = metrics.render()  # same tick: nothing has run the scheduled flush yet
    assert b'kadai_gateway_requests_total{method="GET",service="svc",status_class="2xx"} 1.0' in body
    assert b'kadai_gateway_request_duration_seconds_count{service="svc"} 1.0' in body
