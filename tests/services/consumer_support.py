"""Helpers of the tests of the event-driven services (notification, broadcast, analytics, ai): HTTP calls
with a token, waiting for a consumer, events as other services publish them."""
from __future__ import annotations

from typing import Any

import aiohttp

from services.events.event import Event
from tests.process.helpers import wait_until
from tests.services.helpers import EventProbe, Served, bearer


async def call(
    service: Served, method: str, path: str, *, as_: tuple[str, str] | None = None, **options: Any
) -> tuple[int, dict[str, Any]]:
    """One request; as_=(sub, role) sends a token of that user, None sends none."""
    headers = bearer(service.settings, *as_) if as_ else {}
    headers.update(options.pop("headers", {}))
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, service.url + path, headers=headers, **options) as response,
    ):
        return response.status, await response.json()


async def consuming(service: Served) -> None:
    """Wait until the service consumes from its queue: events published before would find no binding."""
    await wait_until(lambda: service.runtime.bus.health().get("consuming") is True, 10, "the consumer")


def event(
    event_type: str, data: dict[str, Any], *, timestamp: str | None = None, source: str = "test-service"
) -> Event:
    """An event as another service publishes it; timestamp (ISO 8601 UTC) to place it in the past."""
    made = Event.create(event_type, source, data, request_id="req_test")
    return made if timestamp is None else made.model_copy(update={"timestamp": timestamp})


async def publish_all(probe: EventProbe, *events: Event) -> None:
    for item in events:
        await probe.publish(item)


async def published(probe: EventProbe, event_type: str, count: int, timeout: float = 5.0) -> list[Event]:
    """Wait until count events of a type are on the probe; returns them (exactly count, or the test fails)."""
    await wait_until(
        lambda: sum(1 for item in probe.events if item.type == event_type) >= count, timeout, f"{count} {event_type}"
    )
    found = [item for item in probe.events if item.type == event_type]
    assert len(found) == count, [item.data for item in found]
    return found


async def handled(service: Served, event_type: str, count: int, outcome: str = "ok", timeout: float = 5.0) -> None:
    """Wait until the service's consumer counted count deliveries of a type with that outcome."""
    await wait_until(
        lambda: service.metric("kadai_service_events_consumed_total", type=event_type, outcome=outcome) >= count,
        timeout,
        f"{count} {event_type} handled ({outcome})",
    )
