"""Unit tests of gateway.pages' pure logic: the OpenAPI merge, the 3.0/3.1 dialects, the service-document
check, conditional and compressed static replies, and how the dashboard writes its figures."""
from __future__ import annotations

import copy
import re
import time
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from gateway.config.loader import parse_registry
from gateway.config.settings import Settings
from gateway.exchange import Exchange, Reply
from gateway.pages.dashboard import (
    event,
    figures,
    format_duration,
    format_milliseconds,
    format_percent,
    format_rate,
)
from gateway.pages.dialects import to_openapi_30, to_openapi_31
from gateway.pages.openapi import build_document
from gateway.pages.specs import SpecEntry, SpecFetchError, check_document
from gateway.pages.static import accepts_gzip, etag_matches
from gateway.resources import Resources
from gateway.routing import RouteTable, build_table
from gateway.stats import WindowSummary

USERS_URL = "http://127.0.0.1:3001"
ADMIN_URL = "http://127.0.0.1:3009"

REGISTRY: dict[str, Any] = {
    "version": 1,
    "defaults": {"rate_limit": False},
    "services": {
        "user-service": {
            "instances": [USERS_URL],
            "routes": [
                {"prefix": "/api/v1/users"},
                {"prefix": "/api/v1/auth", "auth": False},
                {"prefix": "/legacy/accounts", "strip_prefix": "", "auth": False},
            ],
        },
        "admin-service": {"instances": [ADMIN_URL], "routes": [{"prefix": "/api/v1/users/admin"}]},
        "order-service": {
            "instances": ["http://127.0.0.1:3003"],
            "routes": [{"prefix": "/api/v1/orders", "jwt": {"roles": ["seller"]}, "rate_limit": True}],
        },
    },
}

USERS_SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "user-service", "version": "1.2.0"},
    "servers": [{"url": "http://users.internal:3001"}],
    "security": [{"serviceKey": []}],
    "paths": {
        "/users/profile": {
            "servers": [{"url": "http://users.internal:3001"}],
            "get": {
                "operationId": "getProfile",
                "tags": ["profile"],
                "security": [{"serviceKey": []}],
                "responses": {
                    "200": {
                        "description": "The profile",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/User"}}},
                    },
                    "503": {"description": "The service's own 503"},
                },
            },
        },
        "/users/{id}": {
            "parameters": [{"$ref": "#/components/parameters/Id"}],
            "get": {"operationId": "getUser", "responses": {"200": {"description": "A user"}}},
            "delete": {"responses": {"204": {"description": "Gone"}}},
        },
        "/auth/login": {"post": {"operationId": "login", "responses": {"200": {"description": "A token"}}}},
        "/users/admin/audit": {"get": {"responses": {"200": {"description": "admin-service owns this prefix"}}}},
        "/health": {"get": {"responses": {"200": {"description": "not routed by the gateway"}}}},
        "/legacy/accounts/{id}": {
            "parameters": [{"$ref": "#/components/parameters/Id"}],
            "get": {"responses": {"200": {"description": "strip_prefix is empty"}}},
        },
    },
    "components": {
        "schemas": {
            "User": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "nullable": True},
                    "age": {"type": "integer", "minimum": 0, "exclusiveMinimum": True},
                    "boss": {"$ref": "#/components/schemas/User"},
                },
            }
        },
        "parameters": {"Id": {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}},
        "securitySchemes": {"serviceKey": {"type": "apiKey", "in": "header", "name": "X-Key"}},
    },
}


def make_table() -> RouteTable:
    config = parse_registry(yaml.safe_dump(REGISTRY, sort_keys=False).encode(), "registry.yaml")

    async def forward(exchange: Exchange) -> Reply:
        return Reply(204)

    return build_table(config, Resources(settings=Settings()), forward, revision=7)


def entry(document: dict[str, Any] | None, error: str | None = None, url: str = USERS_URL) -> SpecEntry:
    fetched = time.time() if document is not None else None
    return SpecEntry(document, url, fetched, time.monotonic(), (url,), error)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    specs = {"user-service": entry(USERS_SPEC), "admin-service": entry(None, "404", ADMIN_URL)}
    return build_document(make_table(), specs)


