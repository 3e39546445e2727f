"""`kadai routes`: the route table of a registry as a person reads it (prefix, service, instances, auth and
each route's middleware chain, outermost first)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.config.schema import RegistryConfig
from gateway.middleware.base import Middleware, MiddlewareConfig

HEADINGS = ("PREFIX", "SERVICE", "INSTANCES", "AUTH", "MIDDLEWARE (outermost first)")
CHAIN_SEPARATOR = " > "


@dataclass(frozen=True, slots=True)
class RouteRow:
    prefix: str
    service: str
    instances: tuple[str, ...]
    auth: bool
    middleware: tuple[str, ...]


def chain_order(enabled: Mapping[str, MiddlewareConfig], classes: Mapping[str, type[Middleware]]) -> tuple[str, ...]:
    """Middleware names in the order the gateway chains them: highest PRIORITY first, then by name."""
    return tuple(sorted(enabled, key=lambda name: (-classes[name].PRIORITY, name)))


def route_rows(config: RegistryConfig) -> list[RouteRow]:
    """One row per route, in the file's order."""
    classes = config.middleware_classes
    return [
        RouteRow(
            prefix=route.prefix,
            service=route.service,
            instances=config.services[route.service].instances,
            auth=route.options.auth,
            middleware=chain_order(route.middleware, classes),
        )
        for route in config.routes
    ]


def render_table(rows: Sequence[RouteRow]) -> str:
    """Aligned columns; a service with several instances takes one line per instance."""
    lines: list[tuple[str, ...]] = [HEADINGS]
    for row in rows:
        instances = row.instances or ("(none)",)
        chain = CHAIN_SEPARATOR.join(row.middleware) or "(none)"
        lines.append((row.prefix, row.service, instances[0], "yes" if row.auth else "no", chain))
        lines.extend(("", "", instance, "", "") for instance in instances[1:])
    widths = [max(len(line[column]) for line in lines) for column in range(len(HEADINGS) - 1)]
    return "\n".join(
        ("  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)) + "  " + line[-1]).rstrip()
        for line in lines
    )


def render(config: RegistryConfig) -> str:
    """The table, then the chain of the gateway's own endpoints and a one-line summary."""
    rows = route_rows(config)
    edge = CHAIN_SEPARATOR.join(chain_order(config.edge_middleware, config.middleware_classes)) or "(none)"
    services = {row.service for row in rows}
    return (
        f"{render_table(rows)}\n\n"
        f"gateway endpoints (/api/v1/health, /api/docs, /metrics ...): {edge}\n"
        f"{len(rows)} routes to {len(services)} services from {config.source}"
    )
