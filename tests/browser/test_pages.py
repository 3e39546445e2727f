"""The pages as a person sees them, in a real headless Chromium: the dashboard follows an instance going
down without a page reload (over the event stream, and over the polling fallback), and the docs page
lists every route of the gateway with what Swagger UI makes of the services' own documents."""
from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from gateway.keys import GATEWAY_KEY
from tests.integration.helpers import Client, GatewayClient
from tests.support import service, write_registry

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Error, Frame, Page, Request

pytestmark = pytest.mark.browser

FAST_HEALTH = {"interval": "0.2s", "timeout": "0.5s"}
"""Health polling quick enough that a stopped instance is taken out within about half a second."""

PROFILE_SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "user-service", "version": "1.0.0"},
    "paths": {
        "/users/profile": {
            "get": {
                "operationId": "getProfile",
                "summary": "The caller's profile",
                "responses": {"200": {"description": "The profile"}},
            }
        },
        "/auth/login": {"post": {"summary": "Sign in", "responses": {"200": {"description": "A token"}}}},
    },
}


@dataclass
class Upstream:
    """A service instance the test can stop: /health, an optional /openapi.json, 200 for anything else."""

    spec: dict[str, Any] | None = None
    url: str = ""
    runner: web.AppRunner | None = field(default=None, repr=False)

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_get("/openapi.json", self.openapi)
        app.router.add_route("*", "/{tail:.*}", self.answer)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def openapi(self, request: web.Request) -> web.Response:
        if self.spec is None:
            raise web.HTTPNotFound()
        return web.json_response(self.spec)

    async def answer(self, request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    started: list[Upstream] = []

    async def start(spec: dict[str, Any] | None = None) -> Upstream:
        upstream = await Upstream(spec).start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        await upstream.stop()


class Watched:
    """What happened in a page besides what the test looks at: script errors, navigations, requests."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.console_errors: list[str] = []
        self.navigations = 0
        self.requests: list[str] = []
        page.on("pageerror", self._page_error)
        page.on("console", self._console)
        page.on("framenavigated", self._navigated)
        page.on("request", self._request)

    def _page_error(self, error: Error) -> None:
        self.errors.append(str(error))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _navigated(self, frame: Frame) -> None:
        if frame == self.page.main_frame:
            self.navigations += 1

    def _request(self, request: Request) -> None:
        self.requests.append(request.url)


def url(client: Client, path: str) -> str:
    return str(client.make_url(path))


@pytest.mark.parametrize("transport", ["events", "polling"])
async def test_the_dashboard_follows_an_instance_going_down_without_a_reload(
    browser: Browser,
    gateway_client: GatewayClient,
    upstreams: Callable[..., Awaitable[Upstream]],
    tmp_path: Path,
    transport: str,
) -> None:
    from playwright.async_api import expect  # after the chromium fixture: it reports a missing Playwright

    users = await upstreams()
    orders = await upstreams()
    registry = write_registry(
        tmp_path / "registry.yaml",
        {
            "user-service": service([users.url], "/api/v1/users", health=FAST_HEALTH),
            "order-service": service([orders.url], "/api/v1/orders", health=FAST_HEALTH),
        },
    )
    client = await gateway_client(registry)
    if transport == "polling":
        # Refuse every event stream (503): the page must fall back to polling /dashboard/data.
        client.app[GATEWAY_KEY].pages.dashboard.max_streams = 0
    page = await browser.new_page()
    watched = Watched(page)

    await page.goto(url(client, "/dashboard"))

    mode = "live" if transport == "events" else "polling"
    await expect(page.locator("#connection")).to_have_attribute("data-mode", mode, timeout=10_000)
    rows = page.locator("tr.service")
    user_row = page.locator('tr.service[data-service="user-service"]')
    order_row = page.locator('tr.service[data-service="order-service"]')
    await expect(rows).to_have_count(2)
    await expect(order_row).to_have_attribute("data-state", "up", timeout=10_000)
    await expect(user_row).to_have_attribute("data-state", "up", timeout=10_000)
    await expect(order_row.locator("li.instance")).to_have_attribute("data-instance", orders.url)
    await expect(user_row.locator("li.instance code")).to_have_text(users.url)
    await page.evaluate("() => { window.kadaiMarker = 'the same page' }")

    for _ in range(5):
        assert (await client.get("/api/v1/users/profile")).status == 200
    await expect(user_row.locator('[data-field="rate"]')).not_to_have_text("0.00/s", timeout=10_000)
    # The instance that answered shows its own figures, redrawn by the page (it loaded before the traffic).
    user_instance = user_row.locator("li.instance")
    await expect(user_instance.locator('[data-figure="rate"]')).not_to_have_text("0.00/s", timeout=10_000)
    await expect(user_instance.locator('[data-figure="errors"]')).to_have_text("0.0%")
    await expect(user_instance.locator('[data-figure="p99"]')).to_have_text(re.compile(r"^\d+\.\d ms$"))
    await expect(order_row.locator('li.instance [data-figure="p99"]')).to_have_text("\u2014")  # no requests yet

    await orders.stop()

    await expect(order_row).to_have_attribute("data-state", "down", timeout=10_000)
    await expect(order_row.locator("td .badge").first).to_have_text("down")
    await expect(order_row.locator("li.instance")).to_have_attribute("data-state", "unhealthy")
    await expect(order_row.locator("li.instance .error")).to_contain_text("Cannot connect")
    await expect(page.locator("#status")).to_have_text("degraded")
    await expect(user_row).to_have_attribute("data-state", "up")
    assert await page.evaluate("() => window.kadaiMarker") == "the same page"
    assert watched.navigations == 1
    assert watched.errors == []
    polled = any(request.endswith("/dashboard/data") for request in watched.requests)
    assert any(request.endswith("/dashboard/events") for request in watched.requests)
    if transport == "events":
        assert not polled
        assert watched.console_errors == []
    else:
        assert polled


async def test_the_docs_page_lists_every_route(
    browser: Browser,
    gateway_client: GatewayClient,
    upstreams: Callable[..., Awaitable[Upstream]],
    tmp_path: Path,
) -> None:
    from playwright.async_api import expect

    users = await upstreams(PROFILE_SPEC)
    orders = await upstreams()  # publishes no document
    registry = write_registry(
        tmp_path / "registry.yaml",
        {
            "user-service": service([users.url], {"prefix": "/api/v1/users", "auth": True}, "/api/v1/auth"),
            "order-service": service([orders.url], "/api/v1/orders"),
        },
    )
    client = await gateway_client(registry)
    await merged(client)
    page = await browser.new_page()
    watched = Watched(page)

    await page.goto(url(client, "/api/docs"))

    operations = page.locator(".opblock-summary-path")
    await expect(operations.first).to_be_visible(timeout=15_000)
    paths = set(await operations.evaluate_all("spans => spans.map(span => span.getAttribute('data-path'))"))
    assert paths >= {
        "/api/v1/users/profile", "/api/v1/auth/login", "/api/v1/orders/{path}",
        "/api/v1/health", "/api/v1/health/detailed", "/api/v1/gateway/status", "/api/v1/gateway/services", "/metrics",
    }
    tags = await page.locator(".opblock-tag").evaluate_all("tags => tags.map(tag => tag.getAttribute('data-tag'))")
    assert tags == ["gateway", "user-service", "order-service"]
    profile = page.locator(".opblock", has=page.locator('.opblock-summary-path[data-path="/api/v1/users/profile"]'))
    login = page.locator(".opblock", has=page.locator('.opblock-summary-path[data-path="/api/v1/auth/login"]'))
    await expect(profile.locator(".authorization__btn")).to_have_count(1)  # needs a bearer token
    await expect(login.locator(".authorization__btn")).to_have_count(0)

    await profile.locator(".opblock-summary").click()

    responses = profile.locator(".responses-table .response-col_status")
    await expect(responses.first).to_be_visible()
    statuses = [text.strip() for text in await responses.all_inner_texts()]
    assert {"200", "401", "502", "503", "504"} <= set(statuses)
    await expect(page.locator(".errors-wrapper")).to_have_count(0)
    assert watched.errors == [] and watched.console_errors == []
    origin = url(client, "/")
    assert watched.requests and all(request.startswith(origin) for request in watched.requests)  # nothing online


async def merged(client: Client) -> None:
    """Wait until user-service's own document is part of the gateway's."""
    deadline = asyncio.get_running_loop().time() + 5.0
    while True:
        document = await (await client.get("/api/docs/openapi.json")).json()
        if document["x-kadai"]["services"]["user-service"]["status"] == "merged":
            return
        assert asyncio.get_running_loop().time() < deadline, "user-service's document was not merged within 5 s"
        await asyncio.sleep(0.05)
