"""The platform's OpenAPI 3.1 document, assembled from the live route table and the services' own documents.

A service path `/users/profile` served through a route with strip_prefix `/api/v1` is published as
`/api/v1/users/profile`, and only when the gateway would route that public path to the same route: a
path the gateway sends elsewhere (or nowhere) is left out. A route that gets no path from its service's
document (no document, or none of its paths under the route) is published as one generic
`{prefix}/{path}` entry. The services' components are renamed `<service>.<Name>` so two services'
`User` schemas do not collide; their security schemes give way to the gateway's own (bearerAuth on the
routes with `auth: true`), since it is the gateway that asks for the token.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import gateway
from gateway.envelope import error_envelope_schema, success_envelope_schema
from gateway.pages.dialects import to_openapi_31
from gateway.pages.specs import SpecEntry
from gateway.routing import Route, RouteTable

OPENAPI_VERSION = "3.1.0"
BEARER = "bearerAuth"
GATEWAY_TAG = "gateway"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
GENERIC_METHODS = ("get", "post", "put", "patch", "delete")
COMPONENT_KINDS = (
    "schemas", "responses", "parameters", "examples", "requestBodies", "headers", "links", "callbacks", "pathItems",
)
_COMPONENT_REF = re.compile(r"^#/components/(?P<kind>[A-Za-z]+)/(?P<name>[^/]+)(?P<rest>/.*)?$")

_ENVELOPE_ERRORS = {
    "401": "Missing, malformed, expired or badly signed bearer token.",
    "403": "The token lacks a role the route requires, or the client network is not allowed.",
    "429": "A rate-limit tier of the route is spent; Retry-After says when to try again.",
    "502": "The service could not be reached or broke off its response.",
    "503": "No healthy instance of the service (or the gateway is shutting down).",
    "504": "The service did not answer within the route's timeouts.",
}


def _envelope_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
    }


def _components() -> dict[str, Any]:
    return {
        "securitySchemes": {
            BEARER: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A JWT issued by user-service (payload: sub, email, role, iat, exp).",
            }
        },
        "schemas": {
            "SuccessEnvelope": success_envelope_schema(description="How the gateway's own endpoints answer."),
            "ErrorEnvelope": error_envelope_schema("Every error the gateway itself answers with."),
        },
        "responses": {f"Gateway{status}": _envelope_response(text) for status, text in _ENVELOPE_ERRORS.items()},
    }


def _gateway_paths() -> dict[str, Any]:
    """The gateway's own endpoints (the pages themselves are left out: they are not an API)."""

    def endpoint(summary: str, description: str, *, envelope: bool = True, draining: bool = False) -> dict[str, Any]:
        if envelope:
            content = {"application/json": {"schema": {"$ref": "#/components/schemas/SuccessEnvelope"}}}
        else:
            content = {"text/plain": {"schema": {"type": "string"}}}
        responses: dict[str, Any] = {"200": {"description": "OK", "content": content}}
        if draining:
            responses["503"] = {"description": "The gateway is shutting down.", "content": content}
        responses["403"] = {"$ref": "#/components/responses/Gateway403"}
        operation = {
            "tags": [GATEWAY_TAG],
            "summary": summary,
            "description": description + " Needs no token; `gateway.admin_networks` may limit who can call it.",
            "operationId": "gateway." + summary.lower().replace(" ", "_").replace(",", ""),
            "security": [],
            "responses": responses,
        }
        return {"get": operation}

    return {
        "/api/v1/health": endpoint("Health", "Overall status and uptime.", draining=True),
        "/api/v1/health/detailed": endpoint(
            "Health in detail", "Status, version, config revision, every service and instance.", draining=True
        ),
        "/api/v1/gateway/status": endpoint(
            "Gateway status", "Version, pid, uptime, settings (secrets masked) and the registry in use."
        ),
        "/api/v1/gateway/services": endpoint(
            "Services and routes", "Every service with its instances, health settings and routes."
        ),
        "/metrics": endpoint("Prometheus metrics", "Prometheus text exposition format.", envelope=False),
    }


def _needs_token(route: Route) -> bool:
    return route.config.options.auth and "jwt" in route.middleware


def _security(route: Route) -> list[dict[str, list[str]]]:
    return [{BEARER: []}] if _needs_token(route) else []


def _gateway_errors(route: Route) -> dict[str, Any]:
    statuses = ["502", "503", "504"]
    if _needs_token(route):
        statuses.append("401")
        if getattr(route.config.middleware["jwt"], "roles", ()):
            statuses.append("403")
    if "rate_limit" in route.middleware:
        statuses.append("429")
    return {status: {"$ref": f"#/components/responses/Gateway{status}"} for status in sorted(statuses)}


def _public_path(route: Route, service_path: str) -> str:
    strip = route.config.options.strip_prefix
    if service_path == "/":
        return strip or "/"
    return strip + service_path


def _rename_refs(node: Any, service: str) -> Any:
    """Point a service's internal component references at the renamed components."""
    if isinstance(node, dict):
        out = {key: _rename_refs(value, service) for key, value in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str):
            match = _COMPONENT_REF.match(ref)
            if match is not None:
                out["$ref"] = f"#/components/{match['kind']}/{service}.{match['name']}{match['rest'] or ''}"
        return out
    if isinstance(node, list):
        return [_rename_refs(item, service) for item in node]
    return node


