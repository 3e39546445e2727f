"""A health endpoint's status decides; its body is read only a little, so an endless one cannot hold a poll."""
from __future__ import annotations

import asyncio
import time

from aiohttp import web

from gateway.config.schema import HealthCheck
from gateway.config.settings import Settings
from gateway.health import HealthPoller
from gateway.proxy import open_upstream_session
from gateway.resources import Resources
from gateway.routing import Instance, InstanceState, RouteTable, Service
from tests.integration.helpers import StartUpstream


async def _endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200)
    await response.prepare(request)
    while True:  # a status page that streams forever
        await response.write(b"x" * 4096)
        await asyncio.sleep(0.005)


async def test_an_endless_200_body_passes_the_poll_without_waiting_for_its_end(start_upstream: StartUpstream) -> None:
    app = web.Application()
    app.router.add_get("/health", _endless)
    url = await start_upstream(app)
    resources = Resources(settings=Settings())
    resources.session = open_upstream_session()
    try:
        instance = Instance(url)
        service = Service("svc", (instance,), HealthCheck(timeout=1.0))

        def no_table() -> RouteTable:
            raise AssertionError("not used")

        started = time.monotonic()
        await HealthPoller(no_table, resources).check(service, instance)

        assert instance.state is InstanceState.HEALTHY, instance.last_error
        assert time.monotonic() - started < 0.9  # not held until the poll's timeout
    finally:
        await resources.session.close()