def test_the_merged_document_is_valid_openapi_31_and_its_rendition_valid_30(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"] == "3.1.0"

    rendition = to_openapi_30(document)

    validate(rendition)
    assert rendition["openapi"] == "3.0.3"


@pytest.mark.parametrize(
    ("public_path", "present"),
    [
        ("/api/v1/users/profile", True),
        ("/api/v1/users/{id}", True),
        ("/api/v1/auth/login", True),
        ("/legacy/accounts/{id}", True),
        ("/api/v1/users/admin/audit", False),
        ("/api/v1/health", True),
        ("/health", False),
        ("/users/profile", False),
        ("/api/v1/users/admin/{path}", True),
        ("/api/v1/orders/{path}", True),
        ("/api/v1/users/{path}", False),
        ("/api/v1/gateway/services", True),
        ("/metrics", True),
    ],
    ids=[
        "strip-prefix-put-back", "templated", "second-route-of-the-service", "empty-strip-prefix",
        "routed-to-another-service", "gateway-endpoint", "not-under-any-route", "service-path-as-is",
        "generic-without-document", "generic-without-any-entry", "no-generic-when-documented",
        "gateway-services", "metrics",
    ],
)
def test_paths_appear_where_the_gateway_routes_them(document: dict[str, Any], public_path: str, present: bool) -> None:
    assert (public_path in document["paths"]) is present


def test_operations_carry_the_gateways_security_and_service_tag(document: dict[str, Any]) -> None:
    paths = document["paths"]
    profile = paths["/api/v1/users/profile"]["get"]
    login = paths["/api/v1/auth/login"]["post"]

    assert profile["tags"] == ["user-service"]
    assert profile["security"] == [{"bearerAuth": []}]
    assert login["security"] == []  # auth: false
    assert profile["operationId"] == "user-service.getProfile"
    assert "servers" not in paths["/api/v1/users/profile"]
    assert document["components"]["securitySchemes"] == {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": document["components"]["securitySchemes"]["bearerAuth"]["description"],
        }
    }
    assert paths["/api/v1/health"]["get"]["security"] == []


def test_gateway_errors_are_added_without_replacing_the_services_own(document: dict[str, Any]) -> None:
    profile = document["paths"]["/api/v1/users/profile"]["get"]["responses"]
    login = document["paths"]["/api/v1/auth/login"]["post"]["responses"]
    orders = document["paths"]["/api/v1/orders/{path}"]["get"]["responses"]

    assert profile["503"] == {"description": "The service's own 503"}
    assert profile["401"] == {"$ref": "#/components/responses/Gateway401"}
    assert profile["502"] == {"$ref": "#/components/responses/Gateway502"}
    assert "401" not in login and "429" not in login
    assert {"401", "403", "429", "502", "503", "504", "default"} <= set(orders)  # roles, rate limit


def test_components_are_renamed_per_service_and_references_follow(document: dict[str, Any]) -> None:
    components = document["components"]
    user = components["schemas"]["user-service.User"]

    assert document["paths"]["/api/v1/users/profile"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ] == {"$ref": "#/components/schemas/user-service.User"}
    assert user["properties"]["boss"] == {"$ref": "#/components/schemas/user-service.User"}
    assert document["paths"]["/api/v1/users/{id}"]["parameters"] == [
        {"$ref": "#/components/parameters/user-service.Id"}
    ]
    assert "serviceKey" not in components["securitySchemes"]
    # The service wrote 3.0; the merged document says the same in 3.1 terms.
    assert user["properties"]["name"] == {"type": ["string", "null"]}
    assert user["properties"]["age"] == {"type": "integer", "exclusiveMinimum": 0}


def test_routes_and_document_status_are_described(document: dict[str, Any]) -> None:
    kadai = document["x-kadai"]
    tags = {tag["name"]: tag["description"] for tag in document["tags"]}

    assert kadai["configRevision"] == 7
    assert {"prefix": "/api/v1/auth", "service": "user-service", "auth": False, "stripPrefix": "/api/v1"} in kadai[
        "routes"
    ]
    assert {"prefix": "/api/v1/users", "service": "user-service", "auth": True, "stripPrefix": "/api/v1"} in kadai[
        "routes"
    ]
    assert kadai["services"]["user-service"]["status"] == "merged"
    assert kadai["services"]["admin-service"] == {
        "status": "unavailable", "instance": ADMIN_URL, "fetchedAt": None, "error": "404",
    }
    assert kadai["services"]["order-service"] == {"status": "pending"}
    assert "`/api/v1/auth` (no token)" in tags["user-service"]
    assert "`/api/v1/users` (bearer token)" in tags["user-service"]
    assert "not available (404)" in tags["admin-service"]
    assert "not been fetched yet" in tags["order-service"]
    assert list(tags) == ["gateway", "user-service", "admin-service", "order-service"]


