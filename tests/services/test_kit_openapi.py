"""GET /openapi.json of a service: every route, public or token, and the module's OPENAPI_PATHS on top;
the fragments services write OPENAPI_PATHS with."""
from __future__ import annotations

import json
from typing import Any

import aiohttp
import orjson
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from pydantic import BaseModel, Field

from gateway.envelope import error_body, success_body
from services import catalog
from services.kit import (
    ERROR_ENVELOPE,
    PAGINATION_SCHEMA,
    CamelModel,
    Pagination,
    Routes,
    Service,
    error,
    listed,
    path_parameter,
    query_parameters,
    reply,
    request_body,
    schema,
    wrapped,
)
from services.kit.openapi import document
from services.user import SERVICE
from tests.services.conftest import MakeSettings, Serve

routes = Routes()

OPENAPI_PATHS = {
    "/widgets/{widgetId}": {
        "get": {"summary": "One widget, documented by hand", "responses": {"200": {"description": "the widget"}}}
    },
    "/gadgets/{gadgetId}": {
        "parameters": [{"name": "gadgetId", "in": "path", "required": True, "schema": {"type": "string"}}],
        "patch": {"summary": "Change a gadget", "responses": {"200": {"description": "the gadget"}}},
    },
}


@routes.get("/widgets/{widget_id}")
async def get_widget(call: object) -> dict[str, str]:
    """Generated summary that OPENAPI_PATHS replaces."""
    return {}


@routes.post("/widgets", roles=("seller",))
async def create_widget(call: object) -> dict[str, str]:
    """Create a widget."""
    return {}


@routes.delete("/widgets/{widget_id}")
async def delete_widget(call: object) -> dict[str, str]:
    """Delete a widget."""
    return {}


@routes.get("/catalogue", public=True)
async def catalogue(call: object) -> dict[str, str]:
    return {}


@routes.patch("/gadgets/{gadget_id}", roles=("admin",))
async def change_gadget(call: object) -> dict[str, str]:
    return {}


@routes.delete("/gadgets/{gadget_id}")
async def delete_gadget(call: object) -> dict[str, str]:
    """Delete a gadget."""
    return {}


WIDGETS = Service(name="widget-service", port=3999, routes=routes)


def test_every_route_is_described_and_declared_paths_replace_generated_operations() -> None:
    spec = document(WIDGETS)

    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["title"] == "widget-service"
    # Declared with {widgetId}, routed as {widget_id}: one path, named as declared.
    assert set(spec["paths"]) == {"/widgets/{widgetId}", "/widgets", "/catalogue", "/gadgets/{gadgetId}"}
    get = spec["paths"]["/widgets/{widgetId}"]["get"]
    assert get["summary"] == "One widget, documented by hand"
    assert get["responses"] == {"200": {"description": "the widget"}}
    # What the declaration leaves out comes from the route.
    assert (get["operationId"], get["security"]) == ("get_widget", [{"bearerAuth": []}])
    assert [parameter["name"] for parameter in get["parameters"]] == ["widgetId"]
    delete = spec["paths"]["/widgets/{widgetId}"]["delete"]
    assert delete["summary"] == "Delete a widget."
    assert [parameter["name"] for parameter in delete["parameters"]] == ["widgetId"]
    create = spec["paths"]["/widgets"]["post"]
    assert create["summary"] == "Create a widget."
    assert create["security"] == [{"bearerAuth": []}]
    assert create["description"] == "Roles: seller"
    assert set(create["responses"]) == {"200", "401", "403"}
    public = spec["paths"]["/catalogue"]["get"]
    assert public["security"] == []
    assert public["summary"] == "GET /catalogue"
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


async def test_a_running_service_serves_its_document_without_a_token(serve: Serve, make_settings: MakeSettings) -> None:
    users = await serve(SERVICE, make_settings())
    async with aiohttp.ClientSession() as session, session.get(users.url + "/openapi.json") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        spec = await response.json()
    assert spec["info"]["title"] == "user-service"
    assert spec["paths"]["/auth/login"]["post"]["security"] == []
    assert spec["paths"]["/users/profile"]["get"]["security"] == [{"bearerAuth": []}]


def test_path_parameters_declared_for_the_path_item_are_not_overridden_by_generated_ones() -> None:
    spec = document(WIDGETS)
    validate(spec)
    gadget = spec["paths"]["/gadgets/{gadgetId}"]
    assert [parameter["name"] for parameter in gadget["parameters"]] == ["gadgetId"]
    patch, delete = gadget["patch"], gadget["delete"]
    assert "parameters" not in patch and "parameters" not in delete
    assert (patch["summary"], patch["operationId"], patch["description"]) == (
        "Change a gadget",
        "change_gadget",
        "Roles: admin",
    )
    assert delete["summary"] == "Delete a gadget."
    # The module's declaration is read, never changed.
    assert set(OPENAPI_PATHS["/gadgets/{gadgetId}"]["patch"]) == {"summary", "responses"}


@pytest.mark.parametrize("name", list(catalog.CATALOG), ids=list(catalog.CATALOG))
def test_every_services_served_document_is_valid_and_self_contained(name: str) -> None:
    spec = document(catalog.load(name))
    validate(spec)
    text = json.dumps(spec)
    assert "$ref" not in text and "$defs" not in text


