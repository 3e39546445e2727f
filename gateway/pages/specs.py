"""The services' own OpenAPI documents, fetched in the background for the API docs.

Nothing is fetched until the docs are first asked for: a gateway whose docs nobody reads never calls
the services' /openapi.json. From then on, one routable instance of each service is asked for
`GET /openapi.json` (best effort, short timeout, size cap) at once, when a registry reload adds the
service or changes its instances, and every REFRESH seconds; a failed fetch is retried sooner. The last
good document stays in use when a refresh fails. Proxied traffic never waits for any of it; only the
very first docs request waits for the first round, at most about TIMEOUT.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.envelope import utc_timestamp
from gateway.logs import log_fields
from gateway.resources import Resources
from gateway.routing import RouteTable, Service

log = logging.getLogger("gateway.docs")

SPEC_PATH = "/openapi.json"
_USER_AGENT = "kadai-gateway-docs"


@dataclass(frozen=True, slots=True)
class SpecEntry:
    """What is known about one service's document."""

    document: dict[str, Any] | None
    """The last good document; None until one was fetched."""
    instance: str | None
    """The instance it came from (or the one that failed, for a service without a document)."""
    fetched_at: float | None
    """Wall-clock time the document was fetched."""
    checked_at: float
    """Monotonic time of the last attempt, successful or not."""
    instances: tuple[str, ...]
    """The service's instance URLs at that attempt: a reload that changes them makes the service due."""
    error: str | None = None
    """Why the last attempt failed; None when it succeeded."""

    def describe(self) -> dict[str, object]:
        return {
            "status": "merged" if self.document is not None else "unavailable",
            "instance": self.instance,
            "fetchedAt": utc_timestamp(self.fetched_at) if self.fetched_at is not None else None,
            "error": self.error,
        }


class SpecFetchError(Exception):
    """A service's document could not be fetched or is not an OpenAPI 3 document."""


