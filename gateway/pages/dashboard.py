"""The live dashboard's data: one snapshot of every service, pushed to open pages as server-sent events.

A snapshot holds each service's state, its instances (health, breaker, requests in flight, and the last
minute of the requests each answered: rate, 5xx rate, p99 latency), the last minute of the service's
traffic from gateway.stats (the same figures plus rate-limit rejections), and the registry revision with
the result of the last reload. One task builds it every `interval` seconds while at least one page
listens and hands the same bytes to every stream; a stream that cannot keep up gets the newest snapshot,
never a backlog.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

import gateway
from gateway.envelope import utc_timestamp
from gateway.errors import ServiceUnavailable
from gateway.stats import WINDOW_SECONDS, RecentStats, WindowSummary, recent_stats

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("gateway.dashboard")

RETRY_MS = 2000
"""How long a browser waits before it reconnects a dropped event stream."""


class EventStream:
    """One open /dashboard/events response body.

    The gateway writes every Reply through gateway.proxy.write_reply, which streams an upstream body
    chunk by chunk and handles a client that goes away or a shutdown mid-stream. This class offers the
    part of aiohttp.ClientResponse that write_reply reads (content.readany/at_eof, content_length,
    reason, release, close), so an event stream takes that same path."""

    content_length = None
    reason = "OK"

    def __init__(self, first: bytes, on_close: Callable[[EventStream], None]) -> None:
        self._pending: list[bytes] = [first]
        self._ready = asyncio.Event()
        self._ready.set()
        self._ended = False
        self._on_close = on_close

    @property
    def content(self) -> EventStream:
        return self

    def push(self, chunk: bytes) -> None:
        """Queue a chunk; a second unread one is replaced, so a slow client skips to the newest."""
        if len(self._pending) > 1:
            self._pending[-1] = chunk
        else:
            self._pending.append(chunk)
        self._ready.set()

    def end(self) -> None:
        """Finish the stream once the queued chunks are written."""
        self._ended = True
        self._ready.set()

    async def readany(self) -> bytes:
        while not self._pending:
            if self._ended:
                return b""
            self._ready.clear()
            await self._ready.wait()
        return self._pending.pop(0)

    def at_eof(self) -> bool:
        return self._ended and not self._pending

    def release(self) -> None:
        self.close()

    def close(self) -> None:
        self._ended = True
        self._on_close(self)


def event(sequence: int, data: dict[str, Any], retry_ms: int | None = None) -> bytes:
    """One server-sent event carrying `data` as JSON (orjson writes no newlines, so one data line)."""
    head = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    return f"{head}id: {sequence}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


class Dashboard:
    INTERVAL = 1.0
    """Seconds between two snapshots pushed to the open pages."""
    MAX_STREAMS = 100
    """Open event streams allowed at once in this process; more get 503."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.interval = self.INTERVAL
        self.max_streams = self.MAX_STREAMS
        self.streams: set[EventStream] = set()
        self.closed = False
        self._sequence = 0
        self._rejected_seen: dict[str, float] = {}
        self._rejected_total: dict[str, float] = {}

    @property
    def stats(self) -> RecentStats:
        return recent_stats(self.gw.resources.metrics)

    async def run(self) -> None:
        """Collect rate-limit rejections and push a snapshot to the open pages, every `interval`."""
        while True:
            try:
                self.collect_rejections()
                if self.streams:
                    self.publish()
            except Exception:  # a bug here must not stop the dashboard for good
                log.exception("building the dashboard snapshot failed")
            await asyncio.sleep(self.interval)

    def collect_rejections(self) -> None:
        """Move the rate limiter's rejections since the last call into each service's window."""
        totals: dict[str, float] = {}
        for family in self.gw.resources.metrics.ratelimit_decisions.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("outcome") == "rejected":
                    service = sample.labels["service"]
                    totals[service] = totals.get(service, 0.0) + sample.value
        stats = self.stats
        for service, total in totals.items():
            new = total - self._rejected_seen.get(service, 0.0)
            if new > 0:
                stats.window(service).add_rejections(int(new))
            self._rejected_seen[service] = total
        self._rejected_total = totals

    def publish(self) -> None:
        self._sequence += 1
        chunk = event(self._sequence, self.snapshot())
        for stream in self.streams:
            stream.push(chunk)

    def open_stream(self) -> EventStream:
        """A new event stream that starts with a snapshot of right now."""
        if self.closed:
            raise ServiceUnavailable("The gateway is shutting down", headers={"Retry-After": "1"})
        if len(self.streams) >= self.max_streams:
            raise ServiceUnavailable(
                "Too many dashboards are open; this page falls back to polling",
                details={"maxStreams": self.max_streams},
                headers={"Retry-After": "5"},
            )
        self.collect_rejections()
        self._sequence += 1
        stream = EventStream(event(self._sequence, self.snapshot(), RETRY_MS), self.streams.discard)
        self.streams.add(stream)
        return stream

    def close(self) -> None:
        """End every open stream (at shutdown, so the drain does not wait for open pages)."""
        self.closed = True
        for stream in list(self.streams):
            stream.end()

    def snapshot(self) -> dict[str, Any]:
        gw = self.gw
        table = gw.table
        resources = gw.resources
        stats = self.stats
        last = resources.reload_status
        services = []
        for name, service in table.services.items():
            summary = stats.summary(name)
            services.append(
                {
                    "name": name,
                    "state": service.state,
                    "routes": sorted(route.prefix for route in table.routes.values() if route.service is service),
                    "instances": [
                        {**instance.describe(), **figures(instance.window.summary())} for instance in service.instances
                    ],
                    **figures(summary),
                    "rateLimited": summary.rejected,
                    "rateLimitedTotal": int(self._rejected_total.get(name, 0.0)),
                }
            )
        states = [entry["state"] for entry in services]
        if resources.draining:
            status = "draining"
        else:
            status = "ok" if all(state in ("up", "unchecked") for state in states) else "degraded"
        return {
            "generatedAt": utc_timestamp(),
            "windowSeconds": WINDOW_SECONDS,
            "gateway": {
                "version": gateway.__version__,
                "status": status,
                "uptimeSeconds": round(time.time() - resources.started_at, 1),
            },
            "config": {
                "source": table.config.source,
                "revision": table.revision,
                "digest": table.config.digest[:12],
                "lastReload": last.describe() if last else None,
            },
            "services": services,
        }


def figures(summary: WindowSummary) -> dict[str, Any]:
    """The traffic figures of a service or an instance, as the snapshot carries them."""
    return {
        "requests": summary.requests,
        "requestsPerSecond": round(summary.rate, 3),
        "errors": summary.errors,
        "errorRate": round(summary.error_rate, 4),
        "p99Ms": round(summary.p99 * 1000, 2) if summary.p99 is not None else None,
    }


# How the page writes the figures; static/dashboard.js writes them the same way.


def format_rate(per_second: float) -> str:
    return f"{per_second:.2f}/s"


def format_percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def format_milliseconds(milliseconds: float | None) -> str:
    return "—" if milliseconds is None else f"{milliseconds:.1f} ms"


def format_duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


FILTERS = {
    "rate": format_rate,
    "percent": format_percent,
    "milliseconds": format_milliseconds,
    "duration": format_duration,
}
"""Jinja filters of the dashboard template."""
