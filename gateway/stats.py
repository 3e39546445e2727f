"""Recent-window request statistics per service and per instance (the last minute), for the live dashboard.

Prometheus keeps totals since start; a person watching the dashboard wants "now". Each service, and each
instance, has a ring of one-second buckets over the last 60 s holding its request count, 5xx count,
rate-limit rejections (services only) and a latency histogram, from which the rate, error rate and p99
are read. Recording is a few list updates (the metrics middleware calls it for every request's service,
the forwarder for the instance that answered); reading merges at most 60 buckets and happens about once a
second. The figures are those of this process.
"""
from __future__ import annotations

import math
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.telemetry import GatewayMetrics

WINDOW_SECONDS = 60

LATENCY_BOUNDS: tuple[float, ...] = tuple(0.0001 * 1.2**k for k in range(74))
"""Upper bounds (seconds) of the latency buckets: 0.1 ms to about 70 s, each 20% above the last, so a
percentile read off them is within 20% (interpolation does better); slower requests share one
overflow bucket."""
_BUCKETS = len(LATENCY_BOUNDS) + 1

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class WindowSummary:
    """What one service or instance did over the window."""

    seconds: float
    """Time the figures cover: the window, or less while the window is younger than that (a process or an
    instance that just started)."""
    requests: int
    errors: int
    """Requests answered with a 5xx status."""
    rejected: int
    """Requests refused by the rate limiter."""
    p99: float | None
    """99th percentile of the request duration in seconds; None without requests."""

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.seconds

    @property
    def error_rate(self) -> float:
        """Share of requests answered with a 5xx status, 0 to 1."""
        return self.errors / self.requests if self.requests else 0.0


class RecentWindow:
    """The one-second buckets of one service or one instance over the last WINDOW_SECONDS.

    About 38 KiB each (the histograms); an instance's lives on its gateway.routing.Instance, so it is
    carried over a reload with the instance and dropped with it."""

    __slots__ = ("_clock", "_counts", "_errors", "_latency", "_rejected", "_stamps", "_started", "_zeros")

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._started = clock()
        self._stamps = [-1] * WINDOW_SECONDS
        """The second (int(clock())) each slot holds; a slot holding an older second is stale."""
        self._counts = [0] * WINDOW_SECONDS
        self._errors = [0] * WINDOW_SECONDS
        self._rejected = [0] * WINDOW_SECONDS
        self._latency = [0] * (WINDOW_SECONDS * _BUCKETS)
        """One histogram per slot, side by side in one flat list."""
        self._zeros = (0,) * _BUCKETS

    def _recycle(self, slot: int, second: int) -> None:
        """Give the slot of the second WINDOW_SECONDS before `second` to `second`."""
        self._stamps[slot] = second
        self._counts[slot] = self._errors[slot] = self._rejected[slot] = 0
        base = slot * _BUCKETS
        self._latency[base : base + _BUCKETS] = self._zeros

    def record(self, status: int, seconds: float) -> None:
        """Count one answered request: its status and how long it took.

        Called for every request (once for its service, once for the instance that answered): no allocation
        beyond the ints Python makes for the counts, and one method call only on the first request of a second."""
        second = int(self._clock())
        slot = second % WINDOW_SECONDS
        if self._stamps[slot] != second:
            self._recycle(slot, second)
        self._counts[slot] += 1
        if status >= 500:
            self._errors[slot] += 1
        self._latency[slot * _BUCKETS + bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def add_rejections(self, count: int) -> None:
        """Count requests the rate limiter refused, in the current second."""
        if count <= 0:
            return
        second = int(self._clock())
        slot = second % WINDOW_SECONDS
        if self._stamps[slot] != second:
            self._recycle(slot, second)
        self._rejected[slot] += count

    def summary(self) -> WindowSummary:
        now = self._clock()
        second = int(now)
        oldest = second - WINDOW_SECONDS + 1
        live = [slot for slot, stamp in enumerate(self._stamps) if oldest <= stamp <= second]
        histogram = [0] * _BUCKETS
        latency = self._latency
        for slot in live:
            base = slot * _BUCKETS
            for index, count in enumerate(latency[base : base + _BUCKETS]):
                if count:
                    histogram[index] += count
        # The window holds the current second so far and the WINDOW_SECONDS - 1 before it.
        covered = min(now - self._started, WINDOW_SECONDS - 1 + (now - second))
        return WindowSummary(
            seconds=max(covered, 1.0),
            requests=sum(self._counts[slot] for slot in live),
            errors=sum(self._errors[slot] for slot in live),
            rejected=sum(self._rejected[slot] for slot in live),
            p99=percentile(histogram, 0.99),
        )


def percentile(histogram: list[int], fraction: float) -> float | None:
    """The `fraction` quantile of a histogram over LATENCY_BOUNDS (plus overflow), interpolated linearly
    inside its bucket; None for an empty histogram. The overflow bucket answers its lower bound."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            if index == len(LATENCY_BOUNDS):
                return LATENCY_BOUNDS[-1]
            lower = LATENCY_BOUNDS[index - 1] if index else 0.0
            upper = LATENCY_BOUNDS[index]
            return lower + (upper - lower) * (rank - seen) / count
        seen += count
    raise AssertionError("unreachable: the ranks add up to the total")


class RecentStats:
    """The windows of every service of one gateway, kept across registry reloads."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, RecentWindow] = {}

    def window(self, service: str) -> RecentWindow:
        """The window of a service, made on first use."""
        window = self._windows.get(service)
        if window is None:
            window = self._windows[service] = RecentWindow(self._clock)
        return window

    def summary(self, service: str) -> WindowSummary:
        return self.window(service).summary()


_BY_METRICS: weakref.WeakKeyDictionary[GatewayMetrics, RecentStats] = weakref.WeakKeyDictionary()


def recent_stats(metrics: GatewayMetrics) -> RecentStats:
    """The recent statistics of the gateway that owns `metrics`: they live and die with its metrics, so
    every gateway in a process (tests run several) has its own, like its Prometheus registry."""
    stats = _BY_METRICS.get(metrics)
    if stats is None:
        stats = _BY_METRICS[metrics] = RecentStats()
    return stats
