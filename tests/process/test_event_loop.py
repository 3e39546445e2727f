"""`kadai gateway` serves on uvloop by default; KADAI_EVENT_LOOP=asyncio keeps asyncio's own loop."""
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
        return web.json_response({"method": request.method, "body": (await request.text())})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return await start_upstream(app)


async def _serves_on(gw: GatewayProcess) -> str:
    """The loop the status endpoint reports, after a proxied POST went through the upstream pool."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}/api/v1/users/x", data=b"a" * 100_000) as reply:
            assert reply.status == 200
            assert await reply.json() == {"method": "POST", "body": "a" * 100_000}
        async with session.get(f"{gw.url}/api/v1/gateway/status") as reply:
            assert reply.status == 200
            data = (await reply.json())["data"]
    assert data["settings"]["eventLoop"] == data["eventLoop"]
    return str(data["eventLoop"])


def _listening_line(gw: GatewayProcess) -> dict[str, object]:
    line = next(line for line in gw.output().splitlines() if "gateway listening" in line)
    return orjson.loads(line)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("setting", "loop"), [("", "uvloop"), ("asyncio", "asyncio"), ("uvloop", "uvloop")])
async def test_the_gateway_serves_on_the_loop_asked_for(
    tmp_path: Path, gateway_process: Callable[..., GatewayProcess], echo_url: str, setting: str, loop: str
) -> None:
    """KADAI_EVENT_LOOP unset (""): uvloop, a dependency of the package."""
    registry = write_registry(tmp_path / "registry.yaml", {"users": service([echo_url], "/api/v1/users")})
    gw = gateway_process(registry, env={"KADAI_EVENT_LOOP": setting})

    assert await _serves_on(gw) == loop
    assert _listening_line(gw)["eventLoop"] == loop
