"""Typed registry configuration: the per-route options, health checks and the loaded registry itself.

Every field has a type, a default and a description: this module is the reference for registry.yaml.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, IPvAnyNetwork

from gateway.middleware.base import Middleware, MiddlewareConfig
from gateway.units import ByteSize, Duration

SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_PATH = re.compile(r"^(/[A-Za-z0-9._~!$&'()*+,;=:@-]+)*/?$")
RESERVED_PREFIXES = ("/metrics", "/api/v1/health", "/api/v1/gateway", "/api/docs", "/dashboard")


def _normalise_path(value: str) -> str:
    if value in ("", "/"):
        return ""
    if not _PATH.match(value):
        raise ValueError(f"must be a path like /api/v1/users made of URL-safe characters, got {value!r}")
    if any(segment in (".", "..") for segment in value.split("/")):
        raise ValueError("must not contain . or .. segments")
    return value.rstrip("/")


PathPrefix = Annotated[str, AfterValidator(_normalise_path)]


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Timeouts(Model):
    connect: Duration = Field(1.0, gt=0, description="Time allowed to open a connection to an instance.")
    read: Duration = Field(10.0, gt=0, description="Longest wait for the next bytes of the upstream response.")
    total: Duration = Field(
        60.0, ge=0, description="Limit for the whole upstream exchange, body included; 0 means no limit."
    )


class RouteOptions(Model):
    """Options of the proxy itself, settable in defaults, per service and per route."""

    auth: bool = Field(True, description="Whether the route requires a valid JWT (enforced by the jwt middleware).")
    strip_prefix: PathPrefix = Field(
        "/api/v1",
        description="Leading path removed before forwarding: /api/v1/users/x reaches the service as /users/x.",
    )
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Upstream timeouts.")
    max_body_size: ByteSize = Field(
        10_000_000, ge=0, description="Largest request body accepted (413 above it), streamed or not."
    )


class HealthCheck(Model):
    enabled: bool = Field(True, description="Whether the gateway polls the instances of this service.")
    path: str = Field("/health", pattern=r"^/", description="Path polled on each instance.")
    interval: Duration = Field(30.0, gt=0, description="Time between two polls of an instance.")
    timeout: Duration = Field(2.0, gt=0, description="How long one poll may take before it counts as failed.")
    unhealthy_threshold: int = Field(
        2, ge=1, le=100, description="Failed polls in a row (error status, timeout, refusal) that take an instance out of routing."
    )
    healthy_threshold: int = Field(
        2, ge=1, le=100, description="Successful polls in a row that put an unhealthy instance back into routing."
    )


Balancer = Literal["round_robin", "least_requests"]
"""How requests spread over a service's instances: in turn, or to the one with the fewest in flight."""


class GatewayOptions(Model):
    """Gateway-wide options (the top-level `gateway:` section)."""

    admin_networks: tuple[IPvAnyNetwork, ...] = Field(
        (),
        description="Client networks allowed to reach /metrics and the health and status endpoints; empty allows all.",
    )
    trusted_proxies: tuple[IPvAnyNetwork, ...] = Field(
        (), description="Peers (load balancers) whose X-Forwarded-For is trusted to name the client."
    )


@dataclass(frozen=True, slots=True)
class RouteConfig:
    service: str
    prefix: str
    options: RouteOptions
    middleware: Mapping[str, MiddlewareConfig]
    """The enabled middleware of this route, by name, with their validated config."""


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    name: str
    instances: tuple[str, ...]
    health: HealthCheck
    routes: tuple[RouteConfig, ...]
    balancer: Balancer = "round_robin"


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """A validated registry.yaml."""

    source: str
    digest: str
    """sha256 of the file's bytes, hex; tells two revisions apart."""
    gateway: GatewayOptions
    services: Mapping[str, ServiceConfig]
    edge_middleware: Mapping[str, MiddlewareConfig]
    """The EDGE middleware enabled in `defaults`: they wrap the gateway's own endpoints and unrouted requests."""
    middleware_classes: Mapping[str, type[Middleware]]
    """Every middleware the file may name, by NAME (built-ins, entry points and its plugins)."""
    plugins: tuple[str, ...] = ()
    routes: tuple[RouteConfig, ...] = field(default=())
