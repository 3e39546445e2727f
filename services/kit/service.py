"""How a service is declared: its name, port, routes, schema migrations, the events it publishes and
the handlers of the events it consumes. The kit (services/kit/app.py) builds the aiohttp app from it.

    routes = Routes()

    @routes.get("/products/{product_id}")
    async def get_product(call: Call) -> Ok:
        row = await call.db.fetchone("SELECT ... WHERE id = ?", (call.path("product_id"),))
        if row is None:
            raise NotFound("No such product")
        return ok(ProductOut.from_row(row))

    SERVICE = Service(name="product-service", port=3002, routes=routes, migrations=MIGRATIONS,
                      publishes=[PRODUCT_CREATED], handlers={ORDER_CREATED: on_order_created})
"""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from services.events.consumer import EventHandler
from services.events.types import check_type
from services.kit.config import EnvConfig
from services.kit.db import Database, Migration, check_migrations
from services.kit.errors import BadRequest, Unauthorized
from services.kit.identity import Caller
from services.kit.models import parse_model

if TYPE_CHECKING:
    from services.kit.client import ServiceClient
    from services.kit.runtime import Runtime

M = TypeVar("M", bound=BaseModel)
C = TypeVar("C", bound=EnvConfig)

SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Ok:
    """A success reply: the spec's envelope {success, data, message?, timestamp, requestId}."""

    data: Any = None
    status: int = 200
    message: str | None = None
    headers: Mapping[str, str] | None = None


def ok(
    data: Any = None, *, status: int = 200, message: str | None = None, headers: Mapping[str, str] | None = None
) -> Ok:
    return Ok(data, status, message, headers)


Reply = Ok | web.StreamResponse | BaseModel | Mapping[str, Any] | Sequence[Any] | None
"""What a handler returns: Ok, a bare value (200 with it as data), or an aiohttp response as is."""

RouteHandler = Callable[["Call"], Awaitable[Reply]]
H = TypeVar("H", bound=RouteHandler)


class Call:
    """One request as a handler sees it: the verified caller, the parsed body, the service's resources."""

    __slots__ = ("optional_caller", "request", "request_id", "runtime")

    def __init__(self, request: web.Request, runtime: Runtime, request_id: str, caller: Caller | None) -> None:
        self.request = request
        self.runtime = runtime
        self.request_id = request_id
        self.optional_caller = caller
        """The caller, or None on a public route called without a (good) token."""

    @property
    def caller(self) -> Caller:
        """The verified caller; on a public route without a good token, Unauthorized."""
        if self.optional_caller is None:
            raise Unauthorized("Missing bearer token", headers={"WWW-Authenticate": 'Bearer realm="kadai"'})
        return self.optional_caller

    @property
    def db(self) -> Database:
        return self.runtime.db

    @property
    def services(self) -> ServiceClient:
        """Client for calls to other services, signed with this service's token."""
        return self.runtime.client

    def path(self, name: str) -> str:
        """A path parameter: "{product_id}" in the route's path."""
        return self.request.match_info[name]

    async def body(self, model: type[M]) -> M:
        """The JSON body validated into model: 400 when it is missing, not UTF-8 or not JSON; 422 with
        the failing fields when it does not validate."""
        try:
            raw = await self.request.read()
        except web.RequestPayloadError:
            # A body its Content-Encoding cannot decode (or cut short) is the client's fault, not a 500.
            raise BadRequest("The body could not be read: broken Content-Encoding or framing") from None
        if not raw.strip():
            raise BadRequest("A JSON body is required")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("The body is not valid UTF-8") from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("The body is not valid JSON") from None
        return parse_model(model, data)

    def query(self, model: type[M]) -> M:
        """The query string validated into model (422 with the failing parameters)."""
        return parse_model(model, dict(self.request.query))

    def config(self, model: type[C]) -> C:
        """The service's own settings of that type (declared in Service.configs)."""
        return self.runtime.config(model)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    method: str
    path: str
    handler: RouteHandler
    public: bool
    """Served without a token (the caller is still identified when a good one is sent)."""
    roles: frozenset[str]
    """Roles allowed; empty allows any authenticated caller."""


class Routes:
    """The routes of a service, declared with decorators."""

    def __init__(self) -> None:
        self._specs: list[RouteSpec] = []

    def route(self, method: str, path: str, *, public: bool = False, roles: Collection[str] = ()) -> Callable[[H], H]:
        method = method.upper()
        if method not in METHODS:
            raise ValueError(f"unsupported method {method!r}")
        if not path.startswith("/") or path in ("/health", "/metrics", "/openapi.json"):
            raise ValueError(f"{path!r}: a route path starts with / and cannot be /health, /metrics or /openapi.json")
        if public and roles:
            raise ValueError(f"{method} {path}: a public route cannot require roles")

        def register(handler: H) -> H:
            self._specs.append(RouteSpec(method, path, handler, public, frozenset(roles)))
            return handler

        return register

    def get(self, path: str, *, public: bool = False, roles: Collection[str] = ()) -> Callable[[H], H]:
        return self.route("GET", path, public=public, roles=roles)

    def post(self, path: str, *, public: bool = False, roles: Collection[str] = ()) -> Callable[[H], H]:
        return self.route("POST", path, public=public, roles=roles)

    def put(self, path: str, *, public: bool = False, roles: Collection[str] = ()) -> Callable[[H], H]:
        return self.route("PUT", path, public=public, roles=roles)

    def patch(self, path: str, *, public: bool = False, roles: Collection[str] = ()) -> Callable[[H], H]:
        return self.route("PATCH", path, public=public, roles=roles)

    def delete(self, path: str, *, public: bool = False, roles: Collection[str] = ()) -> Callable[[H], H]:
        return self.route("DELETE", path, public=public, roles=roles)

    def __iter__(self) -> Iterator[RouteSpec]:
        return iter(self._specs)


Lifespan = Callable[["Runtime"], AbstractAsyncContextManager[None]]
"""Extra start-up and shutdown work: an async context manager entered once the kit's resources are up."""


@dataclass(frozen=True)
class Service:
    """A service, declared once; checked when declared (bad names, versions or types fail at import)."""

    name: str
    """Catalogue name, e.g. "user-service": logs, metrics, token subject and queue names use it."""
    port: int
    """Default port (`kadai service NAME --port` overrides it)."""
    routes: Routes
    migrations: Sequence[Migration] = ()
    """The schema, version 1, 2, 3 ... in order; applied at start, each once."""
    publishes: Collection[str] = ()
    """Event types this service may publish (tx.publish refuses any other)."""
    handlers: Mapping[str, EventHandler] = field(default_factory=dict)
    """Event type -> handler; the service's queue is bound to exactly these types."""
    configs: Sequence[type[EnvConfig]] = ()
    """The service's own settings models, read from the environment at start."""
    lifespan: Lifespan | None = None

    def __post_init__(self) -> None:
        if not SERVICE_NAME.match(self.name):
            raise ValueError(f"service name {self.name!r}: lowercase letters, digits and dashes")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"{self.name}: port {self.port} out of range")
        check_migrations(self.migrations)
        for event_type in (*self.publishes, *self.handlers):
            check_type(event_type)
