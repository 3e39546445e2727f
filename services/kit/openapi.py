"""A service's own OpenAPI document, served at GET /openapi.json for the gateway's API docs, and the
fragments services write their `OPENAPI_PATHS` with.

Every declared route appears, described from its handler (docstring summary, token or public, roles).
A service adds detail (request bodies, parameters, responses) with a module-level `OPENAPI_PATHS` in the
module that declares its routes: an OpenAPI `paths` object whose operations are laid over the generated
ones (a field it declares wins; operationId, security and the roles note come from the route otherwise).

    OPENAPI_PATHS = {
        "/products/{productId}": {
            "parameters": [path_parameter("productId", "The product's ID.")],
            "get": {
                "summary": "One product",
                "responses": {"200": reply("The product.", ProductOut), "404": error("No such product.")},
            },
        },
    }

Schemas come from the pydantic models (camelCase) with their $defs inlined, so each fragment stands alone
wherever the gateway merges it.
"""
from __future__ import annotations

import re
import sys
from typing import Any

from pydantic import BaseModel

import gateway
from gateway.envelope import error_envelope_schema, success_envelope_schema
from services.kit.paging import PAGINATION_SCHEMA
from services.kit.service import RouteSpec, Service

Schema = dict[str, Any]
"""A JSON Schema or an OpenAPI object, as it is written into the document."""

_PARAMETER = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
_OPERATIONS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def document(service: Service) -> dict[str, Any]:
    """The service's OpenAPI 3.1 document: its routes, with the declared OPENAPI_PATHS laid over them."""
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
        _lay_over(paths.setdefault(path, {}), item)
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


def _lay_over(item: dict[str, Any], declared: dict[str, Any]) -> None:
    """The declared path item laid over the generated one, each declared operation over its generated one."""
    for key, value in declared.items():
        below = item.get(key)
        if key in _OPERATIONS and isinstance(below, dict) and isinstance(value, dict):
            item[key] = {**below, **value}
        else:
            item[key] = value
    if "parameters" in declared:
        # Path parameters declared for the whole path item (with descriptions): the generated bare ones
        # would override them in every operation that does not declare its own.
        for key, operation in list(item.items()):
            own = declared.get(key)
            if key not in _OPERATIONS or not isinstance(operation, dict):
                continue
            if not (isinstance(own, dict) and "parameters" in own):
                item[key] = {name: value for name, value in operation.items() if name != "parameters"}


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


# Fragments for OPENAPI_PATHS -----------------------------------------------------------------------------


ERROR_ENVELOPE: Schema = error_envelope_schema()
"""The spec's error envelope (gateway/envelope.py's error_body), written out: the document stands alone,
whoever merges it."""


def schema(model: type[BaseModel]) -> Schema:
    """The model's JSON Schema (camelCase) with its $defs inlined: a schema placed inside an OpenAPI
    document cannot keep "#/$defs/..." references, which would resolve against the document's root.
    A model that contains itself has no inlined form: ValueError."""
    raw = model.model_json_schema(by_alias=True)
    definitions = raw.pop("$defs", {})

    def inline(node: Any, within: frozenset[str]) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref.removeprefix("#/$defs/")
                if name in within:
                    raise ValueError(f"{model.__name__} refers to itself through {name}: it cannot be inlined")
                extra = {key: value for key, value in node.items() if key != "$ref"}
                # Rebuilt node by node: every place a definition is used gets a copy of its own.
                return inline({**definitions[name], **extra}, within | {name})
            return {key: inline(value, within) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item, within) for item in node]
        return node

    result: Schema = inline(raw, frozenset())
    return result


def _data(data: type[BaseModel] | Schema | None) -> Schema:
    if data is None:
        return {}
    if isinstance(data, dict):
        return data
    return schema(data)


def reply(description: str, data: type[BaseModel] | Schema | None = None) -> Schema:
    """A success response: the spec's envelope whose `data` is the model's (or this) schema; any data
    when neither is given."""
    envelope = success_envelope_schema(_data(data))
    return {"description": description, "content": {"application/json": {"schema": envelope}}}


def error(description: str) -> Schema:
    """An error response: the spec's error envelope (ERROR_ENVELOPE)."""
    return {"description": description, "content": {"application/json": {"schema": ERROR_ENVELOPE}}}


TOKEN_REQUIRED: Schema = error("Missing or invalid bearer token.")
"""The 401 response of every route that needs a token."""


def request_body(model: type[BaseModel]) -> Schema:
    """A required JSON request body of the model's schema."""
    return {"required": True, "content": {"application/json": {"schema": schema(model)}}}


def query_parameters(model: type[BaseModel]) -> list[Schema]:
    """One `in: query` parameter per field of a query model (camelCase), required as the model says,
    with the field's description on the parameter."""
    described = schema(model)
    required = set(described.get("required", ()))
    parameters = []
    for name, field_schema in described.get("properties", {}).items():
        field = dict(field_schema)
        description = field.pop("description", None)
        parameter: Schema = {"name": name, "in": "query", "required": name in required, "schema": field}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def path_parameter(name: str, description: str | None = None) -> Schema:
    """A path parameter (`{name}` in the path): always required, a string as routed."""
    parameter: Schema = {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
    if description:
        parameter["description"] = description
    return parameter


def wrapped(key: str, model: type[BaseModel]) -> Schema:
    """Schema of {key: <model>}, the shape of single-resource replies."""
    return {"type": "object", "required": [key], "properties": {key: schema(model)}}


def listed(key: str, model: type[BaseModel]) -> Schema:
    """Schema of {key: [<model>], pagination}, the shape of list replies (services.kit.paging.Pagination)."""
    return {
        "type": "object",
        "required": [key, "pagination"],
        "properties": {key: {"type": "array", "items": schema(model)}, "pagination": PAGINATION_SCHEMA},
    }
