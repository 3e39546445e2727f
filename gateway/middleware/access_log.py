"""Access log: one JSON line per request, written once the response is complete."""
from __future__ import annotations

import logging
from typing import ClassVar

from pydantic import Field

from gateway.exchange import Exchange, Reply
from gateway.logs import direct_sink, request_id_var
from gateway.middleware.base import Handler, Middleware, MiddlewareConfig

NAME = "access_log"
PRIORITY = 9_000

log = logging.getLogger("gateway.access")


class AccessLogConfig(MiddlewareConfig):
    include_query: bool = Field(False, description="Log the query string (it may carry personal data).")
    skip_paths: tuple[str, ...] = Field(
        (), description="Exact paths not logged when they succeed, e.g. /metrics for busy scrapers."
    )


class AccessLogMiddleware(Middleware):
    NAME: ClassVar[str] = NAME
    PRIORITY: ClassVar[int] = PRIORITY
    Config: ClassVar[type[MiddlewareConfig]] = AccessLogConfig
    ENABLED_BY_DEFAULT: ClassVar[bool] = True
    EDGE: ClassVar[bool] = True

    def __init__(self, config: AccessLogConfig, context) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config, context)
        self.include_query = config.include_query
        self.skip_paths = frozenset(config.skip_paths)

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Reply:
        exchange.on_finish(self._write)
        return await call_next(exchange)

    def _write(self, exchange: Exchange) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        request = exchange.request
        status = exchange.status
        if status < 400 and self.skip_paths and request.path in self.skip_paths:
            return
        instance = exchange.instance
        path = request.raw_path
        fields = {
            "method": request.method,
            "path": path if self.include_query else path.partition("?")[0],
            "status": status,
            "duration": round(exchange.elapsed * 1000, 3),
            "targetService": exchange.service,
            "upstream": instance.url if instance is not None else None,
            "bytes": exchange.bytes_sent,
            "client": exchange.client_ip,
        }
        if exchange.failure:
            fields["failure"] = exchange.failure
        # Someone must look at a failing instance, a 5xx on a route, or a bug (500); a client hanging up or
        # the health endpoint saying 503 while draining is routine.
        routed_5xx = status >= 500 and exchange.route is not None
        level = logging.ERROR if exchange.upstream_fault or routed_5xx or status == 500 else logging.INFO
        if level == logging.INFO and (sink := direct_sink()) is not None:
            sink.write("info", f"{request.method} {fields['path']} {status}", exchange.request_id, fields)
            return
        # The request-ID contextvar is reset by now; bind it for this line.
        token = request_id_var.set(exchange.request_id)
        try:
            log.log(level, f"{request.method} {fields['path']} {status}", extra={"fields": fields})
        finally:
            request_id_var.reset(token)
