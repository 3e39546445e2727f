"""`kadai demo` when a step fails: the step is marked FAILED with the response it got, and the exit code is 1.
(The passing walk-through runs against real platforms in test_up.py.)"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import Gateway, create_app
from gateway.config.settings import MEMORY_URL, Settings
from services.platform.demo import Answer, StepFailed, drive, poll
from tests.conftest import StartUpstream
from tests.support import free_port, service, write_registry


async def test_a_failing_step_prints_its_response_and_exits_1(tmp_path: Path) -> None:
    # A gateway whose user-service is down: health answers, registration gets the 502 envelope.
    registry = write_registry(
        tmp_path / "registry.yaml",
        {"user-service": service([f"http://127.0.0.1:{free_port()}"], {"prefix": "/api/v1/auth", "retry": False})},
    )
    gateway = Gateway(Settings(redis_url=MEMORY_URL, reload_interval=0.1), registry)
    server = TestServer(create_app(gateway), host="127.0.0.1")
    await server.start_server()
    out = io.StringIO()
    try:
        code = await drive(str(server.make_url("")), out)
    finally:
        await server.close()

    lines = out.getvalue().splitlines()
    assert code == 1
    assert lines[1].startswith("  1. the gateway answers (GET /api/v1/health) ") and lines[1].endswith("ok  gateway ok")
    assert lines[2].startswith("  2. register a seller ")
    assert lines[2].endswith("FAILED: expected 201 with a success envelope")
    assert lines[3].strip() == "POST /api/v1/auth/register -> 502"
    envelope = json.loads("\n".join(lines[4:-1]))
    assert (envelope["success"], envelope["statusCode"]) == (False, 502)
    assert lines[-1] == "demo FAILED at step 2"


async def test_an_unreachable_gateway_fails_the_first_step() -> None:
    out = io.StringIO()

    code = await drive(f"http://127.0.0.1:{free_port()}", out)

    assert code == 1
    assert "FAILED: GET /api/v1/health: ClientConnectorError" in out.getvalue()


async def test_a_rate_limited_call_waits_and_tries_again(start_upstream: StartUpstream) -> None:
    calls: list[str] = []

    async def health(_request: web.Request) -> web.Response:
        calls.append("health")
        if len(calls) == 1:
            return web.json_response({"success": False}, status=429, headers={"Retry-After": "0"})
        return web.json_response({"success": True, "data": {"status": "ok"}})

    app = web.Application()
    app.router.add_get("/api/v1/health", health)
    base = await start_upstream(app)
    out = io.StringIO()

    await drive(base, out)

    assert calls == ["health", "health"]
    assert "ok  gateway ok" in out.getvalue()


async def test_polling_gives_up_after_its_timeout_with_the_last_answer() -> None:
    last = Answer("GET", "/api/v1/orders/1", 200, {"success": True, "data": {"order": {"status": "pending"}}})
    checks = 0

    async def check() -> tuple[bool, Answer | None, str]:
        nonlocal checks
        checks += 1
        return False, last, "pending"

    with pytest.raises(StepFailed) as failed:
        await poll(check, timeout=0.3)

    assert failed.value.reason == "still pending after 0.3s"
    assert failed.value.answer is last
    assert checks >= 2
