"""One keep-alive HTTP/1.1 connection to an instance: writes requests, parses responses with httptools.

The protocol object lives as long as the TCP connection and carries one exchange at a time. Its one timer
serves the total and read timeouts of an exchange and the idle timeout between exchanges; it is re-armed
only when it fires or must fire earlier, so a busy connection does not allocate a timer per request.
"""
from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.upstream.errors import (
    RequestBodyLengthError,
    TimeoutPhase,
    UpstreamProtocolError,
    UpstreamResetError,
    UpstreamTimeout,
)
from gateway.upstream.response import UpstreamResponse
from gateway.upstream.wire import LAST_CHUNK

# A response head (interim ones included) still incomplete once this much has arrived is refused: llhttp
# buffers nothing, but httptools joins a header's pieces, so an endless head would grow without bound.
HEAD_LIMIT = 64 * 1024
_NO_BODY = frozenset({204, 304, 101})

ConnectionHook = Callable[["UpstreamConnection"], None]


class UpstreamConnection(asyncio.Protocol):
    """asyncio protocol and httptools callback target for one upstream TCP connection."""

    __slots__ = (
        "_loop", "_idle_timeout", "_on_idle", "_on_closed", "_transport", "_parser",
        "closed", "reused", "in_pool", "idle_since", "_exc",
        "_timer", "_timer_at", "_deadline", "_read_timeout", "_read_mark", "_reading", "_paused",
        "_response", "_head_only", "_in_head", "_head_bytes", "_interim", "_msg_open", "_body_done",
        "_request_done", "_keep_alive", "_until_close", "_broken", "_got_bytes", "_early",
        "_headers", "_reason", "_write_paused", "_drain", "_upload_task", "_upload_timeout",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, idle_timeout: float, on_idle: ConnectionHook, on_closed: ConnectionHook
    ) -> None:
        self._loop = loop
        self._idle_timeout = idle_timeout
        self._on_idle = on_idle  # the exchange ended and the connection can carry another
        self._on_closed = on_closed  # called exactly once, whoever closes
        self._transport: asyncio.Transport | None = None
        self._parser = HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.in_pool = False  # on the pool's idle stack
        self.idle_since = 0.0
        self._exc: BaseException | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline: float | None = None
        self._read_timeout: float | None = None
        self._read_mark = 0.0
        self._reading = False  # the read clock runs: the request is sent and reading is not paused
        self._paused = False
        self._response: UpstreamResponse | None = None
        self._head_only = False
        self._in_head = False
        self._head_bytes = 0
        self._interim = False
        self._msg_open = False
        self._body_done = False
        self._request_done = False
        self._keep_alive = False
        self._until_close = False
        self._broken = False
        self._got_bytes = False
        self._early = False
        self._headers: CIMultiDict[str] | None = None
        self._reason = b""
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._upload_task: asyncio.Task[object] | None = None
        self._upload_timeout: TimeoutPhase | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance(transport, asyncio.Transport): uvloop's transports do not derive from it.
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Request heads and small bodies go out at once, not after a delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._response is None or self._body_done:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self._broken = True
            if self._response is None:
                self.close()
            return
        self._got_bytes = True
        self._read_mark = self._loop.time()
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            pass  # a 101's head is parsed; what follows is another protocol and is never read
        except HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid response from the upstream: {exc}"))
            return
        if self._in_head:
            # Still no final head after all of this read: every byte of it was head.
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_LIMIT:
                self._fail(UpstreamProtocolError(f"response head larger than {HEAD_LIMIT} bytes"))
            return
        if self._body_done and self._request_done:
            self._finish()

    def eof_received(self) -> bool:
        return False  # close; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.closed and self._response is not None:
            if self._until_close and not self._in_head and not self._body_done:
                self._body_done = True  # EOF ends a close-delimited body
                self._response.feed_eof()
                if self._request_done:
                    self._finish()
            else:
                got_nothing = not self._got_bytes
                self._fail(
                    UpstreamResetError(
                        "upstream closed the connection "
                        + ("before responding" if got_nothing else "before the response was complete"),
                        reused=self.reused and got_nothing,
                    )
                )
        self.close()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._body_done:
            raise UpstreamProtocolError("a second response to one request")
        self._msg_open = True
        self._in_head = True
        self._headers = None
        self._reason = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status  # may come in pieces when the status line spans reads

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # trailers of a chunked body are ignored
        headers = self._headers
        if headers is None:
            headers = self._headers = CIMultiDict()
        headers.add(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100 Continue, 103 Early Hints: the final response follows
            return
        self._in_head = False
        response = self._response
        assert response is not None
        headers = self._headers if self._headers is not None else CIMultiDict()
        response.status = status
        response.reason = self._reason.decode("latin-1")
        response.version = version = parser.get_http_version()
        response.headers = CIMultiDictProxy(headers)
        if self._head_only or status in _NO_BODY:
            response.content_length = 0
            self._keep_alive = status != 101 and _persistent(version, headers)
            self._body_done = True
            response.head_received()
            response.feed_eof()
            return
        self._keep_alive = parser.should_keep_alive()  # version, Connection tokens, framing
        if "Transfer-Encoding" in headers:
            # As llhttp decides: chunked only when the last coding of the last header is.
            coding = headers.getall("Transfer-Encoding")[-1]
            self._until_close = coding.rsplit(",", 1)[-1].strip().lower() != "chunked"
        else:
            length = headers.get("Content-Length")
            if length is None:
                self._until_close = True
            else:
                response.content_length = int(length)  # llhttp has validated it
        response.head_received()

    def on_body(self, data: bytes) -> None:
        if self._body_done:
            self._broken = True  # bytes after a HEAD response's head
            return
        response = self._response
        assert response is not None
        if response.feed(data) and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def on_message_complete(self) -> None:
        self._msg_open = False
        if self._interim:
            self._interim = False
            return
        if not self._body_done:
            self._body_done = True
            assert self._response is not None
            self._response.feed_eof()

    # The pool's side

    def start(
        self,
        head: bytes,
        body: bytes | bytearray | None,
        *,
        head_only: bool,
        streamed: bool,
        read_timeout: float | None,
        deadline: float | None,
    ) -> UpstreamResponse:
        """Begin an exchange: write the head (and a bytes body) and return the response to wait on."""
        response = self._response = UpstreamResponse(self, self._loop)
        self._head_only = head_only
        self._in_head = True
        self._head_bytes = 0
        self._body_done = self._until_close = self._broken = self._got_bytes = self._early = False
        self._keep_alive = False
        self._request_done = not streamed
        self._read_timeout = read_timeout
        self._deadline = deadline
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            self._fail(UpstreamResetError("upstream connection closed", reused=self.reused, sent_nothing=True))
            return response
        if not body:
            transport.write(head)
        elif len(body) <= 16384:
            transport.write(head + body)  # one segment for a small request
        else:
            transport.write(head)
            transport.write(body)
        now = self._loop.time()
        self._read_mark = now
        self._reading = not streamed
        soonest = deadline
        if read_timeout is not None and (soonest is None or now + read_timeout < soonest):
            soonest = now + read_timeout
        if soonest is not None:
            self._arm(soonest)
        return response

    async def send_stream(self, body: AsyncIterator[bytes], length: int | None) -> None:
        """Write a streamed body: chunked, or exactly ``length`` bytes. A failure of the body iterator
        propagates unchanged; the caller drops the connection."""
        task = self._upload_task = asyncio.current_task()
        assert task is not None
        sent = 0
        try:
            async for chunk in body:
                if not chunk:
                    continue  # an empty chunk would end a chunked body
                transport = self._transport
                if self.closed or transport is None:
                    raise self._lost()
                size = len(chunk)
                sent += size
                if length is None:
                    transport.writelines((b"%x\r\n" % size, chunk, b"\r\n"))
                elif sent > length:
                    raise RequestBodyLengthError(length, sent)
                else:
                    transport.write(chunk)
                if self._write_paused:
                    await self._drained()
            if length is not None and sent != length:
                raise RequestBodyLengthError(length, sent)
            transport = self._transport
            if self.closed or transport is None:
                raise self._lost()
            if length is None:
                transport.write(LAST_CHUNK)
        except asyncio.CancelledError:
            phase = self._upload_timeout
            if phase is not None and task.uncancel() == 0:
                raise UpstreamTimeout(phase) from None
            raise
        finally:
            self._upload_task = None
        self._request_done = True
        self._reading = True
        self._read_mark = self._loop.time()
        if self._body_done:
            self._early = True  # answered before the body was through: the server may not have read it
            self._finish()

    def resume_reading(self) -> None:
        """The reader drained the buffer: read from the socket again."""
        if self._paused:
            self._paused = False
            self._read_mark = self._loop.time()
            if self._transport is not None:
                self._transport.resume_reading()

    def close(self) -> None:
        """Drop the connection now; an exchange in progress fails with UpstreamResetError."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        response = self._response
        if response is not None:
            self._response = None
            response.detach()
            response.set_exception(self._lost())
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(self._lost())
        if self._transport is not None:
            self._transport.abort()
        self._on_closed(self)

    # Internals

    def _lost(self) -> BaseException:
        return self._exc or UpstreamResetError("upstream connection closed")

    def _fail(self, exc: BaseException) -> None:
        if self.closed:
            return
        self._exc = exc
        self.close()

    async def _drained(self) -> None:
        drain = self._drain = self._loop.create_future()
        try:
            await drain
        finally:
            self._drain = None

    def _finish(self) -> None:
        """The exchange is over: back to the pool when both sides allow it, else close."""
        response = self._response
        assert response is not None
        self._response = None
        response.detach()
        self.reused = True
        self._deadline = self._read_timeout = None
        self._reading = False
        if not self._keep_alive or self._broken or self._early or self.closed:
            self.close()
            return
        if self._paused:
            self._paused = False  # the last read completed the body while over the buffer limit
            assert self._transport is not None
            self._transport.resume_reading()
        if self._msg_open:
            # After a HEAD response llhttp still expects the body its headers announced.
            self._parser = HttpResponseParser(self)
            self._msg_open = False
        self._on_idle(self)

    def park(self) -> None:
        """Rest on the pool's idle stack until the next exchange or the idle timeout."""
        self.in_pool = True
        now = self.idle_since = self._loop.time()
        self._arm(now + self._idle_timeout)

    def _arm(self, when: float) -> None:
        """Make sure the timer fires no later than ``when``; a later fire would re-arm itself."""
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return
            timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self._loop.time()
        if self._response is None:
            if self.in_pool:
                expires = self.idle_since + self._idle_timeout
                if now >= expires:
                    self.close()
                else:
                    self._arm(expires)
            return
        deadline = self._deadline
        if deadline is not None and now >= deadline:
            self._timeout("total")
            return
        soonest = deadline
        read_timeout = self._read_timeout
        if read_timeout is not None:
            if self._reading and not self._paused:
                due = self._read_mark + read_timeout
                if now >= due:
                    self._timeout("read")
                    return
            else:
                due = now + read_timeout  # the clock is stopped: look again later
            if soonest is None or due < soonest:
                soonest = due
        if soonest is not None:
            self._arm(soonest)

    def _timeout(self, phase: TimeoutPhase) -> None:
        task = self._upload_task
        if task is not None:
            # The upload may be waiting on the caller's body iterator, which only cancellation reaches.
            self._upload_timeout = phase
            task.cancel()
        self._fail(UpstreamTimeout(phase))


def _persistent(version: str, headers: CIMultiDict[str]) -> bool:
    """Whether the server keeps the connection open after a response without a body."""
    tokens = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    if version == "1.1":
        return "close" not in tokens
    return version == "1.0" and "keep-alive" in tokens
