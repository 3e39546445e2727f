"""The connection handler of every server here (the gateway and the services): what happens at the HTTP
layer before, or instead of, the application.

- Errors in the spec's envelope: a request the parser cannot read, or an exception that escaped, gets the
  same error body, request ID and Server header as every other error, and one log line, not a traceback.
- What the parsers let through: a version other than HTTP/1.0 and 1.1 is 505 (llhttp reads a bare
  `GET /x` line as HTTP/0.9, both parsers take `HTTP/2.0`), and Transfer-Encoding on HTTP/1.0 is 400
  (RFC 9112, 6.1: the framing is faulty).
- A deadline for the request headers, which aiohttp does not have: see HEADER DEADLINE below.

aiohttp has no public hook for any of this; the request handler class is swapped on the runner's server,
the one place aiohttp builds it (Server.__call__).
"""
from __future__ import annotations

import asyncio
import logging
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from gateway.config.settings import DEFAULT_HEADER_TIMEOUT
from gateway.envelope import error_body
from gateway.exchange import JSON_CONTENT_TYPE, SERVER
from gateway.logs import log_fields, new_request_id, request_id_var

log = logging.getLogger("gateway.protocol")

_LINGER = 1.0
"""Seconds a connection closed for slow headers is still read (and dropped) after its 408."""

# HEADER DEADLINE. A client must send a request's headers within `header_timeout` seconds, counted from
# the connection's opening for its first request and from the first byte of each later one: the idle
# time of a kept-alive connection between requests is aiohttp's keepalive_timeout's business, so a load
# balancer's pooled connections are not cut while idle. Past the deadline the connection is closed, with
# a 408 envelope if part of a request had come. A client that trickles its headers (slowloris) holds a
# connection for that long at most. Cost: one timer per connection, re-armed at most once per deadline,
# and a few attribute checks per read of the socket.


