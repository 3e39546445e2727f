"""The gateway application: dispatch each request to a gateway endpoint or a route's chain.

    request -> target normalised -> gateway endpoint? -> edge chain -> endpoint handler (admin or page)
                                 -> route matched?    -> route chain -> Forwarder -> instance
                                 -> neither           -> edge chain -> 404 envelope
    chain's Reply (or the GatewayError it raised, rendered once) -> write_reply -> finish hooks
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import HttpVersion11, web

from gateway.admin import admin_endpoints
from gateway.auth import TokenVerifier
from gateway.config.loader import load_registry
from gateway.config.schema import GatewayOptions, RegistryConfig
from gateway.config.settings import Settings
from gateway.errors import (
    BadRequest,
    ClientClosedRequest,
    ExpectationFailed,
    Forbidden,
    GatewayError,
    InternalError,
    NotFound,
)
from gateway.exchange import Exchange, Reply
from gateway.headers import client_address, in_networks, upstream_request_headers
from gateway.keys import GATEWAY_KEY
from gateway.middleware.base import Handler
from gateway.pages import Pages
from gateway.paths import Target, split_target
from gateway.health import HealthPoller
from gateway.proxy import Forwarder, open_upstream_session, write_reply
from gateway.ratelimit import close_process_limiter
from gateway.redis_client import redis_client_context
from gateway.reload import RegistryWatcher, ReloadStatus
from gateway.resources import Resources
from gateway.routing import RouteTable, build_table
from gateway.upstream import UpstreamPool

log = logging.getLogger("gateway")

UPSTREAM_CONNECTIONS_PER_INSTANCE = 512
"""Open connections to one instance at most; more concurrent requests wait (within the connect timeout)."""


class Gateway:
    """Owns the live route table and handles every request of the process."""

    def __init__(self, settings: Settings, registry_path: str | Path, resources: Resources | None = None) -> None:
        self.registry_path = Path(registry_path)
        self.resources = resources or Resources(settings)
        self.forward = Forwarder(self.resources)
        self.endpoints = admin_endpoints(self)
        self.pages = Pages(self)
        config = load_registry(self.registry_path)
        self.table: RouteTable = build_table(config, self.resources, self.forward, revision=1)
        self.resources.metrics.config_revision.set(1)
        self.watcher = RegistryWatcher(
            self.registry_path,
            current_digest=config.digest,
            current_revision=1,
            apply=self.apply,
            report=self._record_reload,
            interval=settings.reload_interval,
        )

    def apply(self, config: RegistryConfig) -> int:
        """Swap in a new table; requests already running keep the one they started with."""
        revision = self.table.revision + 1
        self.table = build_table(config, self.resources, self.forward, revision, previous=self.table)
        self.resources.metrics.config_revision.set(revision)
        return revision

    def _record_reload(self, status: ReloadStatus) -> None:
        self.resources.reload_status = status
        self.resources.metrics.config_reloads.labels("ok" if status.ok else "failed").inc()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        table = self.table
        options = table.config.gateway
        peer, client_ip, trusted_peer = _identify(request, options)
        exchange = Exchange(request, client_ip)
        chain: Handler = table.edge_chain
        try:
            if "Expect" in request.headers and request.headers["Expect"].lower() != "100-continue":
                raise ExpectationFailed(f"Unsupported expectation: {request.headers['Expect']}")
            target = _request_target(request)
            endpoint = self.endpoints.get(target.path)
            public = False
            if endpoint is None and (page := self.pages.match(target.path)) is not None:
                endpoint, public = page  # /api/docs and /dashboard, sub-paths included
            if endpoint is not None:
                networks = options.admin_networks
                if networks and not public and not in_networks(exchange.client_ip, networks):
                    raise Forbidden("This endpoint is not open to your network")
                exchange.terminal = endpoint
            else:
                route = table.match(target.path)
                if route is None:
                    raise NotFound(f"No route for {target.path}")
                exchange.route = route
                exchange.service = route.service.name
                exchange.upstream_path = _upstream_path(target, route.config.options.strip_prefix)
                exchange.upstream_headers = upstream_request_headers(
                    request.headers,
                    peer=peer,
                    scheme=request.scheme,
                    service=route.service.name,
                    from_trusted_proxy=trusted_peer,
                    body_length=request.content_length,
                )
                chain = route.chain
        except GatewayError as error:
            exchange.terminal = _raiser(error)
        return await self._run(exchange, chain)

    async def refuse(self, request: web.BaseRequest, error: GatewayError) -> web.StreamResponse:
        """Answer a request aiohttp refused before dispatch, through the edge chain like any other."""
        exchange = Exchange(request, _identify(request, self.table.config.gateway)[1])
        exchange.terminal = _raiser(error)
        return await self._run(exchange, self.table.edge_chain)

    async def _run(self, exchange: Exchange, chain: Handler) -> web.StreamResponse:
        request = exchange.request
        try:
            try:
                reply = await chain(exchange)
            except GatewayError as error:
                reply = exchange.error_reply(error)
            except Exception:
                log.exception("unhandled error while handling %s %s", request.method, request.path)
                reply = exchange.error_reply(InternalError())
            return await write_reply(request, exchange, reply)
        except asyncio.CancelledError:
            # The client hung up (handler cancellation), or the drain at shutdown ran out of time.
            exchange.failure = exchange.failure or "cancelled: the client went away or the drain timed out"
            exchange.status = exchange.status or ClientClosedRequest.status
            raise
        finally:
            # Also when cancelled: gauges and instance counters must come back down.
            for hook in exchange.finish_hooks:
                try:
                    hook(exchange)
                except Exception:
                    log.exception("a finish hook failed")

    async def expect_continue(self, request: web.BaseRequest) -> None:
        """Send 100 Continue only for a body the route will accept; otherwise the handler answers
        (413 without the client ever sending the body, 417 for an unknown expectation)."""
        if request.version != HttpVersion11 or request.headers.get("Expect", "").lower() != "100-continue":
            return
        length = request.content_length
        if length is not None:
            try:
                route = self.table.match(_request_target(request).path)
            except GatewayError:
                return
            if route is None or length > route.config.options.max_body_size:
                return
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0



def _identify(request: web.BaseRequest, options: GatewayOptions) -> tuple[str, str, bool]:
    """(peer address, client address, whether the peer is a trusted proxy), each worked out once."""
    peer = request.remote or "unknown"
    if not (options.trusted_proxies and in_networks(peer, options.trusted_proxies)):
        return peer, peer, False
    forwarded_for = request.headers.getall("X-Forwarded-For", ())
    return peer, client_address(peer, forwarded_for, options.trusted_proxies), True


def _request_target(request: web.BaseRequest) -> Target:
    raw = request.raw_path
    if not raw.startswith("/"):
        if request.url.is_absolute() and request.rel_url.raw_path.startswith("/"):
            raw = request.rel_url.raw_path_qs  # absolute-form target: route on its path
        else:
            raise BadRequest("Unsupported request target")
    return split_target(raw)


def _upstream_path(target: Target, strip: str) -> str:
    path = target.encoded[len(strip):] if strip else target.encoded
    if not path.startswith("/"):
        path = "/" + path
    return f"{path}?{target.query}" if target.query else path


def _raiser(error: GatewayError) -> Handler:
    async def raise_error(exchange: Exchange) -> Reply:
        raise error

    return raise_error


@web.middleware
async def _envelope_for_router_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Requests aiohttp's router itself refuses (a target like `*`) still get the error envelope."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = GatewayError(exc.reason)
        error.status = exc.status
        return await request.app[GATEWAY_KEY].refuse(request, error)


def create_app(gw: Gateway) -> web.Application:
    # auto_decompress=False: a request body goes upstream exactly as the client encoded it.
    app = web.Application(
        middlewares=[_envelope_for_router_errors], handler_args={"max_field_size": 8190, "auto_decompress": False}
    )
    app[GATEWAY_KEY] = gw
    # [\s\S]: a decoded %0A in the path must reach the gateway (and its 400), not fall out of the router.
    app.router.add_route("*", r"/{tail:[\s\S]*}", gw.handle, expect_handler=gw.expect_continue)
    app.cleanup_ctx.append(_upstream_session)
    app.cleanup_ctx.append(_token_verifier)
    app.cleanup_ctx.append(redis_client_context)
    app.cleanup_ctx.append(_rate_limiter)
    app.cleanup_ctx.append(_registry_watcher)
    app.cleanup_ctx.append(_health_poller)
    gw.pages.install(app)
    return app


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    resources = app[GATEWAY_KEY].resources
    resources.session = open_upstream_session()
    resources.pool = UpstreamPool(max_per_origin=UPSTREAM_CONNECTIONS_PER_INSTANCE, idle_timeout=30.0)
    yield
    await resources.pool.close()
    await resources.session.close()
    resources.pool = None
    resources.session = None


async def _token_verifier(app: web.Application) -> AsyncIterator[None]:
    """One verifier per process (route chains come and go with reloads; its cache and keys stay)."""
    resources = app[GATEWAY_KEY].resources
    verifier = resources.verifier
    created = verifier is None
    if verifier is None:
        verifier = resources.verifier = TokenVerifier(resources.settings)
    await verifier.start()
    resources.components["jwt"] = verifier.describe
    yield
    resources.components.pop("jwt", None)
    await verifier.close()
    if created:
        resources.verifier = None


async def _rate_limiter(app: web.Application) -> AsyncIterator[None]:
    """The limiter's backend may hold a Redis connection of its own: closed at shutdown."""
    yield
    await close_process_limiter(app[GATEWAY_KEY].resources)


async def _registry_watcher(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[GATEWAY_KEY].watcher.run(), name="registry-watcher")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _health_poller(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY_KEY]
    poller = HealthPoller(lambda: gw.table, gw.resources)
    task = asyncio.create_task(poller.run(), name="health-poller")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
