"""The gateway's own endpoints: health, status, the service list and Prometheus metrics.

They answer without a token (monitors and Prometheus have none); `gateway.admin_networks` in the
registry can restrict them to some client networks.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from multidict import CIMultiDict

import gateway
from gateway.envelope import utc_timestamp
from gateway.errors import MethodNotAllowed
from gateway.event_loop import running_event_loop
from gateway.exchange import Exchange, Reply
from gateway.middleware.base import Handler

if TYPE_CHECKING:
    from gateway.app import Gateway

_READ_METHODS = frozenset({"GET", "HEAD"})


def admin_endpoints(gw: Gateway) -> dict[str, Handler]:
    """Exact paths of the gateway's own endpoints and their handlers."""
    endpoints = _Endpoints(gw)
    return {
        "/api/v1/health": read_only(endpoints.health),
        "/api/v1/health/detailed": read_only(endpoints.health_detailed),
        "/api/v1/gateway/status": read_only(endpoints.status),
        "/api/v1/gateway/services": read_only(endpoints.services),
        "/metrics": read_only(endpoints.metrics),
    }


def read_only(handler: Handler) -> Handler:
    """Answer 405 (Allow: GET, HEAD) to any other method; the pages (gateway.pages) use it too."""

    async def guarded(exchange: Exchange) -> Reply:
        if exchange.request.method not in _READ_METHODS:
            raise MethodNotAllowed(headers={"Allow": "GET, HEAD"})
        return await handler(exchange)

    return guarded


class _Endpoints:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def _overall(self) -> str:
        if self.gw.resources.draining:
            return "draining"
        states = [service.state for service in self.gw.table.services.values()]
        return "ok" if all(state in ("up", "unchecked") for state in states) else "degraded"

    def _config(self) -> dict[str, object]:
        table = self.gw.table
        last = self.gw.resources.reload_status
        return {
            "source": table.config.source,
            "revision": table.revision,
            "digest": table.config.digest[:12],
            "lastReload": last.describe() if last else None,
        }

    async def health(self, exchange: Exchange) -> Reply:
        status = self._overall()
        uptime = round(time.time() - self.gw.resources.started_at, 3)
        return exchange.json_reply(503 if status == "draining" else 200, {"status": status, "uptimeSeconds": uptime})

    async def health_detailed(self, exchange: Exchange) -> Reply:
        status = self._overall()
        data = {
            "status": status,
            "gateway": {"version": gateway.__version__, "draining": self.gw.resources.draining},
            "config": self._config(),
            "services": self._service_list(with_routes=False),
            "components": {name: report() for name, report in self.gw.resources.components.items()},
        }
        return exchange.json_reply(503 if status == "draining" else 200, data)

    async def status(self, exchange: Exchange) -> Reply:
        resources = self.gw.resources
        data = {
            "version": gateway.__version__,
            "pid": os.getpid(),
            "eventLoop": running_event_loop(),
            "startedAt": utc_timestamp(resources.started_at),
            "uptimeSeconds": round(time.time() - resources.started_at, 3),
            "draining": resources.draining,
            "settings": resources.settings.public_view(),
            "config": self._config(),
        }
        return exchange.json_reply(200, data)

    async def services(self, exchange: Exchange) -> Reply:
        return exchange.json_reply(200, self._service_list(with_routes=True))

    async def metrics(self, exchange: Exchange) -> Reply:
        body, content_type = self.gw.resources.metrics.render()
        return Reply(200, CIMultiDict({"Content-Type": content_type}), body)

    def _service_list(self, with_routes: bool) -> list[dict[str, object]]:
        table = self.gw.table
        listing = []
        for name, service in table.services.items():
            entry: dict[str, object] = {
                "name": name,
                "state": service.state,
                "instances": [instance.describe() for instance in service.instances],
                "health": {"path": service.health.path, "intervalSeconds": service.health.interval},
            }
            if with_routes:
                entry["routes"] = [
                    {
                        "prefix": route.prefix,
                        "auth": route.config.options.auth,
                        "stripPrefix": route.config.options.strip_prefix,
                        "middleware": list(route.middleware),
                    }
                    for route in table.routes.values()
                    if route.service is service
                ]
            listing.append(entry)
        return listing
