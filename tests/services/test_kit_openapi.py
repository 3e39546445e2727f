"""GET /openapi.json of a service: every route, public or token, and the module's OPENAPI_PATHS on top."""
from __future__ import annotations

import aiohttp

from services.kit import Routes, Service
from services.kit.openapi import document
from services.user import SERVICE
from tests.services.conftest import MakeSettings, Serve

routes = Routes()

OPENAPI_PATHS = {
    "/widgets/{widgetId}": {
        "get": {"summary": "One widget, documented by hand", "responses": {"200": {"description": "the widget"}}}
    }
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


WIDGETS = Service(name="widget-service", port=3999, routes=routes)


def test_every_route_is_described_and_declared_paths_replace_generated_operations() -> None:
    spec = document(WIDGETS)

    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["title"] == "widget-service"
    # Declared with {widgetId}, routed as {widget_id}: one path, named as declared.
    assert set(spec["paths"]) == {"/widgets/{widgetId}", "/widgets", "/catalogue"}
    assert spec["paths"]["/widgets/{widgetId}"]["get"]["summary"] == "One widget, documented by hand"
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
