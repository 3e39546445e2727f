"""The proxy core: forward a routed request to an instance, and write any Reply back to the client.

Bodies stream in both directions; nothing larger than a socket read sits in memory.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from yarl import URL

from gateway.errors import (
    BadGateway,
    BadRequest,
    ClientClosedRequest,
    GatewayError,
    GatewayTimeout,
    PayloadTooLarge,
    ServiceUnavailable,
)
from gateway.exchange import SERVER, Exchange, Reply
from gateway.headers import client_response_headers
from gateway.resources import Resources
from gateway.routing import Instance
from gateway.upstream import (
    RequestBodyLengthError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResetError,
    UpstreamResponse,
    UpstreamTimeout,
)
from gateway.whole_reply import reason_phrase, send_whole

Body = bytes | AsyncIterator[bytes] | None
Upstream = UpstreamResponse | aiohttp.ClientResponse
"""An instance's response: from the gateway's pool (http://) or aiohttp's client (https://)."""

_NO_BODY_STATUSES = frozenset({204, 304})
_BODY_TOO_LARGE = "body_too_large"
_CLIENT_GONE = "client_gone"
_BODY_BROKEN = "body_broken"
_BUFFERED_BODY_LIMIT = 64 * 1024


def open_upstream_session(pool_size: int = 1000) -> aiohttp.ClientSession:
    """The process's one upstream session: keep-alive pool, no cookies, no redirects, bytes untouched."""
    connector = aiohttp.TCPConnector(limit=pool_size, limit_per_host=0, keepalive_timeout=30.0)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # the body goes to the client exactly as the instance encoded it
        cookie_jar=aiohttp.DummyCookieJar(),
        # Never add headers the client did not send (an added Accept-Encoding would get it gzip it cannot read).
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None),  # every request passes its route's timeouts
        trust_env=False,
    )


