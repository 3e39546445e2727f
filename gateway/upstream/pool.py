"""The gateway's upstream HTTP/1.1 connection pool: per-origin keep-alive stacks, limits and waiters."""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from gateway.upstream.connection import UpstreamConnection
from gateway.upstream.errors import TimeoutPhase, UpstreamConnectError, UpstreamResetError, UpstreamTimeout
from gateway.upstream.response import UpstreamResponse
from gateway.upstream.wire import Headers, build_head, framing

# A granted waiter gets a kept-alive connection, or None: a free slot to open a new one with.
_Grant = UpstreamConnection | None


class _Origin:
    """Connections to one ``http://host:port``: the idle stack (LIFO), the count against the limit and
    the callers waiting (FIFO) for a connection or a free slot."""

    __slots__ = (
        "key", "host", "port", "host_line", "limit", "idle_timeout", "count", "idle", "conns", "waiters", "closed",
    )

    def __init__(self, key: str, limit: int, idle_timeout: float) -> None:
        parts = urlsplit(key)
        if parts.scheme != "http":
            raise ValueError(f"only http:// origins are supported, not {key!r}")
        if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"an origin is http://host[:port] alone, not {key!r}")
        self.key = key
        self.host = parts.hostname
        self.port = parts.port or 80
        self.host_line = f"Host: {parts.netloc}\r\n"
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.count = 0  # open and opening connections, and slots granted to a waiter that will open one
        self.idle: list[UpstreamConnection] = []
        self.conns: set[UpstreamConnection] = set()
        self.waiters: deque[asyncio.Future[_Grant]] = deque()
        self.closed = False

    def take_idle(self) -> UpstreamConnection | None:
        """A kept-alive connection ready for a request, without waiting; None when there is none."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            conn.in_pool = False
            if not conn.closed:
                return conn
        return None

    async def acquire(self, until: float | None, phase: TimeoutPhase) -> UpstreamConnection:
        """A connection when take_idle() had none: a new one in a free slot, or one a waiter is handed."""
        if self.count < self.limit:
            self.count += 1
        else:
            grant = await self._wait(until, phase)
            if grant is not None:
                return grant
        return await self._connect(until, phase)

    async def _wait(self, until: float | None, phase: TimeoutPhase) -> _Grant:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Grant] = loop.create_future()
        self.waiters.append(waiter)
        timer = loop.call_at(until, _expire, waiter, phase) if until is not None else None
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._regrant(waiter.result())  # granted, then cancelled before it could run
            else:
                try:
                    self.waiters.remove(waiter)
                except ValueError:
                    pass
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _regrant(self, grant: _Grant) -> None:
        if grant is None:
            self.count -= 1
            self._grant_slot()
        else:
            self.checkin(grant)

    async def _connect(self, until: float | None, phase: TimeoutPhase) -> UpstreamConnection:
        """Open a connection in a slot already counted; a failure gives the slot back (through lost())."""
        loop = asyncio.get_running_loop()
        conn = UpstreamConnection(loop, self.idle_timeout, self.checkin, self.lost)
        self.conns.add(conn)
        try:
            async with asyncio.timeout_at(until) as scope:
                await loop.create_connection(lambda: conn, self.host, self.port)
        except TimeoutError as exc:
            conn.close()
            if scope.expired():
                raise UpstreamTimeout(phase) from None
            raise UpstreamConnectError(f"cannot connect to {self.key}: {exc}") from exc
        except OSError as exc:
            conn.close()
            raise UpstreamConnectError(f"cannot connect to {self.key}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def checkin(self, conn: UpstreamConnection) -> None:
        """A connection finished an exchange and may carry another: the first waiter gets it."""
        if self.closed:
            conn.close()
            return
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.park()
        self.idle.append(conn)

    def lost(self, conn: UpstreamConnection) -> None:
        """A connection closed (either side): its slot goes to the first waiter."""
        self.count -= 1
        self.conns.discard(conn)
        if conn.in_pool:
            conn.in_pool = False
            self.idle.remove(conn)
        self._grant_slot()

    def _grant_slot(self) -> None:
        waiters = self.waiters
        while waiters and self.count < self.limit:
            waiter = waiters.popleft()
            if not waiter.done():
                # Taken now, or a caller arriving before the waiter runs would take the same slot.
                self.count += 1
                waiter.set_result(None)
                return

    def close(self) -> None:
        self.closed = True
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamConnectError("the upstream pool is closed"))
        for conn in list(self.conns):
            conn.close()


class UpstreamPool:
    """HTTP/1.1 keep-alive connections to upstream instances, at most ``max_per_origin`` per origin.

    ``request()`` returns once the response head is parsed; the caller reads the body from
    ``response.content`` and ends with ``release()`` or ``close()``. The pool never retries.
    """

    def __init__(self, *, max_per_origin: int = 512, idle_timeout: float = 30.0) -> None:
        if max_per_origin < 1:
            raise ValueError(f"max_per_origin must be at least 1, not {max_per_origin}")
        if idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive, not {idle_timeout}")
        self._max_per_origin = max_per_origin
        self._idle_timeout = idle_timeout
        self._origins: dict[str, _Origin] = {}
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop of the first request: asyncio.get_running_loop() costs a getpid() syscall on 3.11."""

    async def request(
        self,
        origin: str,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | AsyncIterator[bytes] | None,
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
        total_timeout: float | None,
        content_length: int | None = None,
    ) -> UpstreamResponse:
        """Send one request to ``origin`` and return its response once the head has arrived."""
        if self._closed:
            raise UpstreamConnectError("the upstream pool is closed")
        place = self._origins.get(origin)
        if place is None:
            place = self._origins[origin] = _Origin(origin, self._max_per_origin, self._idle_timeout)
        data: bytes | bytearray | None = None
        stream: AsyncIterator[bytes] | None = None
        if body is None or isinstance(body, (bytes, bytearray)):
            data = body
            framing_line = framing(method, None if body is None else len(body), False)
        else:
            stream = body
            framing_line = framing(method, content_length, True)
        head = build_head(method, target, place.host_line, headers, framing_line)

        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = None if total_timeout is None else now + total_timeout
        until: float | None = None if connect_timeout is None else now + connect_timeout
        phase: TimeoutPhase = "connect"
        if deadline is not None and (until is None or deadline < until):
            until, phase = deadline, "total"
        conn = place.take_idle() or await place.acquire(until, phase)  # a warm pool needs no coroutine
        response = conn.start(
            head,
            data,
            head_only=method == "HEAD",
            streamed=stream is not None,
            read_timeout=read_timeout,
            deadline=deadline,
        )
        try:
            if stream is not None:
                try:
                    await conn.send_stream(stream, content_length)
                except UpstreamResetError:
                    if not response.has_head:
                        raise
                    # The instance answered and hung up before taking the whole body (a 413, say):
                    # that answer stands.
            await response.wait_head()
        except BaseException:
            response.close()
            raise
        return response

    async def close(self) -> None:
        """Close every connection; waiting and later requests fail with UpstreamConnectError."""
        self._closed = True
        for place in self._origins.values():
            place.close()
        await asyncio.sleep(0)  # let the transports' connection_lost run

    def stats(self) -> dict[str, int]:
        """Counts over all origins, for health output; a connection still opening counts as in use."""
        open_ = idle = waiting = 0
        for place in self._origins.values():
            open_ += place.count
            idle += len(place.idle)
            waiting += sum(1 for waiter in place.waiters if not waiter.done())
        return {"open": open_, "idle": idle, "in_use": open_ - idle, "waiters": waiting}


def _expire(waiter: asyncio.Future[_Grant], phase: TimeoutPhase) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout(phase))
