"""Proxied requests go straight from aiohttp's server to the gateway, past the Application machinery.

aiohttp's Application resolves a route (a regex match and a MatchInfo per request) and runs its own
middleware chain before the gateway's handler is reached; for the one catch-all route the gateway has,
that is pure cost on every proxied request. After runner.setup(), the runner's server is given a
dispatcher that calls Gateway.handle directly, and still hands the pages (/api/docs, /dashboard: they
render templates through the Application) to the Application's own handler.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.app import Gateway
from gateway.pages import DASHBOARD, DOCS

RequestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

_DOCS, _DASHBOARD = DOCS, DASHBOARD


def use_direct_dispatch(runner: web.AppRunner, gw: Gateway) -> None:
    """After runner.setup(): route every request but the pages' straight to gw.handle."""
    server = runner.server
    if server is None:
        raise RuntimeError("use_direct_dispatch() needs a set-up runner")
    through_application = server.request_handler
    handle = gw.handle
    expect_continue = gw.expect_continue

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        # "in", not startswith: a target that normalises to a page (/x/../dashboard) must get there too.
        if _DOCS in path or _DASHBOARD in path:
            return await through_application(request)
        if "Expect" in request.headers:
            # What the Application does for a route's expect handler: 100 Continue (or not) before the body.
            await expect_continue(request)
            await request.writer.drain()
        return await handle(request)

    server.request_handler = dispatch