class ServiceSpecs:
    """Cache of each service's OpenAPI document, kept fresh by `run()` while the app runs."""

    REFRESH = 60.0
    """Seconds between two fetches of a service's document."""
    RETRY = 10.0
    """Seconds before a failed fetch is tried again."""
    TIMEOUT = 2.0
    """Longest wait for one fetch, body included."""
    MAX_BYTES = 4 * 1024 * 1024
    """Largest document accepted."""
    TICK = 0.5
    """How often the cache looks for due services (bounds how late a reload shows up)."""

    def __init__(self, table: Callable[[], RouteTable], resources: Resources) -> None:
        self.table = table
        self.resources = resources
        self.entries: dict[str, SpecEntry] = {}
        self.version = 0
        """Goes up whenever a document appears, changes or goes away: the docs rebuild on a change."""
        self.refresh = self.REFRESH
        self.retry = self.RETRY
        self.timeout = self.TIMEOUT
        self.max_bytes = self.MAX_BYTES
        self._wanted = asyncio.Event()
        self._first_round = asyncio.Event()

    def start(self) -> None:
        """Start the refreshes (the docs were asked for)."""
        self._wanted.set()

    async def ready(self) -> None:
        """Start the refreshes, and wait for their first round if it has not ended yet."""
        self._wanted.set()
        if not self._first_round.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._first_round.wait(), self.timeout + 1.0)

    async def run(self) -> None:
        await self._wanted.wait()
        while True:
            try:
                await self.refresh_due(time.monotonic())
            except Exception:  # a bug here must not end the refreshes for good
                log.exception("refreshing the services' OpenAPI documents failed")
            self._first_round.set()
            await asyncio.sleep(self.TICK)

    async def refresh_due(self, now: float) -> None:
        """Fetch the documents of the services that are due, all at once; forget removed services."""
        services = self.table().services
        for name in [name for name in self.entries if name not in services]:
            del self.entries[name]
            self.version += 1
        due = [service for service in services.values() if self._due(service, now)]
        if due:
            await asyncio.gather(*(self._refresh(service) for service in due))

    def _due(self, service: Service, now: float) -> bool:
        entry = self.entries.get(service.name)
        if entry is None or entry.instances != tuple(instance.url for instance in service.instances):
            return True
        wait = self.refresh if entry.error is None else self.retry
        return now - entry.checked_at >= wait

    async def _refresh(self, service: Service) -> None:
        previous = self.entries.get(service.name)
        urls = tuple(instance.url for instance in service.instances)
        instance = next((candidate for candidate in service.instances if candidate.routable), None)
        try:
            if instance is None:
                raise SpecFetchError("no routable instance")
            document = await self._fetch(instance.url + SPEC_PATH)
        except SpecFetchError as exc:
            entry = _failed(previous, instance.url if instance else None, urls, str(exc))
            if previous is None or previous.error is None:
                # Once per failure streak: a service without a document is normal while specs roll out.
                log.info(
                    "no OpenAPI document from %s: %s", service.name, exc,
                    extra=log_fields(service=service.name, instance=entry.instance, error=entry.error),
                )
        else:
            assert instance is not None
            entry = SpecEntry(document, instance.url, time.time(), time.monotonic(), urls)
            if previous is None or previous.document != document:
                paths = len(document.get("paths") or {})
                log.info(
                    "OpenAPI document of %s fetched", service.name,
                    extra=log_fields(service=service.name, instance=instance.url, paths=paths),
                )
        if service.name not in self.table().services:
            return  # a reload removed the service while its document was on the way
        if previous is None or _shown(previous) != _shown(entry):
            self.version += 1
        self.entries[service.name] = entry

    async def _fetch(self, url: str) -> dict[str, Any]:
        session = self.resources.session
        if session is None:
            raise SpecFetchError("the gateway is not running")
        try:
            async with session.get(
                url,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"Accept": "application/json", "User-Agent": _USER_AGENT},
                allow_redirects=False,
            ) as response:
                if response.status != 200:
                    raise SpecFetchError(f"{SPEC_PATH} answered {response.status}")
                encoding = response.headers.get("Content-Encoding", "identity").lower()
                if encoding != "identity":
                    # The upstream session leaves bodies encoded; the request asked for none.
                    raise SpecFetchError(f"{SPEC_PATH} came {encoding}-encoded")
                too_large = SpecFetchError(f"{SPEC_PATH} is larger than {self.max_bytes} bytes")
                if (response.content_length or 0) > self.max_bytes:
                    raise too_large
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise too_large
        except TimeoutError as exc:
            raise SpecFetchError(f"no answer within {self.timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise SpecFetchError(f"{exc.__class__.__name__}: {exc}") from exc
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise SpecFetchError(f"{SPEC_PATH} is not JSON: {exc}") from exc
        return check_document(document)


def check_document(document: object) -> dict[str, Any]:
    """The document if it is an OpenAPI 3.x object with a paths map, else SpecFetchError."""
    if not isinstance(document, dict):
        raise SpecFetchError("the document is not a JSON object")
    version = document.get("openapi")
    if not (isinstance(version, str) and version.startswith("3.")):
        found = "Swagger 2.0" if "swagger" in document else repr(version)
        raise SpecFetchError(f"not an OpenAPI 3 document (openapi: {found})")
    paths = document.get("paths", {})
    if not isinstance(paths, dict) or not all(isinstance(item, dict) for item in paths.values()):
        raise SpecFetchError("paths is not a map of path items")
    return document


def _failed(previous: SpecEntry | None, instance: str | None, urls: tuple[str, ...], error: str) -> SpecEntry:
    """The entry after a failed fetch: the last good document stays, with the error next to it."""
    if previous is not None and previous.document is not None:
        return SpecEntry(previous.document, previous.instance, previous.fetched_at, time.monotonic(), urls, error)
    return SpecEntry(None, instance, None, time.monotonic(), urls, error)


def _shown(entry: SpecEntry) -> tuple[object, ...]:
    """What the docs show of an entry (the attempt times are not shown)."""
    return (entry.document, entry.instance, entry.fetched_at, entry.error)