class EnvelopeRequestHandler(RequestHandler):  # type: ignore[type-arg]
    __slots__ = ("header_timeout", "_header_since", "_header_started", "_header_timer")

    def __init__(self, manager: Any, *, header_timeout: float = DEFAULT_HEADER_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.header_timeout = header_timeout
        self._header_since: float | None = None
        """loop.time() when the awaited request's headers began to be due; None while none is awaited."""
        self._header_started = False
        """Some bytes of the awaited request arrived (a 408 is owed rather than a silent close)."""
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._header_since = self._loop.time()
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()  # it holds this handler: let it go with the connection
            self._header_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        messages = self._messages
        queued = len(messages)
        RequestHandler.data_received(self, data)  # not super(): this runs for every read of the socket
        parsed = len(messages) - queued
        if (request := self._current_request) is not None:
            self._fail_broken_body(request, queued)
        if not parsed:  # part of a request's headers, or of a body; the waiter is as it was
            if self._header_since is not None:
                if data:
                    self._header_started = True
            elif data and not queued and (waiter := self._waiter) is not None and not waiter.done():
                # The handler waits for a request and none is under way: the first bytes of the next one.
                self._header_since = self._loop.time()
                self._header_started = True
                self._arm_header_timer()
            return
        if self._header_since is not None:
            self._header_since = None  # headers complete (or refused by the parser)
            self._header_started = False
        message = messages[queued][0]
        if parsed > 1 or type(message) is _ErrInfo or message.version != HttpVersion11:
            self._refuse_unsupported(queued)

    def _fail_broken_body(self, request: web.BaseRequest, first: int) -> None:
        """A body whose framing broke while its handler runs (a bad chunk) fails at once for the handler.

        aiohttp's Python parser fails the body itself; its C parser queues the error as the next request
        and leaves the handler waiting for bytes that will never come (until the route's total timeout,
        holding an upstream connection). Either way the rest of the connection is no request: it closes
        after the response, without aiohttp's lingering read of a body that can only raise."""
        payload = request.content
        if payload.is_eof():
            return
        error = payload.exception()
        if error is None:
            messages = self._messages
            for index in range(first, len(messages)):
                message = messages[index][0]
                if type(message) is _ErrInfo:
                    error = message.exc
                    break
            if error is None:
                return
            payload.set_exception(error)
        self._lingering_time = 0.0

    def _refuse_unsupported(self, first: int) -> None:
        """Replace the newly parsed requests that must not be served with their error."""
        messages = self._messages
        for index in range(first, len(messages)):
            message = messages[index][0]
            if type(message) is not _ErrInfo and message.version != HttpVersion11:
                refusal = _refusal(message)
                if refusal is not None:
                    messages[index] = (refusal, EMPTY_PAYLOAD)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and self._header_since is not None:
            self._header_timer = self._loop.call_at(self._header_since + self.header_timeout, self._header_deadline)

    def _header_deadline(self) -> None:
        self._header_timer = None
        since, transport = self._header_since, self.transport
        if since is None or transport is None or self._force_close or self._close:
            return
        if self._loop.time() < since + self.header_timeout:
            self._arm_header_timer()  # a later request's deadline: this timer was set for an earlier one
            return
        peer = self.peername
        fields = log_fields(client=peer[0] if isinstance(peer, tuple) else peer, timeout=self.header_timeout)
        if not self._header_started:
            log.debug("closed a connection that sent no request in time", extra=fields)
            self.force_close()
            return
        request_id = new_request_id()
        token = request_id_var.set(request_id)
        try:
            log.info("closed a connection: the request headers did not arrive in time", extra=fields)
        finally:
            request_id_var.reset(token)
        self._close = True  # what the client still sends is no request: it is read and dropped
        transport.write(_request_timeout(self.header_timeout, request_id))
        if transport.can_write_eof():
            # FIN after the 408, and the socket still read for a moment: closed at once, a byte of the
            # client's in flight would make the kernel answer with a reset, which can destroy the 408.
            transport.write_eof()
            self._loop.call_later(_LINGER, self.force_close)
        else:
            self.force_close()  # transport.close() still sends what was written

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of a response is out already: nothing can be answered on this connection any more.
            raise ConnectionError("response already started; the connection is closed")
        request_id = new_request_id()
        token = request_id_var.set(request_id)
        try:
            if isinstance(exc, HttpProcessingError):
                reason = _reason(exc.message or HTTPStatus(status).phrase)
                log.info(
                    "rejected a request the HTTP parser could not read: %s",
                    reason,
                    extra=log_fields(status=status, client=request.remote),
                )
                text = f"{HTTPStatus(status).phrase}: {reason}"
            else:
                log.error("unhandled error in the HTTP layer", exc_info=exc)
                text = HTTPStatus(status).phrase
        finally:
            request_id_var.reset(token)
        response = web.Response(
            status=status,
            body=error_body(status, text, request_id),
            headers={"Content-Type": JSON_CONTENT_TYPE, "Server": SERVER, "X-Request-ID": request_id},
        )
        response.force_close()
        return response


def _refusal(message: Any) -> _ErrInfo | None:
    """The error for a parsed request of a version other than 1.1 that must not be served (None: serve it)."""
    version = message.version
    if version != HttpVersion10:
        error = HttpProcessingError(code=505, message=f"HTTP/{version.major}.{version.minor} is not supported")
        return _ErrInfo(status=505, exc=error, message=error.message)
    if "Transfer-Encoding" in message.headers:
        error = HttpProcessingError(code=400, message="Transfer-Encoding is not allowed in an HTTP/1.0 request")
        return _ErrInfo(status=400, exc=error, message=error.message)
    return None


def _request_timeout(seconds: float, request_id: str) -> bytes:
    """A whole 408 response in the envelope, written straight to the socket (no request object exists)."""
    body = error_body(408, f"Request Timeout: the request headers did not arrive within {seconds:g}s", request_id)
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        f"Content-Type: {JSON_CONTENT_TYPE}\r\n"
        f"Server: {SERVER}\r\n"
        f"X-Request-ID: {request_id}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _reason(message: str) -> str:
    """The parser's reason, without the excerpt of the client's bytes it appends."""
    first = message.splitlines()[0]
    return first.split(": b'", 1)[0].split(': b"', 1)[0].rstrip(":. ")


class EnvelopeServer(web.Server):
    header_timeout: float = DEFAULT_HEADER_TIMEOUT

    def __call__(self) -> RequestHandler:  # type: ignore[type-arg]
        return EnvelopeRequestHandler(self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs)


def use_envelope_errors(runner: web.BaseRunner, *, header_timeout: float = DEFAULT_HEADER_TIMEOUT) -> None:
    """After runner.setup(): make the runner's server build EnvelopeRequestHandlers, whose request
    headers must arrive within header_timeout seconds."""
    if header_timeout <= 0:
        raise ValueError("header_timeout must be above zero")
    server = runner.server
    if server is None or type(server) is not web.Server:
        raise RuntimeError("use_envelope_errors() needs a set-up runner with aiohttp's own Server")
    server.__class__ = EnvelopeServer
    server.header_timeout = header_timeout  # type: ignore[attr-defined]
