"""RESP2 by hand for the batched rate-limit backend: command packing, and one Redis connection that writes
the commands of an event-loop tick in one write and hands hiredis-parsed replies to its callers in order."""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

Reply = Any
"""What hiredis makes of a reply: int, bytes, None, a list of those, or a ResponseError (not raised)."""


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def pack(*args: bytes | str | int) -> bytes:
    """One command: a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(bulk(arg if isinstance(arg, bytes) else str(arg).encode()))
    return b"".join(parts)


class EvalshaPacker:
    """EVALSHA of one script with fixed arguments, over keys `head + middle + tail` that differ per call only
    in `middle`: everything else is packed once, so a call encodes its middle and joins once."""

    __slots__ = ("_head", "_key_heads", "_key_tail", "_args")

    def __init__(self, sha: str, key_heads: Sequence[str], key_tail: str, args: Sequence[str | int]) -> None:
        count = len(key_heads)
        self._head = b"*%d\r\n" % (3 + count + len(args)) + bulk(b"EVALSHA") + bulk(sha.encode()) + bulk(b"%d" % count)
        self._key_heads = tuple((len(head.encode()), head.encode()) for head in key_heads)
        self._key_tail = key_tail.encode() + b"\r\n"
        self._args = b"".join(bulk(str(arg).encode()) for arg in args)

    def command(self, middle: str) -> bytes:
        encoded = middle.encode()
        tail = encoded + self._key_tail
        extra = len(tail) - 2
        parts = [self._head]
        for size, head in self._key_heads:
            parts += (b"$%d\r\n" % (size + extra), head, tail)
        parts.append(self._args)
        return b"".join(parts)


class RespConnection(asyncio.Protocol):
    """A pipelined connection: call() queues a command and returns the future of its reply.

    The commands queued in one event-loop tick leave in one transport.write. Replies resolve the futures in
    the order their commands were queued; a cancelled caller's reply is read and dropped, so later callers
    still get their own. When the connection ends, every caller still waiting fails with ConnectionError: a
    command whose reply was lost may have run, so nothing is resent. Memory stays bounded: the connection
    is dropped when more than max_pending replies are outstanding, or when the oldest has waited longer
    than stall_timeout (checked every stall_timeout, so detected within twice that).
    """

    def __init__(self, *, max_pending: int, stall_timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.max_pending = max_pending
        self.stall_timeout = stall_timeout
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.pending: deque[asyncio.Future[Reply]] = deque()
        self.buffer: list[bytes] = []
        self.closed = False
        self.writes = 0
        """transport.write calls so far: one per event-loop tick that queued commands."""
        self._expiring: dict[float, list[asyncio.Future[Reply]]] = {}
        """Calls of the current tick that have a timeout, by timeout."""
        self._watchdog: asyncio.TimerHandle | None = None
        self._oldest: asyncio.Future[Reply] | None = None
        self.lost: asyncio.Future[None] = self.loop.create_future()
        """Done once the transport has closed its socket."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance(transport, asyncio.Transport): uvloop's transports do not derive from it.
        self.transport = transport  # type: ignore[assignment]

    def call(self, command: bytes, timeout: float | None = None) -> asyncio.Future[Reply]:
        """Queue a packed command; raises ConnectionError when the connection is closed or overloaded.

        With a timeout the future fails with TimeoutError once it passes (its reply, when it comes, is
        dropped): one timer for all the calls of a tick with the same timeout, not one per call."""
        if self.closed:
            raise RedisConnectionError("the connection to Redis is closed")
        pending = self.pending
        if len(pending) >= self.max_pending:
            self.drop(f"{len(pending)} Redis replies outstanding, more than the {self.max_pending} allowed")
            raise RedisConnectionError("the connection to Redis was dropped: too many replies outstanding")
        future = self.loop.create_future()
        pending.append(future)
        if not self.buffer:
            self.loop.call_soon(self._flush)
        self.buffer.append(command)
        if timeout is not None:
            expiring = self._expiring.get(timeout)
            if expiring is None:
                expiring = self._expiring[timeout] = []
                self.loop.call_later(timeout, _expire, expiring)
            expiring.append(future)
        return future

    def _flush(self) -> None:
        buffer = self.buffer
        if self.closed or not buffer:
            return
        self.buffer = []
        self._expiring = {}
        assert self.transport is not None
        self.transport.write(buffer[0] if len(buffer) == 1 else b"".join(buffer))
        self.writes += 1
        if self._watchdog is None:
            self._arm()

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        pending = self.pending
        reader.feed(data)
        try:
            reply = reader.gets()
            while reply is not False:
                future = pending.popleft()
                if not future.done():
                    future.set_result(reply)
                reply = reader.gets()
        except hiredis.ProtocolError as exc:
            self.drop(f"unreadable reply from Redis: {exc}")
        except IndexError:
            self.drop("a reply from Redis that no command asked for")

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection to Redis lost: {exc}" if exc else "connection to Redis closed by the server")
        if not self.lost.done():
            self.lost.set_result(None)

    def drop(self, reason: str) -> None:
        """Close now and fail every caller still waiting with ConnectionError(reason)."""
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self._fail(reason)

    def _fail(self, reason: str) -> None:
        self.closed = True
        self.buffer = []
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        pending = self.pending
        while pending:
            future = pending.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError(reason))

    def _arm(self) -> None:
        self._oldest = self.pending[0] if self.pending else None
        self._watchdog = self.loop.call_later(self.stall_timeout, self._check_stall)

    def _check_stall(self) -> None:
        self._watchdog = None
        if self.closed or not self.pending:
            return
        if self.pending[0] is self._oldest:
            self.drop(f"Redis answered nothing for {self.stall_timeout} s with {len(self.pending)} replies outstanding")
            return
        self._arm()


def _expire(futures: list[asyncio.Future[Reply]]) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(TimeoutError("no reply from Redis within the limiter's timeout"))
