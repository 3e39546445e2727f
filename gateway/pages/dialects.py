"""OpenAPI 3.0 and 3.1 side by side: service documents written for 3.0 are brought up to 3.1 before
they are merged, and the merged 3.1 document is written down to 3.0 for the bundled Swagger UI (its 4.x
line renders `openapi: 3.0.n` only).

Only the Schema Object differs in ways that matter here (3.1 schemas are JSON Schema 2020-12: `type`
may be a list holding "null", `const`, `examples` as a list, numeric `exclusiveMinimum`; 3.0 has
`nullable` and boolean `exclusiveMinimum`). The walk knows which keys hold maps of names (properties,
responses, content ...) so a property named `type` or `const` is never mistaken for a keyword.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

OPENAPI_30 = "3.0.3"

_NAME_MAPS = frozenset(
    {
        "properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "schemas", "responses",
        "parameters", "examples", "requestBodies", "headers", "securitySchemes", "links", "callbacks",
        "pathItems", "paths", "webhooks", "content", "encoding", "variables", "mapping", "scopes",
    }
)
"""Keys whose value maps names (or media types, status codes, paths) to objects, when it is a map."""

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

Rewrite = Callable[[dict[str, Any]], None]


def _walk(node: Any, rewrite: Rewrite, names: bool = False) -> Any:
    if isinstance(node, dict):
        if names:
            return {key: _walk(value, rewrite) for key, value in node.items()}
        out = {key: _walk(value, rewrite, key in _NAME_MAPS and isinstance(value, dict)) for key, value in node.items()}
        rewrite(out)
        return out
    if isinstance(node, list):
        return [_walk(item, rewrite) for item in node]
    return node


def _down(schema: dict[str, Any]) -> None:
    """Rewrite one (already walked) object from 3.1 to 3.0 terms, when it is a schema."""
    kind = schema.get("type")
    if isinstance(kind, list) or kind == "null":
        kinds = [kind] if isinstance(kind, str) else [k for k in kind if isinstance(k, str)]
        others = [k for k in kinds if k != "null"]
        del schema["type"]
        if len(others) == 1:
            schema["type"] = others[0]
        elif others:
            schema["anyOf"] = [{"type": k} for k in others]
        if "null" in kinds:
            schema["nullable"] = True
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    examples = schema.get("examples")
    if isinstance(examples, list):
        del schema["examples"]
        if examples and "example" not in schema:
            schema["example"] = examples[0]
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = schema.get(exclusive)
        if isinstance(value, int | float) and not isinstance(value, bool):
            schema[bound] = value
            schema[exclusive] = True
    for combinator in ("anyOf", "oneOf"):
        members = schema.get(combinator)
        if isinstance(members, list) and {"nullable": True} in members:
            # 3.1's `anyOf: [X, {type: "null"}]` is 3.0's nullable X.
            schema[combinator] = [member for member in members if member != {"nullable": True}]
            schema["nullable"] = True


def _up(schema: dict[str, Any]) -> None:
    """Rewrite one (already walked) object from 3.0 to 3.1 terms, when it is a schema."""
    nullable = schema.pop("nullable", None) if isinstance(schema.get("nullable"), bool) else None
    if nullable:
        kind = schema.get("type")
        if isinstance(kind, str):
            schema["type"] = [kind, "null"]
        elif "$ref" in schema:
            schema["anyOf"] = [{"$ref": schema.pop("$ref")}, {"type": "null"}]
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = schema.get(exclusive)
        if isinstance(value, bool):
            del schema[exclusive]
            if value and bound in schema:
                schema[exclusive] = schema.pop(bound)


def to_openapi_31(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of a service document in 3.1 terms (a 3.1 document is copied as it is)."""
    if str(document.get("openapi", "")).startswith("3.0"):
        upgraded: dict[str, Any] = _walk(document, _up)
        return upgraded
    return copy.deepcopy(document)


def to_openapi_30(document: dict[str, Any]) -> dict[str, Any]:
    """A 3.0 rendition of a 3.1 document, for Swagger UI 4: what 3.0 cannot say is dropped."""
    out: dict[str, Any] = _walk(document, _down)
    out["openapi"] = OPENAPI_30
    out.pop("webhooks", None)
    out.pop("jsonSchemaDialect", None)
    info = out.get("info")
    if isinstance(info, dict):
        info.pop("summary", None)
        license_ = info.get("license")
        if isinstance(license_, dict):
            license_.pop("identifier", None)
    components = out.get("components")
    if isinstance(components, dict):
        components.pop("pathItems", None)
    for item in (out.get("paths") or {}).values():
        for method in _METHODS:
            operation = item.get(method) if isinstance(item, dict) else None
            if isinstance(operation, dict):
                # 3.1 made responses optional; 3.0 requires them.
                operation.setdefault("responses", {"default": {"description": "Whatever the service answers."}})
    return out