class Forwarder:
    """Terminal handler of every route's chain: send the request to one instance of the route's service."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self._upstream_timers: dict[str, Any] = {}
        """The upstream-latency histogram's child per service (labels() locks and hashes per call)."""

    async def __call__(self, exchange: Exchange) -> Reply:
        route = exchange.route
        assert route is not None and exchange.upstream_headers is not None
        service = route.service
        instance = exchange.pinned
        if instance is not None:
            exchange.pinned = None
        else:
            instance = service.pick(avoid=exchange.tried)
            if instance is None:
                raise ServiceUnavailable(
                    f"No healthy instance of {service.name}", details={"service": service.name}
                )
        request = exchange.request
        max_body = route.config.options.max_body_size
        body: Body = exchange.body
        if body is None and request.body_exists:
            length = request.content_length
            if length is not None and length > max_body:
                raise PayloadTooLarge(details={"limit": max_body, "received": length})
            body = _capped_body(request.content, max_body, exchange)

        exchange.attempts += 1
        if exchange.attempts == 1:
            exchange.on_finish(self._finish)
        exchange.instance = instance
        instance.in_flight += 1
        started = exchange.attempt_started = time.perf_counter()
        try:
            if instance.origin is not None:
                response: Upstream = await self._pooled(exchange, instance, body)
            else:
                response = await self._via_aiohttp(exchange, instance, body)
        except (TimeoutError, UpstreamError, aiohttp.ClientError) as exc:
            instance.in_flight -= 1
            raise self._failed(exchange, exc, max_body) from exc
        except PayloadTooLarge as exc:  # the body the client streamed passed the route's limit
            instance.in_flight -= 1
            _fault(exchange, "body_too_large", exc)
            raise PayloadTooLarge(details={"limit": max_body}) from exc
        except (ConnectionError, asyncio.IncompleteReadError) as exc:  # raised by the client's body
            instance.in_flight -= 1
            raise self._failed(exchange, exc, max_body) from exc
        except BaseException:
            instance.in_flight -= 1
            raise
        exchange.held = instance
        timer = self._upstream_timers.get(service.name)
        if timer is None:
            timer = self._upstream_timers[service.name] = self.resources.metrics.upstream_seconds.labels(service.name)
        self.resources.metrics.tally.observe(timer, time.perf_counter() - started)
        if not 200 <= response.status <= 599:
            # 1xx here would be an unsolicited interim or a switch of protocols nobody asked for.
            response.close()
            exchange.upstream_fault = "invalid"
            exchange.failure = f"upstream answered with an invalid status {response.status}"
            raise _invalid_response(service.name)
        headers = client_response_headers(response.headers, response.status)
        headers["X-Gateway-Service"] = service.name
        return Reply(response.status, headers, upstream=response)

    async def _pooled(self, exchange: Exchange, instance: Instance, body: Body) -> UpstreamResponse:
        """Through the gateway's own keep-alive pool (http:// instances)."""
        pool = self.resources.pool
        assert pool is not None and instance.origin is not None, "the upstream pool opens with the app"
        timeout = exchange.route.timeout  # type: ignore[union-attr]
        total = timeout.total if exchange.deadline is None else _within(timeout.total, exchange.deadline)
        request = exchange.request
        target = instance.base_path + exchange.upstream_path
        length = request.content_length if body is not None and not isinstance(body, bytes) else None
        for attempt in (1, 2):
            try:
                return await pool.request(
                    instance.origin,
                    request.method,
                    target,
                    exchange.upstream_headers,  # type: ignore[arg-type]
                    body,
                    connect_timeout=timeout.sock_connect,
                    read_timeout=timeout.sock_read,
                    total_timeout=total,
                    content_length=length,
                )
            except UpstreamResetError as exc:
                # A kept-alive connection the instance had closed, found dead before anything was
                # written: the request never left, so sending it on a fresh connection is safe.
                if not exc.sent_nothing or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _via_aiohttp(self, exchange: Exchange, instance: Instance, body: Body) -> aiohttp.ClientResponse:
        """Through aiohttp's client (https:// instances)."""
        session = self.resources.session
        assert session is not None, "the upstream session opens with the app"
        route = exchange.route
        assert route is not None
        timeout = route.timeout
        if exchange.deadline is not None:
            timeout = dataclasses.replace(timeout, total=_within(timeout.total, exchange.deadline))
        return await session.request(
            exchange.request.method,
            URL(instance.url + exchange.upstream_path, encoded=True),
            headers=exchange.upstream_headers,
            data=body,
            timeout=timeout,
            allow_redirects=False,
        )

    def _failed(self, exchange: Exchange, exc: BaseException, max_body: int) -> GatewayError:
        """The client's error for an upstream call that failed, with the failure recorded on the exchange."""
        service = exchange.service
        exchange.request_unsent = _never_sent(exc)
        if isinstance(exc, TimeoutError):
            _fault(exchange, "timeout", exc)
            return GatewayTimeout(details={"service": service})
        if exchange.state.get(_BODY_TOO_LARGE):  # aiohttp's client wraps the body's own error
            _fault(exchange, "body_too_large", exc)
            return PayloadTooLarge(details={"limit": max_body})
        if exchange.state.get(_BODY_BROKEN):
            exchange.failure = "the request body's framing is broken"
            return BadRequest("Malformed request body", headers={"Connection": "close"})
        if exchange.state.get(_CLIENT_GONE) or isinstance(exc, RequestBodyLengthError):
            exchange.failure = "client closed the connection during the upload"
            return ClientClosedRequest()  # the client's doing, not the instance's
        if isinstance(exc, UpstreamProtocolError):
            _fault(exchange, "invalid", exc)
            return _invalid_response(service)
        _fault(exchange, "connect", exc)
        return BadGateway(details={"service": service})

    def _finish(self, exchange: Exchange) -> None:
        """Every upstream failure is counted here, once, whichever stage it happened in; the request goes
        into the last minute of the instance that answered it (the last attempt's)."""
        exchange.release_instance()
        instance = exchange.instance
        if instance is not None:
            instance.window.record(exchange.status, exchange.elapsed)
        if exchange.upstream_fault is not None:
            self.resources.metrics.upstream_errors.labels(exchange.service, exchange.upstream_fault).inc()


def _within(total: float | None, deadline: float) -> float:
    """The route's total timeout, shortened to end by deadline (a perf_counter() time)."""
    left = max(deadline - time.perf_counter(), 0.001)
    return left if total is None else min(total, left)


def _never_sent(exc: BaseException) -> bool:
    """Whether the request failed before any of it could reach the instance: no connection was opened
    (refused, unreachable, connect timeout), or the kept-alive one was found dead before writing."""
    if isinstance(exc, UpstreamTimeout):
        return exc.phase == "connect"
    if isinstance(exc, UpstreamResetError):
        return exc.sent_nothing
    return isinstance(exc, (UpstreamConnectError, aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))


def _invalid_response(service: str) -> BadGateway:
    return BadGateway("Bad Gateway: the service sent an invalid response", details={"service": service})


def _fault(exchange: Exchange, kind: str, cause: BaseException) -> None:
    """Record an upstream failure: counted by the finish hook, explained in the access log line."""
    exchange.upstream_fault = kind
    instance = exchange.instance.url if exchange.instance else "?"
    exchange.failure = f"upstream {kind} ({instance}): {cause.__class__.__name__}"


async def _capped_body(content: aiohttp.StreamReader, limit: int, exchange: Exchange) -> AsyncIterator[bytes]:
    """Stream the request body, stopping once it passes the limit (also for chunked bodies)."""
    total = 0
    try:
        async for chunk in content.iter_any():
            total += len(chunk)
            if total > limit:
                exchange.state[_BODY_TOO_LARGE] = True
                raise PayloadTooLarge()
            yield chunk
    except (ConnectionError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError):
        exchange.state[_CLIENT_GONE] = True
        raise
    except HttpProcessingError as exc:  # the body's framing broke after the request was dispatched
        exchange.state[_BODY_BROKEN] = True
        raise ConnectionResetError("the request body's framing is broken") from exc