def test_a_document_kept_after_a_failed_refresh_says_so() -> None:
    kept = entry(USERS_SPEC, error="no answer within 2s")

    document = build_document(make_table(), {"user-service": kept})

    assert "/api/v1/users/profile" in document["paths"]
    tag = next(tag for tag in document["tags"] if tag["name"] == "user-service")
    assert "latest refresh failed (no answer within 2s)" in tag["description"]


def test_a_route_the_document_does_not_cover_gets_the_generic_entry() -> None:
    spec = copy.deepcopy(USERS_SPEC)
    del spec["paths"]["/auth/login"]

    document = build_document(make_table(), {"user-service": entry(spec)})

    generic = document["paths"]["/api/v1/auth/{path}"]
    assert set(generic) >= {"get", "post", "put", "patch", "delete", "parameters"}
    assert generic["get"]["tags"] == ["user-service"]
    assert "/api/v1/users/{path}" not in document["paths"]


def test_duplicate_operation_ids_keep_the_first() -> None:
    spec = copy.deepcopy(USERS_SPEC)
    spec["paths"]["/auth/login"]["post"]["operationId"] = "getProfile"

    document = build_document(make_table(), {"user-service": entry(spec)})

    ids = [
        operation.get("operationId")
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "responses" in operation
    ]
    assert ids.count("user-service.getProfile") == 1


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": ["string", "null"]}, {"type": "string", "nullable": True}),
        ({"type": "null"}, {"nullable": True}),
        ({"type": ["integer", "string"]}, {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
        ({"const": "x"}, {"enum": ["x"]}),
        ({"type": "integer", "examples": [3, 4]}, {"type": "integer", "example": 3}),
        ({"type": "number", "exclusiveMinimum": 0}, {"type": "number", "minimum": 0, "exclusiveMinimum": True}),
        ({"type": "number", "exclusiveMaximum": 9.5}, {"type": "number", "maximum": 9.5, "exclusiveMaximum": True}),
        (
            {"anyOf": [{"$ref": "#/components/schemas/A"}, {"type": "null"}]},
            {"anyOf": [{"$ref": "#/components/schemas/A"}], "nullable": True},
        ),
        (
            {"type": "object", "properties": {"type": {"type": ["string", "null"]}, "const": {"type": "integer"}}},
            {
                "type": "object",
                "properties": {"type": {"type": "string", "nullable": True}, "const": {"type": "integer"}},
            },
        ),
    ],
    ids=[
        "nullable-type", "null-only", "type-union", "const", "examples", "exclusive-minimum", "exclusive-maximum",
        "nullable-ref", "properties-named-like-keywords",
    ],
)
def test_schemas_written_down_to_30(schema: dict[str, Any], expected: dict[str, Any]) -> None:
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1", "summary": "3.1 only", "license": {"name": "MIT", "identifier": "MIT"}},
        "webhooks": {},
        "paths": {"/x": {"get": {}}},
        "components": {"schemas": {"S": schema}},
    }

    rendition = to_openapi_30(document)

    assert rendition["components"]["schemas"]["S"] == expected
    assert rendition["openapi"] == "3.0.3"
    assert "webhooks" not in rendition and "summary" not in rendition["info"]
    assert rendition["info"]["license"] == {"name": "MIT"}
    assert rendition["paths"]["/x"]["get"]["responses"]  # required in 3.0
    assert document["components"]["schemas"]["S"] == schema  # the 3.1 document is left as it was


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string", "nullable": True}, {"type": ["string", "null"]}),
        ({"type": "string", "nullable": False}, {"type": "string"}),
        (
            {"$ref": "#/components/schemas/A", "nullable": True},
            {"anyOf": [{"$ref": "#/components/schemas/A"}, {"type": "null"}]},
        ),
        ({"minimum": 1, "exclusiveMinimum": True}, {"exclusiveMinimum": 1}),
        ({"maximum": 5, "exclusiveMaximum": False}, {"maximum": 5}),
        (
            {"type": "object", "properties": {"nullable": {"type": "boolean"}}},
            {"type": "object", "properties": {"nullable": {"type": "boolean"}}},
        ),
    ],
    ids=[
        "nullable", "not-nullable", "nullable-ref", "exclusive-minimum", "inclusive-maximum", "property-named-nullable",
    ],
)
def test_service_schemas_brought_up_to_31(schema: dict[str, Any], expected: dict[str, Any]) -> None:
    document = {"openapi": "3.0.1", "paths": {}, "components": {"schemas": {"S": schema}}}

    assert to_openapi_31(document)["components"]["schemas"]["S"] == expected