def _operation(operation: dict[str, Any], route: Route, operation_ids: set[str]) -> dict[str, Any]:
    service = route.service.name
    out = dict(operation)
    out["tags"] = [service]
    out["security"] = _security(route)
    out.pop("servers", None)  # clients reach the service through the gateway, never directly
    original = out.pop("operationId", None)
    if isinstance(original, str):
        renamed = f"{service}.{original}"
        if renamed not in operation_ids:
            operation_ids.add(renamed)
            out["operationId"] = renamed
    responses = dict(out.get("responses") or {})
    for status, response in _gateway_errors(route).items():
        responses.setdefault(status, response)
    out["responses"] = responses
    return out


def _merge_service(
    table: RouteTable, routes: list[Route], document: dict[str, Any], paths: dict[str, Any], components: dict[str, Any]
) -> set[str]:
    """Add a service's paths under its routes' public prefixes; returns the prefixes that got a path."""
    service = routes[0].service.name
    document = _rename_refs(to_openapi_31(document), service)
    served: set[str] = set()
    operation_ids: set[str] = set()
    for service_path, item in (document.get("paths") or {}).items():
        if not isinstance(service_path, str) or not service_path.startswith("/") or not isinstance(item, dict):
            continue
        for route in routes:
            public = _public_path(route, service_path)
            if table.match(public) is not route or public in paths:
                continue
            merged = {key: value for key, value in item.items() if key not in METHODS and key != "servers"}
            for method in METHODS:
                operation = item.get(method)
                if isinstance(operation, dict):
                    merged[method] = _operation(operation, route, operation_ids)
            paths[public] = merged
            served.add(route.prefix)
            break
    for kind in COMPONENT_KINDS:
        for name, value in ((document.get("components") or {}).get(kind) or {}).items():
            components.setdefault(kind, {})[f"{service}.{name}"] = value
    return served


def _generic_path(route: Route) -> dict[str, Any]:
    service = route.service.name
    strip = route.config.options.strip_prefix
    rest = route.prefix[len(strip):] if strip else route.prefix
    item: dict[str, Any] = {
        "summary": f"Anything under {route.prefix}",
        "description": f"Passed to {service} as `{rest or ''}/{{path}}`; the service documents no path here.",
        "parameters": [
            {
                "name": "path",
                "in": "path",
                "required": True,
                "description": "The rest of the path.",
                "schema": {"type": "string"},
            }
        ],
    }
    responses = {"default": {"description": f"Whatever {service} answers."}, **_gateway_errors(route)}
    for method in GENERIC_METHODS:
        item[method] = {
            "tags": [service],
            "summary": f"{method.upper()} {route.prefix}/…",
            "security": _security(route),
            "responses": responses,
        }
    return item


def _tag(service: str, routes: list[Route], entry: SpecEntry | None) -> dict[str, Any]:
    listed = ", ".join(
        f"`{route.prefix}` ({'bearer token' if _needs_token(route) else 'no token'})" for route in routes
    )
    if entry is not None and entry.document is not None:
        origin = "Paths from the service's own OpenAPI document."
        if entry.error is not None:
            origin += f" The latest refresh failed ({entry.error}); this is the last good copy."
    elif entry is not None:
        origin = f"The service's OpenAPI document is not available ({entry.error}): each route is shown whole."
    else:
        origin = "The service's OpenAPI document has not been fetched yet: each route is shown whole."
    return {"name": service, "description": f"Routes: {listed}. {origin}"}


def build_document(table: RouteTable, specs: Mapping[str, SpecEntry]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of everything the gateway serves right now."""
    by_service: dict[str, list[Route]] = {name: [] for name in table.services}  # the registry's order
    for route in table.routes.values():
        by_service[route.service.name].append(route)
    paths: dict[str, Any] = _gateway_paths()
    components = _components()
    tags = [{"name": GATEWAY_TAG, "description": "The gateway's own endpoints."}]
    for service, routes in by_service.items():
        if not routes:
            continue
        routes.sort(key=lambda route: route.prefix)
        entry = specs.get(service)
        served: set[str] = set()
        if entry is not None and entry.document is not None:
            served = _merge_service(table, routes, entry.document, paths, components)
        for route in routes:
            if route.prefix not in served:
                paths[f"{route.prefix}/{{path}}"] = _generic_path(route)
        tags.append(_tag(service, routes, entry))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Kadai Platform API",
            "version": gateway.__version__,
            "description": (
                "Every service of the platform, as the Kadai Gateway routes it. Operations with a lock need "
                "`Authorization: Bearer <JWT>`. Errors made by the gateway itself use the error envelope."
            ),
        },
        "servers": [{"url": "/", "description": "This gateway"}],
        "tags": tags,
        "paths": paths,
        "components": components,
        "x-kadai": {
            "configRevision": table.revision,
            "routes": [
                {
                    "prefix": route.prefix,
                    "service": route.service.name,
                    "auth": _needs_token(route),
                    "stripPrefix": route.config.options.strip_prefix,
                }
                for route in table.routes.values()
            ],
            "services": {
                name: specs[name].describe() if name in specs else {"status": "pending"} for name in table.services
            },
        },
    }
