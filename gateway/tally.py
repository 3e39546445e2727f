"""The per-request metric updates of one event-loop tick, applied to prometheus-client in one go.

A proxied request on the full chain updated six prometheus-client values one by one (the in-flight gauge
up and down, the request counter, the rate-limit counter, two latency histograms): each a lock, a check
and a linear walk of the buckets, about 4 us a request together. Here a request adds to plain ints and
floats, and the tick's totals go to the same metric children once, at the end of the tick (call_soon).
Nothing changes in what Prometheus sees: every value is exact once the tick is over, /metrics flushes
first, and in multiprocess mode the totals go to the same mmap files as before.

Histogram totals are written to a child's own bucket and sum values (`_buckets`, `_sum`), the attributes
its observe() writes to; tests/unit/test_tally.py checks the exposition against observe() itself, so a
prometheus-client that changes them fails there rather than miscounting.
"""
from __future__ import annotations

import asyncio
from bisect import bisect_left
from typing import Any


class _HistogramTotal:
    """Observations of one histogram child in this tick: their sum and a count per bucket."""

    __slots__ = ("bounds", "total", "counts")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.total = 0.0
        self.counts = [0] * len(bounds)


class TickTally:
    """Counter and gauge increments and histogram observations, held until the end of the tick."""

    __slots__ = ("_counts", "_histograms", "_scheduled")

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}
        """Counter or gauge child -> amount to add (negative for a gauge going down)."""
        self._histograms: dict[Any, _HistogramTotal] = {}
        self._scheduled = False

    def add(self, child: Any, amount: float = 1) -> None:
        """child.inc(amount), at the end of the tick. A gauge child may take a negative amount."""
        counts = self._counts
        counts[child] = counts.get(child, 0) + amount
        if not self._scheduled:
            self._schedule()

    def observe(self, child: Any, value: float) -> None:
        """child.observe(value) of a histogram child, at the end of the tick."""
        totals = self._histograms.get(child)
        if totals is None:
            totals = self._histograms[child] = _HistogramTotal(child._upper_bounds)
        totals.total += value
        # observe() counts a value in the first bucket whose bound is >= value; the last bound is +Inf.
        totals.counts[bisect_left(totals.bounds, value)] += 1
        if not self._scheduled:
            self._schedule()

    def flush(self) -> None:
        """Apply everything held so far (at the end of a tick, and before /metrics is rendered)."""
        self._scheduled = False
        counts, histograms = self._counts, self._histograms
        if counts:
            self._counts = {}
            for child, amount in counts.items():
                if amount:
                    child.inc(amount)
        if histograms:
            self._histograms = {}
            for child, totals in histograms.items():
                child._sum.inc(totals.total)
                buckets = child._buckets
                for index, count in enumerate(totals.counts):
                    if count:
                        buckets[index].inc(count)

    def _schedule(self) -> None:
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no loop runs (a synchronous caller): nothing to wait for
            self.flush()
            return
        self._scheduled = True