def test_a_31_service_document_is_copied_as_it_is() -> None:
    document = {"openapi": "3.1.0", "paths": {}, "components": {"schemas": {"S": {"type": "string", "nullable": True}}}}

    copied = to_openapi_31(document)

    assert copied == document and copied is not document


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ([], "not a JSON object"),
        ({"swagger": "2.0", "paths": {}}, "not an OpenAPI 3 document (openapi: Swagger 2.0)"),
        ({"openapi": 3.0, "paths": {}}, "not an OpenAPI 3 document"),
        ({"openapi": "4.0.0", "paths": {}}, "not an OpenAPI 3 document"),
        ({"openapi": "3.0.0", "paths": []}, "paths is not a map"),
        ({"openapi": "3.0.0", "paths": {"/x": "get"}}, "paths is not a map"),
    ],
    ids=["list", "swagger-2", "number-version", "openapi-4", "paths-list", "path-item-string"],
)
def test_documents_that_cannot_be_merged_are_refused(document: object, reason: str) -> None:
    with pytest.raises(SpecFetchError, match=re.escape(reason)):
        check_document(document)


def test_a_document_without_paths_is_accepted() -> None:
    assert check_document({"openapi": "3.1.0", "webhooks": {}}) == {"openapi": "3.1.0", "webhooks": {}}


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("", False),
        ('"abc"', True),
        ('W/"abc"', True),
        ('"other", "abc"', True),
        ("*", True),
        ('"abcd"', False),
    ],
    ids=["absent", "empty", "same", "weak", "listed", "star", "other"],
)
def test_etag_matches(header: str | None, matches: bool) -> None:
    assert etag_matches(header, '"abc"') is matches


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (None, False),
        ("gzip", True),
        ("br, gzip;q=0.5", True),
        ("GZIP", True),
        ("gzip;q=0", False),
        ("gzip;q=0.0", False),
        ("*", True),
        ("identity", False),
        ("gzip;q=x", False),
    ],
    ids=["absent", "gzip", "with-q", "upper-case", "q-zero", "q-zero-point-zero", "star", "identity", "bad-q"],
)
def test_accepts_gzip(header: str | None, accepted: bool) -> None:
    assert accepts_gzip(header) is accepted


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (format_rate(12.3456), "12.35/s"),
        (format_percent(0.0123), "1.2%"),
        (format_milliseconds(None), "—"),
        (format_milliseconds(3.14159), "3.1 ms"),
        (format_duration(5.9), "5s"),
        (format_duration(65), "1m 05s"),
        (format_duration(3 * 3600 + 7 * 60), "3h 07m"),
        (format_duration(2 * 86400 + 5 * 3600), "2d 5h"),
    ],
    ids=["rate", "percent", "no-p99", "p99", "seconds", "minutes", "hours", "days"],
)
def test_dashboard_figures(text: str, expected: str) -> None:
    assert text == expected


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        (
            WindowSummary(seconds=1.0, requests=0, errors=0, rejected=0, p99=None),
            {"requests": 0, "requestsPerSecond": 0.0, "errors": 0, "errorRate": 0.0, "p99Ms": None},
        ),
        (
            WindowSummary(seconds=60.0, requests=7, errors=2, rejected=3, p99=0.0123456),
            {"requests": 7, "requestsPerSecond": 0.117, "errors": 2, "errorRate": 0.2857, "p99Ms": 12.35},
        ),
    ],
    ids=["idle", "busy"],
)
def test_the_figures_of_a_service_or_an_instance(summary: WindowSummary, expected: dict[str, Any]) -> None:
    assert figures(summary) == expected


def test_an_event_is_one_data_line() -> None:
    assert event(3, {"a": "line\nbreak"}) == b'id: 3\ndata: {"a":"line\\nbreak"}\n\n'
    assert event(1, {}, retry_ms=2000) == b"retry: 2000\nid: 1\ndata: {}\n\n"
