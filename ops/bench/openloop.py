"""Open-loop HTTP/1.1 load at a fixed rate, wrk2-style, for latency without coordinated omission.

Request i is due at start + i / rate whatever happened to the earlier ones. A due request goes out on an
idle keep-alive connection of the pool, or waits for one; its latency runs from the time it was due to
the end of its response, so a stalled server is charged for every request it held up. Prints one JSON
object: latency percentiles, the achieved rate, errors, and the client's own send lag and CPU time.

    python ops/bench/openloop.py http://127.0.0.1:4000/api/v1/users/profile --rate 1000 --duration 10
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import resource
import selectors
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence (the value at or below which pct % of them lie)."""
    if not ordered:
        return math.nan
    # round(): 99.9 / 100 * 1000 is 999.0000000000001 in floating point, whose ceiling would be 1000.
    return ordered[max(0, math.ceil(round(pct / 100 * len(ordered), 9)) - 1)]


def summary_ms(values: Sequence[float]) -> dict[str, float]:
    """Percentiles and max of latencies in seconds, in milliseconds; keys p50, p90, p99, p99.9, max."""
    ordered = sorted(values)
    result = {f"p{pct:g}": percentile(ordered, pct) * 1e3 for pct in PERCENTILES}
    result["max"] = ordered[-1] * 1e3 if ordered else math.nan
    return result


