"""The gateway's pages: API documentation under /api/docs and a live status dashboard under /dashboard.

    /api/docs                   Swagger UI over the platform's API (public)
    /api/docs/openapi.json      the OpenAPI 3.1 document, from the route table and the services' documents
    /api/docs/openapi-3.0.json  the same in OpenAPI 3.0 terms, which the bundled Swagger UI 4 reads
    /api/docs/static/<file>     Swagger UI's files and the pages' own
    /dashboard                  live status page (gateway.admin_networks applies, as for /metrics)
    /dashboard/data             the page's data in the success envelope (the polling fallback)
    /dashboard/events           the same data pushed as server-sent events every second
    /dashboard/static/<file>    the pages' own scripts and styles

They are gateway endpoints like /metrics: read-only (GET, HEAD), wrapped by the EDGE middleware, and
their errors use the error envelope. Templates and static files ship as package data; Swagger UI comes
from the swagger-ui-bundle package, so the pages need no internet.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, cast

import aiohttp
import aiohttp_jinja2
import jinja2
import orjson
from aiohttp import web
from multidict import CIMultiDict
from swagger_ui_bundle import swagger_ui_path

from gateway.admin import read_only
from gateway.errors import NotFound
from gateway.exchange import JSON_CONTENT_TYPE, SERVER, Exchange, Reply
from gateway.middleware.base import Handler
from gateway.pages.dashboard import FILTERS, Dashboard
from gateway.pages.dialects import to_openapi_30
from gateway.pages.openapi import build_document
from gateway.pages.specs import ServiceSpecs
from gateway.pages.static import LONG_CACHE, REVALIDATE, StaticFiles, cached_reply, index_folder

if TYPE_CHECKING:
    from gateway.app import Gateway

DOCS = "/api/docs"
DASHBOARD = "/dashboard"
DOCS_STATIC = DOCS + "/static/"
DASHBOARD_STATIC = DASHBOARD + "/static/"
OPENAPI_31 = DOCS + "/openapi.json"
OPENAPI_30 = DOCS + "/openapi-3.0.json"
_AREAS = (DOCS, DASHBOARD)
_UNDER_AREAS = (DOCS + "/", DASHBOARD + "/")

_HERE = Path(__file__).parent
_CSP_BASE = (
    "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _html_headers(style_src: str) -> CIMultiDict[str]:
    return CIMultiDict(
        {
            "Content-Type": "text/html; charset=utf-8",
            "Cache-Control": "no-cache",
            "Content-Security-Policy": f"{_CSP_BASE}; style-src {style_src}",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Server": SERVER,
        }
    )


class Page(NamedTuple):
    handler: Handler
    public: bool
    """Open to every client; otherwise gateway.admin_networks decides, as for the admin endpoints."""


class _Documents(NamedTuple):
    key: tuple[int, int]
    """(table revision, specs version) they were built from."""
    v31: bytes
    v31_etag: str
    v30: bytes
    v30_etag: str


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


class Pages:
    """Dispatch and handlers of the pages, and their background work (spec fetching, the live feed)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.specs = ServiceSpecs(lambda: gw.table, gw.resources)
        self.dashboard = Dashboard(gw)
        own = index_folder(_HERE / "static", REVALIDATE)
        self.docs_files = StaticFiles({**index_folder(Path(str(swagger_ui_path)), LONG_CACHE), **own})
        self.dashboard_files = StaticFiles(own)
        self._documents: _Documents | None = None
        pages: dict[str, Page] = {}
        for path in (DOCS, DOCS + "/"):
            pages[path] = Page(read_only(self.docs_page), public=True)
        pages[OPENAPI_31] = Page(read_only(self.openapi_31), public=True)
        pages[OPENAPI_30] = Page(read_only(self.openapi_30), public=True)
        for path in (DASHBOARD, DASHBOARD + "/"):
            pages[path] = Page(read_only(self.dashboard_page), public=False)
        pages[DASHBOARD + "/data"] = Page(read_only(self.dashboard_data), public=False)
        pages[DASHBOARD + "/events"] = Page(read_only(self.dashboard_events), public=False)
        areas = ((DOCS_STATIC, self.docs_files, True), (DASHBOARD_STATIC, self.dashboard_files, False))
        for area, files, public in areas:
            for name in files.sources:
                pages[area + name] = Page(read_only(functools.partial(files.reply, name=name)), public)
        self.pages = pages
        self._docs_missing = Page(self._not_found, public=True)
        self._dashboard_missing = Page(self._not_found, public=False)

    def match(self, path: str) -> Page | None:
        """The page at a (normalised) path; any other path under /api/docs or /dashboard is a 404 page."""
        if not path.startswith(_AREAS):  # every proxied request asks: answer it with one C call
            return None
        page = self.pages.get(path)
        if page is None and path.startswith(_UNDER_AREAS):
            return self._docs_missing if path.startswith(DOCS) else self._dashboard_missing
        return page

    def install(self, app: web.Application) -> None:
        """Set up the templates and the background work on the gateway's app."""
        aiohttp_jinja2.setup(
            app,
            loader=jinja2.PackageLoader("gateway.pages", "templates"),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            default_helpers=False,
            filters=FILTERS,
        )
        app.cleanup_ctx.append(self._background)
        app.on_shutdown.append(self._shutdown)

    async def _background(self, app: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(self.specs.run(), name="docs-specs"),
            asyncio.create_task(self.dashboard.run(), name="dashboard-feed"),
        ]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _shutdown(self, app: web.Application) -> None:
        # on_shutdown runs before aiohttp waits for running handlers: open pages must not hold the drain.
        self.dashboard.close()

    async def _not_found(self, exchange: Exchange) -> Reply:
        raise NotFound(f"No page at {exchange.request.path}")

    def _render(self, exchange: Exchange, template: str, style_src: str, **context: object) -> Reply:
        request = cast(web.Request, exchange.request)  # the app's router always hands the gateway a web.Request
        body = aiohttp_jinja2.render_string(template, request, context).encode()
        return Reply(200, _html_headers(style_src), body)

    async def docs_page(self, exchange: Exchange) -> Reply:
        self.specs.start()  # the fetches run while the browser loads Swagger UI
        # Swagger UI styles some elements inline.
        return self._render(exchange, "docs.html", "'self' 'unsafe-inline'", spec_url=OPENAPI_30, static=DOCS_STATIC)

    def documents(self) -> _Documents:
        """Both renditions of the OpenAPI document, rebuilt when the table or a service's document changed."""
        key = (self.gw.table.revision, self.specs.version)
        documents = self._documents
        if documents is None or documents.key != key:
            document = build_document(self.gw.table, self.specs.entries)
            v31 = orjson.dumps(document)
            v30 = orjson.dumps(to_openapi_30(document))
            documents = self._documents = _Documents(key, v31, _etag(v31), v30, _etag(v30))
        return documents

    async def openapi_31(self, exchange: Exchange) -> Reply:
        await self.specs.ready()
        documents = self.documents()
        return cached_reply(exchange, documents.v31, JSON_CONTENT_TYPE, documents.v31_etag, REVALIDATE)

    async def openapi_30(self, exchange: Exchange) -> Reply:
        await self.specs.ready()
        documents = self.documents()
        return cached_reply(exchange, documents.v30, JSON_CONTENT_TYPE, documents.v30_etag, REVALIDATE)

    async def dashboard_page(self, exchange: Exchange) -> Reply:
        self.dashboard.collect_rejections()
        snapshot = self.dashboard.snapshot()
        return self._render(
            exchange,
            "dashboard.html",
            "'self'",
            snapshot=snapshot,
            static=DASHBOARD_STATIC,
            data_url=DASHBOARD + "/data",
            events_url=DASHBOARD + "/events",
        )

    async def dashboard_data(self, exchange: Exchange) -> Reply:
        self.dashboard.collect_rejections()
        reply = exchange.json_reply(200, self.dashboard.snapshot())
        reply.headers["Cache-Control"] = "no-store"
        return reply

    async def dashboard_events(self, exchange: Exchange) -> Reply:
        headers = CIMultiDict(
            {
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # a buffering reverse proxy in front would hold the events back
                "Server": SERVER,
            }
        )
        if exchange.request.method == "HEAD":
            return Reply(200, headers)
        stream = self.dashboard.open_stream()
        # write_reply streams it like an upstream body (see EventStream).
        return Reply(200, headers, upstream=cast(aiohttp.ClientResponse, stream))
