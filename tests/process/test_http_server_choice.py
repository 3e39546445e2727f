"""`kadai gateway` reads requests with its own HTTP server by default; KADAI_HTTP_SERVER=aiohttp puts
aiohttp's in its place. Either way a proxied body, the status endpoint and the start-up line agree."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.support import GatewayProcess, service, write_registry

pytestmark = pytest.mark.slow


@pytest.fixture
async def echo_url(start_upstream: StartUpstream) -> str:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"method": request.method, "length": len(await request.read())})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return await start_upstream(app)


@pytest.mark.parametrize(("setting", "server"), [("", "kadai"), ("kadai", "kadai"), ("aiohttp", "aiohttp")])
async def test_the_gateway_serves_with_the_http_server_asked_for(
    tmp_path: Path, gateway_process: Callable[..., GatewayProcess], echo_url: str, setting: str, server: str
) -> None:
    registry = write_registry(tmp_path / "registry.yaml", {"users": service([echo_url], "/api/v1/users")})
    gw = gateway_process(registry, env={"KADAI_HTTP_SERVER": setting})

    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # the second on the kept-alive connection
            async with session.post(f"{gw.url}/api/v1/users/x", data=b"a" * 300_000) as reply:
                assert reply.status == 200
                assert await reply.json() == {"method": "POST", "length": 300_000}
        async with session.get(f"{gw.url}/api/v1/gateway/status") as reply:
            assert reply.status == 200
            data = (await reply.json())["data"]
    assert data["settings"]["httpServer"] == server
    line = next(line for line in gw.output().splitlines() if "gateway listening" in line)
    assert orjson.loads(line)["httpServer"] == server
