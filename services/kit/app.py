"""Build a service's aiohttp app from its declaration.

Resources open in cleanup_ctx generators, in this order, and close in reverse, also when start-up
fails half way: database (migrated) -> token verifier -> HTTP client -> bus and outbox relay ->
the service's own lifespan. Shutdown (SIGTERM/SIGINT, see services/kit/server.py): health turns 503
and consuming stops first, in-flight requests and event handlers finish, then the relay flushes what
they committed, then the bus disconnects.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from aiohttp import web

from gateway.logs import log_fields
from services.kit.http import endpoint, health_endpoint, kit_middleware, metrics_endpoint
from services.kit.keys import RUNTIME_KEY
from services.kit.openapi import document
from services.kit.runtime import Runtime
from services.kit.service import Service
from services.kit.settings import ServiceSettings

log = logging.getLogger("services.kit")

CLIENT_MAX_SIZE = 1024 * 1024
"""Largest request body a service reads (413 above it)."""

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def openapi_endpoint(service: Service) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """GET /openapi.json: built once, on first request (every route module is imported by then)."""
    body: bytes | None = None

    async def openapi(_request: web.Request) -> web.StreamResponse:
        nonlocal body
        if body is None:
            body = orjson.dumps(document(service))
        return web.Response(body=body, content_type="application/json")

    return openapi


def build_app(service: Service, settings: ServiceSettings) -> web.Application:
    runtime = Runtime(service, settings)
    app = web.Application(middlewares=[kit_middleware(runtime)], client_max_size=CLIENT_MAX_SIZE)
    app[RUNTIME_KEY] = runtime
    app.router.add_get("/health", health_endpoint(runtime))
    app.router.add_get("/metrics", metrics_endpoint(runtime))
    app.router.add_get("/openapi.json", openapi_endpoint(service))
    for spec in service.routes:
        app.router.add_route(spec.method, spec.path, endpoint(spec, runtime))
    app.cleanup_ctx.extend([_database(runtime), _verifier(runtime), _client(runtime), _events(runtime)])
    if service.lifespan is not None:
        app.cleanup_ctx.append(_lifespan(runtime))
    app.on_shutdown.append(_begin_shutdown(runtime))
    return app


def _database(runtime: Runtime) -> CleanupContext:
    async def database(_app: web.Application) -> AsyncIterator[None]:
        try:
            await runtime.db.open(runtime.service.migrations)
            yield
        finally:
            await runtime.db.close()

    return database


def _verifier(runtime: Runtime) -> CleanupContext:
    async def verifier(_app: web.Application) -> AsyncIterator[None]:
        # A verifier with remote keys (JWKS) has start() and close(); the HS256 one has neither.
        start = getattr(runtime.verifier, "start", None)
        if start is not None:
            await start()
        try:
            yield
        finally:
            close = getattr(runtime.verifier, "close", None)
            if close is not None:
                await close()

    return verifier


def _client(runtime: Runtime) -> CleanupContext:
    async def client(_app: web.Application) -> AsyncIterator[None]:
        await runtime.client.open()
        try:
            yield
        finally:
            await runtime.client.close()

    return client


def _events(runtime: Runtime) -> CleanupContext:
    async def events(_app: web.Application) -> AsyncIterator[None]:
        await runtime.bus.start(runtime.subscription)
        await runtime.relay.start()
        log.info(
            "service started",
            extra=log_fields(
                bus=runtime.bus.kind,
                consumes=sorted(runtime.service.handlers),
                database=str(runtime.db.path),
                signing=runtime.signer.algorithm if runtime.signer.unavailable is None else "unavailable",
            ),
        )
        if runtime.signer.unavailable is not None:
            if runtime.settings.token_url is not None:  # fetched from user-service instead: as intended
                log.info(f"service tokens come from {runtime.settings.token_url}/service-tokens")
            else:
                log.warning(f"this service cannot sign tokens: {runtime.signer.unavailable}")
        try:
            yield
        finally:
            try:
                await runtime.relay.stop(flush_timeout=runtime.settings.platform.drain_timeout)
            finally:
                await runtime.bus.close()

    return events


def _lifespan(runtime: Runtime) -> CleanupContext:
    async def lifespan(_app: web.Application) -> AsyncIterator[None]:
        assert runtime.service.lifespan is not None
        async with runtime.service.lifespan(runtime):
            yield

    return lifespan


def _begin_shutdown(runtime: Runtime) -> Callable[[web.Application], Awaitable[None]]:
    async def begin_shutdown(_app: web.Application) -> None:
        runtime.draining = True
        await runtime.bus.stop_consuming(timeout=runtime.settings.platform.drain_timeout)

    return begin_shutdown
