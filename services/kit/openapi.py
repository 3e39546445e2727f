"""A service's own OpenAPI document, served at GET /openapi.json for the gateway's API docs.

Every declared route appears, described from its handler (docstring summary, token or public, roles).
A service adds detail (request bodies, parameters, responses) with a module-level `OPENAPI_PATHS` in the
module that declares its routes: an OpenAPI `paths` object whose operations replace the generated ones.
"""
from __future__ import annotations

import re
import sys
from typing import Any

import gateway
from services.kit.service import RouteSpec, Service

_PARAMETER = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def document(service: Service) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for spec in service.routes:
        path = _PARAMETER.sub(r"{\1}", spec.path)
        paths.setdefault(path, {})[spec.method.lower()] = _operation(spec, path)
    shapes = {_shape(path): path for path in paths}
    for path, item in declared_paths(service).items():
        generated = shapes.get(_shape(path))
        if generated is not None and generated != path:
            # The same route with other parameter names ({product_id} in code, {productId} in the
            # declaration): one path, named as declared.
            paths[path] = _renamed(paths.pop(generated), _PARAMETER.findall(path))
            shapes[_shape(path)] = path
        paths.setdefault(path, {}).update(item)
    return {
        "openapi": "3.1.0",
        "info": {"title": service.name, "version": gateway.__version__},
        "paths": paths,
        "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
    }


def declared_paths(service: Service) -> dict[str, dict[str, Any]]:
    """OPENAPI_PATHS of the module(s) the route handlers come from."""
    found: dict[str, dict[str, Any]] = {}
    for module_name in dict.fromkeys(spec.handler.__module__ for spec in service.routes):
        declared = getattr(sys.modules.get(module_name), "OPENAPI_PATHS", None)
        if isinstance(declared, dict):
            for path, item in declared.items():
                found.setdefault(path, {}).update(item)
    return found


def _shape(path: str) -> str:
    return _PARAMETER.sub("{}", path)


def _renamed(item: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Generated operations with their path parameters renamed, in order, to `names`."""
    for operation in item.values():
        for parameter, name in zip(operation.get("parameters", []), names, strict=False):
            parameter["name"] = name
    return item


def _operation(spec: RouteSpec, path: str) -> dict[str, Any]:
    doc = (spec.handler.__doc__ or "").strip()
    summary = doc.splitlines()[0] if doc else f"{spec.method} {path}"
    operation: dict[str, Any] = {
        "summary": summary,
        "operationId": spec.handler.__name__,
        "responses": {"200": {"description": "Success envelope: {success, data, message, timestamp, requestId}"}},
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAMETER.findall(spec.path)
    ]
    if parameters:
        operation["parameters"] = parameters
    if spec.public:
        operation["security"] = []
    else:
        operation["security"] = [{"bearerAuth": []}]
        operation["responses"]["401"] = {"description": "Missing or invalid token (error envelope)"}
        if spec.roles:
            operation["description"] = "Roles: " + ", ".join(sorted(spec.roles))
            operation["responses"]["403"] = {"description": "The token's role may not call this (error envelope)"}
    return operation