async def write_reply(request: web.BaseRequest, exchange: Exchange, reply: Reply) -> web.StreamResponse:
    """Send the reply, streaming an upstream body chunk by chunk; record status and bytes on the exchange."""
    headers = reply.headers
    for name, value in exchange.response_headers:
        headers.add(name, value)
    headers.update(exchange.response_header_overrides)
    exchange.status = reply.status
    upstream = reply.upstream
    if upstream is None:
        return await _send_whole(request, exchange, web.Response(status=reply.status, body=reply.body, headers=headers))

    # aiohttp would add its own Server header (with its version) to a response that has none.
    headers.setdefault("Server", SERVER)
    length = upstream.content_length
    if length is not None and length <= _BUFFERED_BODY_LIMIT and request.method != "HEAD":
        return await _write_small(request, exchange, reply, headers)

    stream = web.StreamResponse(status=reply.status, reason=upstream.reason, headers=headers)
    try:
        if await _prepare(request, exchange, stream):
            if request.method == "HEAD" or reply.status in _NO_BODY_STATUSES:
                await _finish(exchange, stream)
            else:
                await _pump(request, exchange, upstream, stream)
        return stream
    finally:
        if exchange.failure is None and upstream.content.at_eof():
            upstream.release()
        else:
            upstream.close()


async def _prepare(request: web.BaseRequest, exchange: Exchange, response: web.StreamResponse) -> bool:
    """Send the status line and headers; False when the client is gone."""
    try:
        await response.prepare(request)
    except ConnectionError:
        exchange.failure = exchange.failure or "client closed the connection"
        return False
    return True


async def _to_client(exchange: Exchange, write: Awaitable[None], size: int) -> bool:
    """Await one write to the client; False (and the reason on the exchange) when the client is gone."""
    try:
        await write
    except ConnectionError:
        exchange.failure = exchange.failure or "client closed the connection"
        return False
    exchange.bytes_sent += size
    return True


async def _finish(exchange: Exchange, response: web.StreamResponse, body: bytes = b"") -> None:
    """Write the last bytes and end the response."""
    await _to_client(exchange, response.write_eof(body), len(body))


async def _pump(request: web.BaseRequest, exchange: Exchange, upstream: Upstream, stream: web.StreamResponse) -> None:
    """Copy the upstream body to the client; a failure is blamed on the side that failed."""
    content = upstream.content
    while True:
        try:
            chunk = await content.readany()
        except (TimeoutError, UpstreamError, aiohttp.ClientError) as exc:
            _abort(request, exchange, exc)
            return
        if not chunk:
            await _finish(exchange, stream)
            return
        if not await _to_client(exchange, stream.write(chunk), len(chunk)):
            return


async def _write_small(
    request: web.BaseRequest, exchange: Exchange, reply: Reply, headers: CIMultiDict[str]
) -> web.StreamResponse:
    """A small body with a known length is read whole and sent in one write: one syscall instead of
    several, and an instance that breaks off mid-body still gets the client a clean 502."""
    upstream = reply.upstream
    assert upstream is not None
    try:
        body = await upstream.read()
    except (TimeoutError, UpstreamError, aiohttp.ClientError) as exc:
        upstream.close()
        timed_out = isinstance(exc, TimeoutError)
        _fault(exchange, "timeout" if timed_out else "reset", exc)
        details = {"service": exchange.service}
        error = GatewayTimeout(details=details) if timed_out else BadGateway(
            "Bad Gateway: the service broke off its response", details=details
        )
        return await write_reply(request, exchange, exchange.error_reply(error))
    finally:
        upstream.release()
    # The length is now known for sure; the headers otherwise stay as the instance sent them.
    headers["Content-Length"] = str(len(body))
    status = reply.status
    if status < 200 or status in _NO_BODY_STATUSES:
        # aiohttp's rules about which framing headers such a status may carry apply.
        response = web.Response(status=status, reason=upstream.reason, headers=headers, body=body)
        if await _prepare(request, exchange, response):
            await _to_client(exchange, response.write_eof(), len(body))
        return response
    reason = upstream.reason if upstream.reason is not None else reason_phrase(status)
    sent, delivered = await send_whole(request, status, reason, headers, body)
    if delivered:
        exchange.bytes_sent += len(body)
    else:
        exchange.failure = exchange.failure or "client closed the connection"
    return sent


async def _send_whole(request: web.BaseRequest, exchange: Exchange, response: web.Response) -> web.Response:
    if await _prepare(request, exchange, response) and await _to_client(exchange, response.write_eof(), 0):
        exchange.bytes_sent = response.content_length or 0
    return response


def _abort(request: web.BaseRequest, exchange: Exchange, cause: BaseException) -> None:
    """Headers are already out: the only honest signal left is to cut the client connection."""
    _fault(exchange, "timeout" if isinstance(cause, TimeoutError) else "reset", cause)
    if request.transport is not None:
        request.transport.close()
