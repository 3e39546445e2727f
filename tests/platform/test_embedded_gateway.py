"""The gateway on REDIS_URL=memory:// (what `kadai up` runs without Redis): validated like any setting, refused
in production, rate limits enforced in the process, no Redis client, the response cache off."""
from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from gateway.config.errors import ConfigError
from gateway.config.settings import MEMORY_URL, Settings, load_settings
from gateway.keys import GATEWAY_KEY
from gateway.ratelimit import InProcessBackend, Limiter
from tests.conftest import StartUpstream
from tests.integration.helpers import GatewayClient, assert_error_envelope
from tests.support import service, write_registry

STRONG_SECRET = "a-production-secret-of-more-than-32-characters"


@pytest.fixture
def settings() -> Settings:
    return Settings(redis_url=MEMORY_URL, reload_interval=0.1, drain_timeout=2.0)


@pytest.mark.parametrize("variable", ["REDIS_URL", "AMQP_URL"])
def test_memory_urls_are_accepted_in_development(variable: str) -> None:
    settings = load_settings({variable: MEMORY_URL})

    assert getattr(settings, variable.lower()) == MEMORY_URL
    assert settings.embedded_redis is (variable == "REDIS_URL")
    assert settings.public_view()[{"REDIS_URL": "redisUrl", "AMQP_URL": "amqpUrl"}[variable]] == MEMORY_URL


@pytest.mark.parametrize("variable", ["REDIS_URL", "AMQP_URL"])
def test_memory_urls_are_refused_in_production(variable: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({"KADAI_ENV": "production", "JWT_SECRET": STRONG_SECRET, variable: MEMORY_URL})

    assert list(refused.value.problems) == [
        f"{variable}: memory:// (in-process) is for development, not KADAI_ENV=production"
    ]


def test_other_schemes_are_still_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings({"REDIS_URL": "memory:/x"})

    assert refused.value.problems[0].startswith("REDIS_URL: expected a redis://")


async def _counting_upstream(start_upstream: StartUpstream) -> tuple[str, list[str]]:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"n": len(seen)}, headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return await start_upstream(app), seen


async def test_rate_limits_are_enforced_in_the_process_without_redis(
    tmp_path: Path, gateway_client: GatewayClient, start_upstream: StartUpstream
) -> None:
    url, seen = await _counting_upstream(start_upstream)
    limited = {"prefix": "/api/v1/users", "rate_limit": {"second": {"limit": 2, "window": "1m"}}}
    registry = write_registry(tmp_path / "registry.yaml", {"user-service": service([url], limited)})
    client = await gateway_client(registry)
    gw = client.app[GATEWAY_KEY]

    statuses = []
    for _ in range(3):
        async with client.get("/api/v1/users/1") as response:
            statuses.append(response.status)
            body = await response.json()

    assert statuses == [200, 200, 429]
    assert_error_envelope(body, 429)
    assert body["details"]["tier"] == "second"
    assert len(seen) == 2
    limiter = gw.resources.components["rateLimiter"]
    assert isinstance(limiter, Limiter) and isinstance(limiter.backend, InProcessBackend)
    assert gw.resources.redis is None
    async with client.get("/api/v1/health/detailed") as response:
        report = (await response.json())["data"]["components"]["rateLimiter"]
    assert (report["backend"], report["status"]) == ("in-process", "ok")


async def test_the_response_cache_is_off_without_redis(
    tmp_path: Path, gateway_client: GatewayClient, start_upstream: StartUpstream
) -> None:
    url, seen = await _counting_upstream(start_upstream)
    cached = {"prefix": "/api/v1/things", "cache": {"ttl": "1m"}}
    client = await gateway_client(write_registry(tmp_path / "registry.yaml", {"things": service([url], cached)}))

    for expected in (1, 2):
        async with client.get("/api/v1/things/1") as response:
            assert response.status == 200
            assert (await response.json())["n"] == expected
            assert "X-Cache" not in response.headers

    assert seen == ["/things/1", "/things/1"]
