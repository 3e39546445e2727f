"""One client connection: httptools parses, aiohttp's web.Request and responses do the rest.

Per request this costs one task and the request object; aiohttp's own connection handler adds a waiter
per request, a second task, its keep-alive bookkeeping and a parser that builds more than the gateway
reads (about 20 us a request on the benchmark machine).

- Pipelining: requests are answered one at a time, in order; the heads of later ones wait in a queue
  (reading pauses while it holds MAX_QUEUED).
- Bodies: each request's body is an aiohttp StreamReader fed as it arrives; when it buffers more than it
  should, reading from the socket pauses until the handler has read it.
- A body the handler did not read (a 401, a 413) is read and dropped after the response, so the next
  request on the connection is found, for at most LINGER seconds; then the connection closes.
- The request headers have a deadline (see HEADER DEADLINE in gateway/protocol.py); an idle kept-alive
  connection is closed after keepalive_timeout.
- A request that cannot be served (broken framing, a version other than 1.0 and 1.1, headers too
  large) is answered in order with its error envelope and `Connection: close`; nothing after it is read.
- A client that hangs up cancels the request under way, upstream call included.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING

import httptools
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

from gateway.logs import log_fields, new_request_id, request_id_var
from gateway.serving.message import (
    MAX_FIELD,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_TARGET,
    RequestRefused,
    method_text,
    request_message,
)
from gateway.serving.replies import error_reply, parser_reason

if TYPE_CHECKING:
    from gateway.serving.server import HttpServer

log = logging.getLogger("gateway.protocol")

MAX_QUEUED = 16
"""Pipelined requests waiting for their turn before reading pauses."""
LINGER = 1.0
"""Seconds a connection closed after an error is still read (and dropped): closed at once, a byte of the
client's in flight would make the kernel answer with a reset, which can destroy the error response."""
BODY_LINGER = 10.0
"""Seconds an unread request body may take to arrive (and be dropped) after its response."""
_BODY_LIMIT = 2**16
"""A body's StreamReader pauses reading at twice this many bytes buffered."""


class _Refusal:
    """In the queue in place of a request: the error answered when its turn comes."""

    __slots__ = ("error",)

    def __init__(self, error: RequestRefused) -> None:
        self.error = error


