"""The HTTP layer of every service: request IDs, the spec's envelopes for every reply, the access log and
request metrics (one outermost middleware), the token check of each route, /health and /metrics.

Errors are rendered in exactly one place (`error_response`): a GatewayError raised by a handler, an
aiohttp HTTPException (404 no route, 405, 413), or anything else (500, details never leak).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from pydantic import TypeAdapter

from gateway.envelope import error_body, success_body
from gateway.exchange import JSON_CONTENT_TYPE
from gateway.logs import log_fields, new_request_id, request_id_var
from services.kit.errors import Forbidden, GatewayError, InternalError, ServiceUnavailable
from services.kit.identity import authenticate
from services.kit.keys import REQUEST_ID_KEY
from services.kit.runtime import Runtime
from services.kit.service import Call, Ok, Reply, RouteSpec

log = logging.getLogger("services.http")
access = logging.getLogger("services.access")

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_QUIET_PATHS = frozenset({"/health", "/metrics", "/openapi.json"})
_JSON = TypeAdapter(Any)


def error_response(error: GatewayError, request_id: str | None) -> web.Response:
    headers = {"Content-Type": JSON_CONTENT_TYPE, **error.headers}
    return web.Response(
        status=error.status, body=error_body(error.status, error.message, request_id, error.details), headers=headers
    )


def success_response(reply: Ok, request_id: str | None) -> web.Response:
    headers = {"Content-Type": JSON_CONTENT_TYPE, **(reply.headers or {})}
    if reply.status == 204:
        return web.Response(status=204, headers={key: value for key, value in headers.items() if key != "Content-Type"})
    data = _JSON.dump_python(reply.data, mode="json", by_alias=True)
    return web.Response(status=reply.status, body=success_body(data, request_id, reply.message), headers=headers)


def render(result: Reply, request_id: str) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):
        return result
    return success_response(result if isinstance(result, Ok) else Ok(result), request_id)


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> web.StreamResponse:
    if exc.status < 400:
        return exc  # a redirect or success raised on purpose
    headers: dict[str, str] = {}
    if exc.status == 404:
        message = f"No route for {request.path}"
    elif exc.status == 405:
        message = f"Method {request.method} not allowed for {request.path}"
        if "Allow" in exc.headers:
            headers["Allow"] = exc.headers["Allow"]
    elif exc.status == 413:
        message = "Request body too large"
    else:
        message = exc.reason
    error = GatewayError(message, headers=headers)
    error.status = exc.status
    return error_response(error, request[REQUEST_ID_KEY])


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def kit_middleware(runtime: Runtime) -> Middleware:
    """The outermost middleware: request ID in and out, envelope for every error, one log line and the
    metrics of each request."""
    metrics = runtime.metrics
    service = runtime.name

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        sent = request.headers.get(REQUEST_ID_HEADER)
        request_id = sent if sent is not None and _VALID_REQUEST_ID.match(sent) else new_request_id()
        request[REQUEST_ID_KEY] = request_id
        token = request_id_var.set(request_id)
        status = 499  # stays so when the client goes away and the handler is cancelled
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = _from_http_exception(exc, request)
            except GatewayError as exc:
                response = error_response(exc, request_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("unhandled error in a handler", extra=log_fields(path=request.path))
                response = error_response(InternalError(), request_id)
            response.headers[REQUEST_ID_HEADER] = request_id
            status = response.status
            return response
        finally:
            elapsed = time.perf_counter() - started
            route = _route_label(request)
            metrics.requests.labels(service, metrics.method_label(request.method), route, f"{status // 100}xx").inc()
            metrics.request_seconds.labels(service, route).observe(elapsed)
            quiet = request.path in _QUIET_PATHS and status < 400
            level = logging.ERROR if status >= 500 else logging.DEBUG if quiet else logging.INFO
            access.log(
                level,
                f"{request.method} {request.path} {status}",
                extra=log_fields(
                    method=request.method,
                    path=request.path,
                    route=route,
                    status=status,
                    duration=round(elapsed * 1000, 3),
                ),
            )
            request_id_var.reset(token)

    return middleware


def endpoint(spec: RouteSpec, runtime: Runtime) -> Handler:
    """The aiohttp handler of one declared route: verify the caller, check the role, render the reply."""

    async def handle(request: web.Request) -> web.StreamResponse:
        caller = await authenticate(request, runtime.verifier, required=not spec.public)
        if spec.roles and (caller is None or caller.role not in spec.roles):
            raise Forbidden("Your role is not allowed to do this", details={"allowedRoles": sorted(spec.roles)})
        request_id = request[REQUEST_ID_KEY]
        return render(await spec.handler(Call(request, runtime, request_id, caller)), request_id)

    handle.__qualname__ = f"{spec.method} {spec.path}"
    return handle


def health_endpoint(runtime: Runtime) -> Handler:
    async def health(request: web.Request) -> web.StreamResponse:
        healthy, report = await runtime.health()
        if not healthy:
            raise ServiceUnavailable(f"{runtime.name} is {report['status']}", details=report)
        return success_response(Ok(report), request[REQUEST_ID_KEY])

    return health


def metrics_endpoint(runtime: Runtime) -> Handler:
    async def metrics(_request: web.Request) -> web.StreamResponse:
        # A failing database must not take the metrics down with it: the gauges keep their last values.
        with contextlib.suppress(sqlite3.Error, RuntimeError):
            await runtime.relay.refresh_gauges()
        runtime.metrics.broker_connected.labels(runtime.name).set(1 if runtime.bus.connected else 0)
        body, content_type = runtime.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    return metrics
