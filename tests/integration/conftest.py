"""Fixtures of the integration tests: recording upstreams, a registry path per test, a served gateway."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from gateway.app import Gateway, create_app
from gateway.config.settings import Settings
from tests.integration.helpers import Recorder, ServeGateway, StartRecorder, StartUpstream


@pytest.fixture
def registry_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.yaml"


@pytest.fixture
def start_recorder(start_upstream: StartUpstream) -> StartRecorder:
    """Start a recording echo upstream on a loopback port; its url is set once it listens."""

    async def start(name: str) -> Recorder:
        recorder = Recorder(name)
        recorder.url = await start_upstream(recorder.app())
        return recorder

    return start


@pytest.fixture
async def serve_gateway(settings: Settings) -> AsyncIterator[ServeGateway]:
    """The real app served the way gateway/server.py serves it (web.AppRunner defaults: a client that goes
    away does not cancel its handler), unlike aiohttp's TestServer, which turns handler cancellation on.
    Only for behaviour that depends on that difference; everything else uses gateway_client."""
    runners: list[web.AppRunner] = []

    async def serve(registry: Path) -> tuple[str, Gateway]:
        gw = Gateway(settings, registry)
        runner = web.AppRunner(create_app(gw), handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}", gw

    yield serve
    for runner in reversed(runners):
        await runner.cleanup()