class ResponseReader:
    """Incremental HTTP/1.1 response framing: Content-Length, chunked, or a bodiless status."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> tuple[int, bool] | None:
        """Add bytes; (status, keep_alive) once a whole response is in (its bytes consumed), else None."""
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        start = end + 4
        if status in (204, 304) or 100 <= status < 200:
            size = 0
        elif "chunked" in headers.get("transfer-encoding", ""):
            size = _chunked_size(self.buffer, start)
            if size is None:
                return None
        else:
            size = int(headers.get("content-length", "0"))
            if len(self.buffer) < start + size:
                return None
        del self.buffer[:start + size]
        keep_alive = headers.get("connection") != "close" and head[0].startswith("HTTP/1.1")
        return status, keep_alive


def _chunked_size(buffer: bytearray, start: int) -> int | None:
    """Bytes of a complete chunked body (trailers included) from start, or None while incomplete."""
    pos = start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        length = int(bytes(buffer[pos:line_end]).split(b";", 1)[0], 16)
        if length == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)  # the empty line after any trailers
            return None if trailer_end < 0 else trailer_end + 4 - start
        pos = line_end + 2 + length + 2
        if pos > len(buffer):
            return None


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    send_lags: list[float] = field(default_factory=list)
    status_errors: int = 0
    connection_errors: int = 0
    last_done: float = 0.0


class Connection(asyncio.Protocol):
    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.reader = ResponseReader()
        self.due: float | None = None  # the request in flight, by its due time

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.client.open.add(self)
        self.client.idle.append(self)
        self.client.dispatch()

    def send(self, due: float) -> None:
        assert self.transport is not None
        self.due = due
        self.client.record_send(due)
        self.transport.write(self.client.request)

    def data_received(self, data: bytes) -> None:
        try:
            done = self.reader.feed(data)
        except (ValueError, IndexError):
            done = (0, False)  # unparseable: counted as an error, the connection replaced
        if done is None or self.due is None:
            return
        status, keep_alive = done
        due, self.due = self.due, None
        self.client.finish(due, status)
        if keep_alive:
            self.client.idle.append(self)
            self.client.dispatch()
        elif self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.open.discard(self)
        if self.client.closing:  # our own close at the end: what is unanswered by then is a timeout
            return
        if self.due is not None:
            self.client.finish(self.due, None)
        if self in self.client.idle:
            self.client.idle.remove(self)
        self.client.connect_later()


class Client:
    """The schedule, the pool and the measurements of one run."""

    def __init__(self, url: str, headers: Sequence[str], rate: float, duration: float, warmup: float,
                 connections: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", *headers]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.rate, self.connections = rate, connections
        self.warmup_total = round(warmup * rate)
        self.total = self.warmup_total + round(duration * rate)
        self.loop = asyncio.get_running_loop()
        self.idle: collections.deque[Connection] = collections.deque()
        self.open: set[Connection] = set()
        self.pending: collections.deque[float] = collections.deque()
        self.stats = Stats()
        self.start = 0.0
        self.measured_from = 0.0
        self.scheduled = 0
        self.finished = 0
        self.all_done = asyncio.Event()
        self.closing = False
        self.connecting: set[asyncio.Task[None]] = set()

    def connect_later(self, delay: float = 0.0) -> None:
        if self.finished < self.total and not self.closing:
            self.loop.call_later(delay, self._start_connect)

    def _start_connect(self) -> None:
        if not self.closing:
            task = self.loop.create_task(self._connect())
            self.connecting.add(task)  # held until done: the loop keeps only a weak reference
            task.add_done_callback(self.connecting.discard)

    async def _connect(self) -> None:
        try:
            await self.loop.create_connection(lambda: Connection(self), self.host, self.port)
        except OSError:
            self.stats.connection_errors += 1
            self.connect_later(0.1)

    def tick(self) -> None:
        """Queue every request due by now, hand them out, and wake up for the next one."""
        now = self.loop.time()
        while self.scheduled < self.total:
            due = self.start + self.scheduled / self.rate
            if due > now:
                self.loop.call_at(due, self.tick)
                break
            self.pending.append(due)
            self.scheduled += 1
        self.dispatch()

    def dispatch(self) -> None:
        while self.pending and self.idle:
            self.idle.popleft().send(self.pending.popleft())

    def record_send(self, due: float) -> None:
        if due >= self.measured_from:
            self.stats.send_lags.append(self.loop.time() - due)

    def finish(self, due: float, status: int | None) -> None:
        now = self.loop.time()
        if due >= self.measured_from:
            if status is None:
                self.stats.connection_errors += 1
            elif not 200 <= status < 400:
                self.stats.status_errors += 1
            else:
                self.stats.latencies.append(now - due)
            self.stats.last_done = now
        self.finished += 1
        if self.finished >= self.total:
            self.all_done.set()

    async def run(self, drain_timeout: float) -> dict[str, object]:
        for _ in range(self.connections):
            await self._connect()
        cpu_before = _cpu_seconds()
        self.start = self.loop.time() + 0.01
        self.measured_from = self.start + self.warmup_total / self.rate
        self.loop.call_at(self.start, self.tick)
        duration = (self.total - self.warmup_total) / self.rate
        timed_out = 0
        try:
            async with asyncio.timeout(duration + self.warmup_total / self.rate + drain_timeout + 0.01):
                await self.all_done.wait()
        except TimeoutError:
            timed_out = self.total - self.finished  # never answered (or never sent) within drain_timeout
        cpu = _cpu_seconds() - cpu_before
        self.closing = True
        for task in list(self.connecting):
            task.cancel()
        for conn in list(self.open):
            if conn.transport is not None:
                conn.transport.close()
        measured = self.total - self.warmup_total
        stats = self.stats
        elapsed = max(stats.last_done - self.measured_from, duration)
        return {
            "rate": self.rate, "duration_s": duration, "connections": self.connections,
            "requests": measured, "completed": len(stats.latencies),
            "achieved_rps": len(stats.latencies) / elapsed if elapsed > 0 else 0.0,
            "errors": {"status": stats.status_errors, "connection": stats.connection_errors, "timeout": timed_out},
            "latency_ms": summary_ms(stats.latencies),
            "send_lag_ms": summary_ms(stats.send_lags),
            "client_cpu_us_per_req": cpu * 1e6 / max(self.finished, 1),
            "client_core_busy": cpu / (duration + self.warmup_total / self.rate),
        }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _main(args: argparse.Namespace) -> dict[str, object]:
    client = Client(args.url, args.header, args.rate, args.duration, args.warmup, args.connections)
    result = await client.run(args.drain_timeout)
    if args.samples:
        result["samples_ms"] = [round(value * 1e3, 4) for value in client.stats.latencies]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="http:// URL to GET")
    parser.add_argument("--rate", type=float, default=1000, help="requests per second (default 1000)")
    parser.add_argument("--duration", type=float, default=10, help="measured seconds (default 10)")
    parser.add_argument("--warmup", type=float, default=1, help="seconds at the rate before measuring (default 1)")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections (default 32)")
    parser.add_argument("-H", "--header", action="append", default=[], help="extra header 'Name: value'")
    parser.add_argument("--drain-timeout", type=float, default=5, help="wait for late answers (default 5 s)")
    parser.add_argument("--samples", action="store_true", help="add every latency (ms) to the JSON")
    args = parser.parse_args()
    # The select() selector sleeps to the microsecond; epoll's rounds timeouts up to whole milliseconds,
    # which would delay sends by up to 1 ms and show up as latency. Few sockets: select() is cheap.
    runner = asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selectors.SelectSelector()))
    with runner:
        result = runner.run(_main(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