# Fragments ----------------------------------------------------------------------------------------------


class Money(CamelModel):
    amount_cents: int = Field(ge=0)
    currency: str = "USD"


class Line(CamelModel):
    product_id: str
    price: Money = Field(description="Unit price.")


class Basket(CamelModel):
    lines: list[Line]
    total: Money | None = None


class Node(BaseModel):
    children: list[Node] = []


class Search(CamelModel):
    term: str = Field(min_length=1, description="Words to look for.")
    in_stock: bool | None = None


def test_schema_inlines_nested_definitions_and_keeps_what_sits_beside_a_reference() -> None:
    basket = schema(Basket)
    assert "$ref" not in json.dumps(basket) and "$defs" not in json.dumps(basket)
    line = basket["properties"]["lines"]["items"]
    assert line["properties"]["productId"]["type"] == "string"
    assert line["properties"]["price"]["description"] == "Unit price."
    amount = line["properties"]["price"]["properties"]["amountCents"]
    assert (amount["type"], amount["minimum"]) == ("integer", 0)
    total = basket["properties"]["total"]["anyOf"]
    assert {"type": "null"} in total and any("amountCents" in option.get("properties", {}) for option in total)
    # Each inlined copy of a definition is its own: changing one leaves the others alone.
    line["properties"]["price"]["properties"]["currency"]["default"] = "EUR"
    money = next(option for option in total if "properties" in option)
    assert money["properties"]["currency"]["default"] == "USD"


def test_a_model_that_contains_itself_cannot_be_inlined() -> None:
    with pytest.raises(ValueError, match="Node refers to itself"):
        schema(Node)


def test_query_parameters_are_camel_case_required_as_the_model_says_and_described() -> None:
    term, in_stock = query_parameters(Search)
    assert (term["name"], term["in"], term["required"], term["description"]) == (
        "term",
        "query",
        True,
        "Words to look for.",
    )
    assert (term["schema"]["type"], term["schema"]["minLength"]) == ("string", 1)
    assert "description" not in term["schema"]
    assert (in_stock["name"], in_stock["required"], "description" in in_stock) == ("inStock", False, False)
    assert {"type": "boolean"} in in_stock["schema"]["anyOf"]


@pytest.mark.parametrize(
    ("description", "expected"),
    [(None, {}), ("The gadget's ID.", {"description": "The gadget's ID."})],
    ids=["bare", "described"],
)
def test_path_parameters_are_required_strings(description: str | None, expected: dict[str, str]) -> None:
    assert path_parameter("gadgetId", description) == {
        "name": "gadgetId",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        **expected,
    }


def _body_schema(response: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = response["content"]["application/json"]["schema"]
    return found


@pytest.mark.parametrize("request_id", ["req_1", None], ids=["request-id", "no-request-id"])
def test_the_documented_envelopes_accept_what_the_kit_writes(request_id: str | None) -> None:
    basket = {"lines": [{"productId": "p1", "price": {"amountCents": 250, "currency": "USD"}}], "total": None}
    page = {"baskets": [basket], "pagination": Pagination(page=1, page_size=5).meta(total=1)}
    accepted = [
        (reply("ok", Basket), success_body(basket, request_id, "Created")),
        (reply("ok", wrapped("basket", Basket)), success_body({"basket": basket}, request_id)),
        (reply("ok", listed("baskets", Basket)), success_body(page, request_id)),
        (reply("ok"), success_body([1, "two"], request_id)),
        (error("bad"), error_body(422, "Validation failed", request_id, [{"field": "x", "message": "m", "type": "t"}])),
        (error("bad"), error_body(404, "No such basket", request_id)),
    ]
    for response, body in accepted:
        Draft202012Validator(_body_schema(response)).validate(orjson.loads(body))


@pytest.mark.parametrize(
    ("response", "body"),
    [
        (reply("ok", Basket), {"success": True, "data": {"lines": "none"}, "timestamp": "t", "requestId": None}),
        (reply("ok", Basket), {"success": True, "data": {"lines": []}, "timestamp": "t"}),
        (reply("ok", Basket), {"success": False, "data": {"lines": []}, "timestamp": "t", "requestId": None}),
        (error("bad"), {"success": False, "error": "x", "statusCode": "404", "timestamp": "t", "requestId": None}),
        (error("bad"), {"success": True, "error": "x", "statusCode": 404, "timestamp": "t", "requestId": None}),
    ],
    ids=["wrong-data", "no-request-id-key", "success-false", "status-as-text", "error-marked-success"],
)
def test_the_documented_envelopes_refuse_other_shapes(response: dict[str, Any], body: dict[str, Any]) -> None:
    assert not Draft202012Validator(_body_schema(response)).is_valid(body)


def test_request_bodies_list_replies_and_errors_are_the_shared_pieces() -> None:
    assert request_body(Basket) == {"required": True, "content": {"application/json": {"schema": schema(Basket)}}}
    assert _body_schema(error("bad")) is ERROR_ENVELOPE
    assert listed("baskets", Basket)["properties"]["pagination"] is PAGINATION_SCHEMA
    assert wrapped("basket", Basket) == {
        "type": "object",
        "required": ["basket"],
        "properties": {"basket": schema(Basket)},
    }
