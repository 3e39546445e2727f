"""Generic pieces product-, order- and payment-service share: list pagination and OpenAPI fragments.

Nothing here knows about products; it lives in this package because the kit (services/kit) has no
equivalent yet. Pagination accepts either style a client may know:

    ?page=2&pageSize=20       or      ?limit=20&offset=20

and every list reply carries the same block: {total, limit, offset, page, pageSize, totalPages}.
"""
from __future__ import annotations

import copy
import math
from typing import Any

from pydantic import BaseModel, Field

from services.kit import CamelModel, ValidationFailed

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


class Pagination(CamelModel):
    """Query parameters of a list: page/pageSize or limit/offset (not both)."""

    page: int | None = Field(None, ge=1, le=1_000_000, description="Page number, from 1 (with pageSize).")
    page_size: int | None = Field(None, ge=1, le=MAX_PAGE_SIZE, description="Items per page (default 20).")
    limit: int | None = Field(None, ge=1, le=MAX_PAGE_SIZE, description="Items to return (with offset).")
    offset: int | None = Field(None, ge=0, le=100_000_000, description="Items to skip (with limit).")

    def window(self) -> tuple[int, int]:
        """(limit, offset) for SQL; 422 when the two styles are mixed."""
        paged = self.page is not None or self.page_size is not None
        sliced = self.limit is not None or self.offset is not None
        if paged and sliced:
            field = "limit" if self.limit is not None else "offset"
            raise ValidationFailed(
                details=[{"field": field, "message": "use page/pageSize or limit/offset, not both", "type": "mixed"}]
            )
        if sliced:
            return self.limit or DEFAULT_PAGE_SIZE, self.offset or 0
        size = self.page_size or DEFAULT_PAGE_SIZE
        return size, ((self.page or 1) - 1) * size

    def meta(self, total: int) -> dict[str, int]:
        """The reply's pagination block."""
        limit, offset = self.window()
        return {
            "total": total,
            "limit": limit,
            "offset": offset,
            "page": offset // limit + 1,
            "pageSize": limit,
            "totalPages": math.ceil(total / limit),
        }


# OpenAPI fragments -------------------------------------------------------------------------------------

PAGINATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["total", "limit", "offset", "page", "pageSize", "totalPages"],
    "properties": {name: {"type": "integer", "minimum": 0} for name in ("total", "limit", "offset", "pageSize")}
    | {"page": {"type": "integer", "minimum": 1}, "totalPages": {"type": "integer", "minimum": 0}},
}


def schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema (camelCase) with its $defs inlined: a schema placed inside an OpenAPI
    document cannot keep "#/$defs/..." references, which would resolve against the document's root."""
    raw = model.model_json_schema(by_alias=True)
    definitions = raw.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = copy.deepcopy(definitions[ref.removeprefix("#/$defs/")])
                extra = {key: value for key, value in node.items() if key != "$ref"}
                return inline({**target, **extra})
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    result: dict[str, Any] = inline(raw)
    return result


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema(model)}}}


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """One `in: query` parameter per field of a query model."""
    properties = schema(model).get("properties", {})
    parameters = []
    for name, field_schema in properties.items():
        described = dict(field_schema)
        description = described.pop("description", None)
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": described}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def path_parameter(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


def reply(description: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A success response: the spec's envelope with `data` of the given schema."""
    envelope: dict[str, Any] = {
        "type": "object",
        "required": ["success", "data", "timestamp", "requestId"],
        "properties": {
            "success": {"const": True},
            "data": data or {},
            "message": {"type": "string"},
            "timestamp": {"type": "string", "format": "date-time"},
            "requestId": {"type": ["string", "null"]},
        },
    }
    return {"description": description, "content": {"application/json": {"schema": envelope}}}


ERROR_ENVELOPE: dict[str, Any] = {
    "type": "object",
    "required": ["success", "error", "statusCode", "timestamp", "requestId"],
    "properties": {
        "success": {"const": False},
        "error": {"type": "string"},
        "statusCode": {"type": "integer"},
        "timestamp": {"type": "string", "format": "date-time"},
        "requestId": {"type": ["string", "null"]},
        "details": {},
    },
}


def error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_ENVELOPE}}}


def wrapped(key: str, model: type[BaseModel]) -> dict[str, Any]:
    """Schema of {key: <model>}, the shape of single-resource replies."""
    return {"type": "object", "required": [key], "properties": {key: schema(model)}}


def listed(key: str, model: type[BaseModel]) -> dict[str, Any]:
    """Schema of {key: [<model>], pagination}, the shape of list replies."""
    return {
        "type": "object",
        "required": [key, "pagination"],
        "properties": {key: {"type": "array", "items": schema(model)}, "pagination": PAGINATION_SCHEMA},
    }
