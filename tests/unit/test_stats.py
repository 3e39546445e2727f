"""Unit tests of gateway.stats: the one-minute window per service behind the dashboard's rates and p99."""
from __future__ import annotations

import itertools
import math
import random

import pytest

from gateway.stats import (
    LATENCY_BOUNDS,
    WINDOW_SECONDS,
    RecentStats,
    RecentWindow,
    percentile,
    recent_stats,
)
from gateway.telemetry import GatewayMetrics


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def window_at(now: float = 1000.0) -> tuple[RecentWindow, FakeClock]:
    clock = FakeClock(now)
    return RecentWindow(clock), clock


def test_an_empty_window_has_no_p99_and_no_rate() -> None:
    window, _ = window_at()

    summary = window.summary()

    assert (summary.requests, summary.errors, summary.rejected, summary.p99) == (0, 0, 0, None)
    assert summary.rate == 0.0
    assert summary.error_rate == 0.0


def test_counts_requests_errors_and_rejections() -> None:
    window, clock = window_at()
    for status in (200, 201, 404, 499, 500, 502, 503):
        window.record(status, 0.01)
    clock.now += 1.5
    window.add_rejections(3)
    window.add_rejections(0)

    summary = window.summary()

    assert summary.requests == 7
    assert summary.errors == 3  # 5xx only: a 404 or a client that hung up (499) is not the service's failure
    assert summary.error_rate == pytest.approx(3 / 7)
    assert summary.rejected == 3


@pytest.mark.parametrize(
    ("age", "seconds"),
    [(0.2, 1.0), (10.0, 10.0), (59.5, 59.5), (600.5, WINDOW_SECONDS - 1 + 0.5)],
    ids=["younger-than-a-second", "ten-seconds-old", "almost-a-minute", "long-running"],
)
def test_the_rate_divides_by_the_time_the_window_covers(age: float, seconds: float) -> None:
    window, clock = window_at(now=1000.0)
    clock.now = 1000.0 + age  # long-running: 59 whole seconds and the current one, half gone
    for _ in range(30):
        window.record(200, 0.001)

    summary = window.summary()

    assert summary.seconds == pytest.approx(seconds)
    assert summary.rate == pytest.approx(30 / seconds)


def test_requests_leave_the_window_after_a_minute() -> None:
    window, clock = window_at(now=1000.0)
    window.record(500, 2.0)
    clock.now = 1030.0
    window.record(200, 0.001)
    clock.now = 1000.0 + WINDOW_SECONDS - 0.01  # the first second is still inside

    assert window.summary().requests == 2

    clock.now = 1000.0 + WINDOW_SECONDS  # now it is not
    summary = window.summary()
    assert (summary.requests, summary.errors) == (1, 0)
    assert summary.p99 is not None and summary.p99 < 0.002


def test_a_recycled_slot_starts_empty() -> None:
    window, clock = window_at(now=1000.0)
    for _ in range(5):
        window.record(503, 1.0)
    window.add_rejections(4)
    clock.now = 1000.0 + WINDOW_SECONDS  # same slot, one minute later
    window.record(200, 0.001)

    summary = window.summary()

    assert (summary.requests, summary.errors, summary.rejected) == (1, 0, 0)
    assert summary.p99 is not None and summary.p99 < 0.002


def test_an_idle_gap_longer_than_the_window_forgets_everything() -> None:
    window, clock = window_at(now=1000.0)
    window.record(200, 0.01)
    clock.now = 5000.0

    assert window.summary().requests == 0


def _exact_percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(fraction * len(ordered)) - 1]


@pytest.mark.parametrize(
    "latencies",
    [
        [0.002] * 1000,
        [random.Random(1).uniform(0.001, 0.05) for _ in range(5000)],
        [random.Random(2).lognormvariate(-5, 1.2) for _ in range(5000)],
        [0.001] * 990 + [1.5] * 10,
        [0.0005] * 980 + [0.25] * 20,
    ],
    ids=["constant", "uniform", "lognormal", "slow-tail-1pct", "slow-tail-2pct"],
)
def test_p99_is_within_the_bucket_resolution(latencies: list[float]) -> None:
    window, _ = window_at()
    for seconds in latencies:
        window.record(200, seconds)

    p99 = window.summary().p99

    exact = _exact_percentile(latencies, 0.99)
    assert p99 is not None
    assert p99 == pytest.approx(exact, rel=0.2)  # buckets are 20% wide


def test_p99_merges_the_seconds_of_the_window() -> None:
    window, clock = window_at(now=1000.0)
    for second in range(50):
        clock.now = 1000.0 + second
        window.record(200, 0.3 if second == 7 else 0.001)

    p99 = window.summary().p99

    # 50 requests: the 99th percentile is the slowest one, recorded 43 seconds ago.
    assert p99 == pytest.approx(0.3, rel=0.2)


@pytest.mark.parametrize(
    ("histogram", "fraction", "expected"),
    [
        ([0] * (len(LATENCY_BOUNDS) + 1), 0.99, None),
        ([1] + [0] * len(LATENCY_BOUNDS), 0.99, LATENCY_BOUNDS[0]),
        ([0] * len(LATENCY_BOUNDS) + [7], 0.5, LATENCY_BOUNDS[-1]),
        ([0, 4] + [0] * (len(LATENCY_BOUNDS) - 1), 0.5, (LATENCY_BOUNDS[0] + LATENCY_BOUNDS[1]) / 2),
    ],
    ids=["empty", "first-bucket", "overflow-answers-the-last-bound", "interpolated"],
)
def test_percentile(histogram: list[int], fraction: float, expected: float | None) -> None:
    result = percentile(histogram, fraction)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_latency_bounds_grow_by_a_fifth_from_a_tenth_of_a_millisecond_past_a_minute() -> None:
    assert LATENCY_BOUNDS[0] == pytest.approx(0.0001)
    assert LATENCY_BOUNDS[-1] > 60.0
    ratios = {round(upper / lower, 9) for lower, upper in itertools.pairwise(LATENCY_BOUNDS)}
    assert ratios == {1.2}


def test_recent_stats_keeps_one_window_per_service() -> None:
    stats = RecentStats(FakeClock())

    users = stats.window("user-service")
    users.record(200, 0.01)

    assert stats.window("user-service") is users
    assert stats.summary("user-service").requests == 1
    assert stats.summary("order-service").requests == 0


def test_each_gateway_metrics_object_has_its_own_recent_stats() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()

    recent_stats(first).window("user-service").record(200, 0.01)

    assert recent_stats(first) is recent_stats(first)
    assert recent_stats(first).summary("user-service").requests == 1
    assert recent_stats(second).summary("user-service").requests == 0
