"""Per-request state shared by the dispatcher, the middleware chain and the response writer."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gateway.envelope import error_body, success_body
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.auth.verifier import Claims
    from gateway.middleware.base import Handler
    from gateway.routing import Instance, Route

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
SERVER = "kadai-gateway"


@dataclass(slots=True)
class Reply:
    """What the chain answers: a complete body made by the gateway, or an upstream response to stream."""

    status: int
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    body: bytes = b""
    upstream: aiohttp.ClientResponse | None = None


class Exchange:
    """One client request on its way through the gateway."""

    __slots__ = (
        "request",
        "started",
        "route",
        "service",
        "request_id",
        "client_ip",
        "user",
        "upstream_path",
        "upstream_headers",
        "response_headers",
        "response_header_overrides",
        "terminal",
        "instance",
        "attempt_started",
        "pinned",
        "held",
        "tried",
        "body",
        "attempts",
        "status",
        "bytes_sent",
        "failure",
        "upstream_fault",
        "request_unsent",
        "deadline",
        "finish_hooks",
        "state",
    )

    def __init__(self, request: web.BaseRequest, client_ip: str) -> None:
        self.request = request
        self.started = time.perf_counter()
        self.route: Route | None = None
        self.service = "gateway"
        """Service label for logs and metrics: the route's service, or "gateway" for everything else."""
        self.request_id: str | None = None
        self.client_ip = client_ip
        self.user: Claims | None = None
        """The verified identity of the token, set by the jwt middleware; None when unauthenticated."""
        self.upstream_path = ""
        """Encoded path and query sent to the instance."""
        self.upstream_headers: CIMultiDict[str] | None = None
        """Headers for the upstream request; None when the request is not proxied."""
        self.response_headers: list[tuple[str, str]] = []
        """Headers added to whatever reply the client gets, errors included (next to the upstream's)."""
        self.response_header_overrides: dict[str, str] = {}
        """Headers set on whatever reply the client gets, replacing any of the same name."""
        self.terminal: Handler | None = None
        self.instance: Instance | None = None
        """The instance the last upstream attempt went to (for the log)."""
        self.attempt_started = 0.0
        """perf_counter() time the last upstream attempt began (its duration, for the instance's figures)."""
        self.pinned: Instance | None = None
        """The instance the next attempt must use, chosen by the breaker; None lets the forwarder pick."""
        self.held: Instance | None = None
        """The instance whose in-flight count this request holds until its response is written."""
        self.tried: tuple[Instance, ...] | None = None
        """Instances earlier attempts of this request failed on: a retry goes elsewhere when it can."""
        self.body: bytes | None = None
        """The request body read whole so that a retry can replay it; None means stream it from the client."""
        self.attempts = 0
        self.status = 0
        self.bytes_sent = 0
        self.failure: str | None = None
        """What went wrong (upstream unreachable or reset, client gone), for the access log line."""
        self.upstream_fault: str | None = None
        """Kind of upstream failure (connect, timeout, reset, body_too_large), counted once at the end."""
        self.request_unsent = False
        """The last attempt failed before any of the request reached the instance (no connection could
        be opened): repeating it is safe whatever the method."""
        self.deadline: float | None = None
        """perf_counter() time by which an upstream attempt must end, or None for the route's timeouts
        alone. The retry middleware sets it for retries, so that they end by its overall deadline."""
        self.finish_hooks: list[Callable[[Exchange], None]] = []
        self.state: dict[str, Any] = {}
        """Free space for third-party middleware."""

    def on_finish(self, hook: Callable[[Exchange], None]) -> None:
        """Call hook(exchange) once the reply has been written (or failed), errors included."""
        self.finish_hooks.append(hook)

    def release_instance(self) -> None:
        """Give back the in-flight slot of the instance that answered (a retry drops that answer)."""
        held = self.held
        if held is not None:
            held.in_flight -= 1
            self.held = None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def json_reply(self, status: int, data: Any, message: str | None = None) -> Reply:
        headers = CIMultiDict({"Content-Type": JSON_CONTENT_TYPE, "Server": SERVER})
        return Reply(status, headers, success_body(data, self.request_id, message))

    def error_reply(self, error: GatewayError) -> Reply:
        headers = CIMultiDict({"Content-Type": JSON_CONTENT_TYPE, "Server": SERVER})
        headers.update(error.headers)
        return Reply(error.status, headers, error_body(error.status, error.message, self.request_id, error.details))
