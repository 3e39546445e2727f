"""The response of an upstream exchange: status and headers, and its body as a bounded stream."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from gateway.upstream.connection import UpstreamConnection

# Unread body bytes above which the connection stops reading from the socket (flow control).
BUFFER_LIMIT = 64 * 1024
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class UpstreamResponse:
    """Status line and headers as parsed; the body arrives through ``content.readany()``.

    ``content`` is the response itself (readany/at_eof/read). While the response is attached to its
    connection, release() or close() drops that connection; once the whole body has arrived (and the request
    was sent whole) the connection has already gone back to the pool on its own, and both are no-ops.
    """

    __slots__ = (
        "status", "reason", "version", "headers", "content_length",
        "_conn", "_loop", "_chunks", "_buffered", "_eof", "_exc", "_waiter", "_has_head",
    )

    def __init__(self, conn: UpstreamConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.status = 0
        self.reason = ""
        self.version = "1.1"
        self.headers = _NO_HEADERS
        self.content_length: int | None = None
        self._conn: UpstreamConnection | None = conn
        self._loop = loop
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._has_head = False

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} {self.reason!r} length={self.content_length}>"

    @property
    def content(self) -> UpstreamResponse:
        # A property, not an attribute pointing at self: a self-reference would leave every response
        # to the cycle collector.
        return self

    @property
    def buffered(self) -> int:
        """Body bytes received and not yet read."""
        return self._buffered

    def at_eof(self) -> bool:
        """True once the whole body has arrived and been read."""
        return self._eof and not self._chunks

    async def readany(self) -> bytes:
        """Whatever body bytes are buffered (waiting for some if none are); b"" once the body is complete."""
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                conn = self._conn
                if conn is not None:
                    conn.resume_reading()
                return data
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            await self._wait()

    async def read(self) -> bytes:
        """The whole (rest of the) body."""
        if self._eof and self._conn is None:  # all of it is here, as with most small bodies: nothing to await
            chunks = self._chunks
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self._buffered = 0
            return data
        parts: list[bytes] = []
        while chunk := await self.readany():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)  # b"" when there was none

    def release(self) -> None:
        """Done with the response: a connection still attached (body not complete) is dropped."""
        self.close()

    def close(self) -> None:
        """Drop the connection now, unless it already went back to the pool with the complete body."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.close()

    # The connection's side.

    async def wait_head(self) -> None:
        while not self._has_head:
            if self._exc is not None:
                raise self._exc
            await self._wait()

    async def _wait(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        except asyncio.CancelledError:
            # A reader that gives up mid-exchange leaves the connection in an unknown state.
            self.close()
            raise
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def head_received(self) -> None:
        self._has_head = True
        self._wake()

    def feed(self, data: bytes) -> bool:
        """Buffer body bytes; True when the buffer is over the limit and reading should pause."""
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()
        return self._buffered > BUFFER_LIMIT

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        """Fail the exchange; a body that already arrived whole stays readable."""
        if self._eof:
            return
        self._exc = exc
        self._wake()

    def detach(self) -> None:
        self._conn = None

    @property
    def has_head(self) -> bool:
        return self._has_head