class HttpConnection(BaseProtocol):
    __slots__ = (
        "_server", "_http", "_target", "_raw_headers", "_head_bytes", "_in_head", "_receiving", "_queue",
        "_task", "_closing", "_ignore_input", "_refusal", "_header_since", "_header_started", "_idle_since",
        "_timer", "_discarding", "_linger_timer", "_half_closed", "peername", "sockname",
    )

    ssl_context = None
    max_field_size = MAX_FIELD
    max_headers = MAX_HEADERS

    def __init__(self, server: HttpServer) -> None:
        super().__init__(server.loop)
        self._server = server
        self._http = httptools.HttpRequestParser(self)
        self._target = b""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._in_head = False
        self._receiving: StreamReader | None = None
        """The body being received, while its request's message is incomplete."""
        self._queue: deque[tuple[RawRequestMessage | _Refusal, StreamReader]] = deque()
        self._task: asyncio.Task[None] | None = None
        """The task answering a request; None while the connection waits for one."""
        self._closing = False
        """Close once the response under way is written (shutdown, Connection: close, an error)."""
        self._ignore_input = False
        self._refusal: RequestRefused | None = None
        self._header_since: float | None = None
        """loop.time() when the awaited request's headers began to be due; None while none is awaited."""
        self._header_started = False
        self._idle_since: float | None = None
        """loop.time() since when the connection has had nothing to do; None while it has."""
        self._timer: asyncio.TimerHandle | None = None
        self._discarding: StreamReader | None = None
        """A body whose request has been answered: what still arrives of it is dropped."""
        self._linger_timer: asyncio.TimerHandle | None = None
        self._half_closed = False
        self.peername: object = None
        self.sockname: object = None

    # --- the transport's side ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peername = transport.get_extra_info("peername")
        self.sockname = transport.get_extra_info("sockname")
        self._server.connections.add(self)
        if self._server.closing:
            transport.close()
            return
        self._header_since = self._loop.time()
        self._arm(self._header_since + self._server.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._server.connections.discard(self)
        self._ignore_input = True
        self._header_since = self._idle_since = None
        for timer in (self._timer, self._linger_timer):
            if timer is not None:
                timer.cancel()  # it holds this connection: let it go
        self._timer = self._linger_timer = None
        lost = ConnectionResetError("Connection lost")
        if self._receiving is not None:
            self._receiving.set_exception(lost)
            self._receiving = None
        self._queue.clear()
        task = self._task
        if task is not None and not task.done():
            task.cancel()  # handler cancellation: the upstream call goes with it

    def data_received(self, data: bytes) -> None:
        if self._ignore_input:
            return
        in_head_before = self._in_head
        try:
            self._http.feed_data(data)
            # Requests whose heads came in this read start only now: one that the rest of the read
            # shows to be broken is answered with its error instead.
            if self._task is None and self._queue:
                self._next()
        except httptools.HttpParserUpgrade:
            # Upgrade or CONNECT: the request itself was parsed and queued. The gateway switches to no
            # other protocol (Upgrade is hop-by-hop and not forwarded), so what follows is not read.
            self._ignore_input = True
            self._closing = True
            if self._task is None and self._queue:
                self._next()
            return
        except httptools.HttpParserError as exc:
            refusal = self._refusal or RequestRefused(400, parser_reason(exc))
            self._refuse(refusal)
            return
        if self._in_head and in_head_before:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._refuse(RequestRefused(431, "Request Header Fields Too Large"))

    def pause_reading(self) -> None:
        """A body buffers too much (aiohttp's StreamReader asks): stop reading the socket."""
        self._reading_paused = True
        self._pause_transport_reading()

    def resume_reading(self, resume_parser: bool = True) -> None:
        self._reading_paused = False
        if not self._buffer_paused:
            self._resume_transport_reading()

    # --- httptools callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._target = b""
        self._raw_headers = []
        if self._header_since is None:  # the first bytes of a later request: its headers are now due
            self._header_since = self._loop.time()
            self._arm(self._header_since + self._server.header_timeout)
        self._header_started = True
        self._idle_since = None

    def on_url(self, url: bytes) -> None:
        target = self._target + url
        if len(target) > MAX_TARGET:
            self._refusal = RequestRefused(414, "URI Too Long")
            raise self._refusal
        self._target = target

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._raw_headers
        headers.append((name, value))
        if len(name) + len(value) > MAX_FIELD or len(headers) > MAX_HEADERS:
            self._refusal = RequestRefused(431, "Request Header Fields Too Large")
            raise self._refusal

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._header_since = None
        self._header_started = False
        http = self._http
        try:
            message = request_message(
                method_text(http.get_method()),
                self._target,
                http.get_http_version(),
                self._raw_headers,
                http.should_upgrade(),
            )
        except RequestRefused as refusal:
            self._refusal = refusal
            raise
        if message.chunked or message.headers.get("Content-Length", "0") != "0":
            payload = self._receiving = StreamReader(self, _BODY_LIMIT, loop=self._loop)
        else:
            payload = EMPTY_PAYLOAD
        self._enqueue(message, payload)

    def on_body(self, body: bytes) -> None:
        receiving = self._receiving
        if receiving is not None and receiving is not self._discarding:
            receiving.feed_data(body)

    def on_message_complete(self) -> None:
        receiving = self._receiving
        if receiving is None:
            return
        self._receiving = None
        receiving.feed_eof()
        if receiving is self._discarding:
            self._discarding = None
            if self._linger_timer is not None:
                self._linger_timer.cancel()
                self._linger_timer = None
            if self._closing:
                self._close_transport()
            elif self._task is None:
                self._idle()

    # --- answering ---------------------------------------------------------------------------------

    def _enqueue(self, message: RawRequestMessage | _Refusal, payload: StreamReader) -> None:
        self._queue.append((message, payload))
        if len(self._queue) >= MAX_QUEUED and not self._buffer_paused:
            self._buffer_paused = True
            self._pause_transport_reading()

    def _next(self) -> None:
        """Start answering the next request in the queue."""
        message, payload = self._queue.popleft()
        if self._buffer_paused and len(self._queue) < MAX_QUEUED // 2:
            self._buffer_paused = False
            if not self._reading_paused:
                self._resume_transport_reading()
        self._task = self._loop.create_task(self._answer(message, payload))

    def _refuse(self, refusal: RequestRefused) -> None:
        """Stop reading; answer refusal once the requests before it are answered."""
        self._ignore_input = True
        self._refusal = None
        self._header_since = None
        broken = self._receiving
        self._receiving = None
        if broken is not None:  # a body cut off by its own broken framing
            queue = self._queue
            if queue and queue[-1][1] is broken:
                queue.pop()  # not started yet: the refusal is its answer
            else:  # its handler is running: it reads the error, and the connection closes after it
                broken.set_exception(BadHttpMessage(refusal.reason))
                self._closing = True
                return
        self._enqueue(_Refusal(refusal), EMPTY_PAYLOAD)
        if self._task is None:
            self._next()

    async def _answer(self, message: RawRequestMessage | _Refusal, payload: StreamReader) -> None:
        keep_alive = False
        try:
            if type(message) is _Refusal:
                self._write_refusal(message.error)
                return
            keep_alive = await self._respond(message, payload)  # type: ignore[arg-type]
        except asyncio.CancelledError:
            keep_alive = False
            raise
        finally:
            self._task = None
            self._after_response(keep_alive, payload)

    async def _respond(self, message: RawRequestMessage, payload: StreamReader) -> bool:
        """Run the handler and write its response; whether the connection may carry another request."""
        server = self._server
        request = web.Request(
            message, payload, self, StreamWriter(self, self._loop), self._task, self._loop,  # type: ignore[arg-type]
            client_max_size=server.client_max_size,
        )
        try:
            response = await server.handler(request)
        except web.HTTPException as exc:
            response = exc
        except ConnectionError:
            return False  # the client went away while the response was written
        except Exception:  # noqa: BLE001 - a bug in a handler must not take the connection's others down
            log.error("unhandled error in the HTTP layer", exc_info=True)
            if request.writer.output_size > 0:
                return False  # part of a response is out: nothing more can be said on this connection
            self._write_refusal(RequestRefused(500, "Internal Server Error"), unexpected=True)
            return False
        try:
            await response.prepare(request)  # nothing, for a response the handler already sent
            await response.write_eof()
        except ConnectionError:
            return False
        return bool(response.keep_alive) and self.transport is not None

    def _after_response(self, keep_alive: bool, payload: StreamReader) -> None:
        if self.transport is None or self._half_closed:
            return
        if not keep_alive:
            self._closing = True
        if payload is not EMPTY_PAYLOAD and not payload.is_eof():
            if payload is self._receiving:
                self._discard(payload)
                return
        if self._closing:
            if self._discarding is None:
                self._close_transport()
            return
        if self._queue:
            self._next()
        elif self._discarding is None:
            self._idle()

    def _discard(self, payload: StreamReader) -> None:
        """Drop the rest of an answered request's body as it arrives, for BODY_LINGER seconds at most."""
        self._discarding = payload
        payload.set_exception(ConnectionResetError("the request was answered"))  # frees what it buffered
        if self._reading_paused:
            self.resume_reading()
        self._linger_timer = self._loop.call_later(BODY_LINGER, self._close_transport)

    def _idle(self) -> None:
        if self._header_started or self._in_head:
            return
        self._idle_since = self._loop.time()
        self._arm(self._idle_since + self._server.keepalive_timeout)

    def _write_refusal(self, refusal: RequestRefused, unexpected: bool = False) -> None:
        """Answer refusal in the envelope, then close: written straight to the socket, no request exists."""
        transport = self.transport
        self._closing = True
        if transport is None:
            return
        request_id = new_request_id()
        token = request_id_var.set(request_id)
        try:
            if not unexpected:
                log.info(
                    "rejected a request the HTTP parser could not read: %s",
                    refusal.reason,
                    extra=log_fields(status=refusal.status, client=self._client()),
                )
        finally:
            request_id_var.reset(token)
        phrase = HTTPStatus(refusal.status).phrase
        text = phrase if refusal.reason == phrase else f"{phrase}: {refusal.reason}"
        transport.write(error_reply(refusal.status, text, request_id))
        self._half_close()

    def _half_close(self) -> None:
        """FIN after the last response, the socket still read (and dropped) for LINGER seconds."""
        transport = self.transport
        if transport is None:
            return
        self._ignore_input = True
        self._half_closed = True
        if transport.can_write_eof():
            transport.write_eof()
            self._loop.call_later(LINGER, transport.close)
        else:
            transport.close()

    def _close_transport(self) -> None:
        if self.transport is not None:
            self.transport.close()  # what was written still goes out first

    def _client(self) -> str:
        peer = self.peername
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    # --- deadlines ---------------------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        """Have the timer fire by when. One timer serves both deadlines: it is moved only when a nearer
        one comes up, so a busy connection replaces it about once per header_timeout, not per request."""
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.transport is None:
            return
        server, now = self._server, self._loop.time()
        due: float | None = None
        since = self._header_since
        if since is not None:
            if now >= since + server.header_timeout:
                self._header_deadline()
                return
            due = since + server.header_timeout
        idle = self._idle_since
        if idle is not None:
            if now >= idle + server.keepalive_timeout:
                self._close_transport()
                return
            due = idle + server.keepalive_timeout if due is None else min(due, idle + server.keepalive_timeout)
        if due is not None:
            self._arm(due)

    def _header_deadline(self) -> None:
        fields = log_fields(client=self._client(), timeout=self._server.header_timeout)
        self._header_since = None
        if not self._header_started:
            log.debug("closed a connection that sent no request in time", extra=fields)
            self._close_transport()
            return
        if self._task is not None:
            # A request is still being answered (pipelined behind it, this one came slowly): the 408
            # would interleave with its response. Closing after it is all that is left to do.
            self._ignore_input = True
            self._closing = True
            return
        request_id = new_request_id()
        token = request_id_var.set(request_id)
        try:
            log.info("closed a connection: the request headers did not arrive in time", extra=fields)
        finally:
            request_id_var.reset(token)
        seconds = self._server.header_timeout
        self.transport.write(  # type: ignore[union-attr]
            error_reply(408, f"Request Timeout: the request headers did not arrive within {seconds:g}s", request_id)
        )
        self._closing = True
        self._half_close()

    # --- shutdown ----------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Close now if idle; otherwise once the response under way is written."""
        self._closing = True
        if self._task is None and self._discarding is None:
            self._close_transport()

    @property
    def busy(self) -> bool:
        return self._task is not None

    def cancel(self) -> asyncio.Task[None] | None:
        """Cancel the request under way, if any; its task."""
        task = self._task
        if task is None or task.done():
            return None
        task.cancel()
        return task
