from __future__ import annotations

from pathlib import Path

from aiohttp import web

from gateway.keys import GATEWAY_KEY
from tests.support import service, write_registry


async def test_routes_to_upstream_and_strips_version(tmp_path: Path, start_upstream, gateway_client) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path_qs})

    upstream = web.Application()
    upstream.router.add_get("/{tail:.*}", echo)
    base = await start_upstream(upstream)
    client = await gateway_client(write_registry(tmp_path / "r.yaml", {"user-service": service([base], "/api/v1/users")}))
    response = await client.get("/api/v1/users/profile?x=1")
    assert response.status == 200
    assert await response.json() == {"path": "/users/profile?x=1"}
    assert response.headers["X-Gateway-Service"] == "user-service"
    assert client.app[GATEWAY_KEY].table.revision == 1
