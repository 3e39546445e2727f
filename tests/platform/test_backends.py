"""Which backends `kadai up` picks: the rule (pure), and the probes against the real servers, dead ports and a
server that accepts connections but never answers."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.config.settings import MEMORY_URL
from services.platform.backends import (
    Backend,
    Backends,
    decide,
    management_url,
    port_answers,
    probe_amqp,
    probe_redis,
    resolve,
)
from tests.support import free_port

SECRET = "pw-that-stays-hidden"


@pytest.mark.parametrize(
    ("configured", "production", "problem", "mode", "reachable", "reason"),
    [
        (MEMORY_URL, False, None, "embedded", None, "REDIS_URL=memory://"),
        ("redis://127.0.0.1:6379/0", False, None, "external", True, "answered at start"),
        ("redis://127.0.0.1:6379/0", True, None, "external", True, "answered at start"),
        (
            f"redis://:{SECRET}@127.0.0.1:1/0",
            False,
            "ConnectionError: refused",
            "embedded",
            False,
            "REDIS_URL redis://:***@127.0.0.1:1/0 did not answer (ConnectionError: refused)",
        ),
        (
            "redis://cache:6379/0",
            True,
            "no answer within 1s",
            "external",
            False,
            "did not answer at start (no answer within 1s); used anyway",
        ),
    ],
    ids=["memory-url", "answers", "answers-production", "down-falls-back", "down-production-never-falls-back"],
)
def test_decide(
    configured: str, production: bool, problem: str | None, mode: str, reachable: bool | None, reason: str
) -> None:
    backend = decide("REDIS_URL", configured, production, problem)

    assert (backend.mode, backend.reachable, backend.reason) == (mode, reachable, reason)
    assert backend.url == (MEMORY_URL if mode == "embedded" else configured)
    assert SECRET not in str(backend.describe())


@pytest.mark.parametrize(
    ("redis_mode", "amqp_mode", "mode"),
    [("embedded", "embedded", "embedded"), ("external", "external", "external"), ("external", "embedded", "mixed")],
    ids=["embedded", "external", "mixed"],
)
def test_the_platform_mode_names_a_mix(redis_mode: str, amqp_mode: str, mode: str) -> None:
    backends = Backends(
        Backend("REDIS_URL", "redis://h/0", redis_mode, "x"),  # type: ignore[arg-type]
        Backend("AMQP_URL", "amqp://h/", amqp_mode, "x"),  # type: ignore[arg-type]
    )

    assert backends.mode == mode
    assert backends.overrides() == {
        "REDIS_URL": MEMORY_URL if redis_mode == "embedded" else "redis://h/0",
        "AMQP_URL": MEMORY_URL if amqp_mode == "embedded" else "amqp://h/",
    }


async def test_memory_urls_are_not_probed() -> None:
    async def never(url: str, timeout: float) -> str | None:
        raise AssertionError(f"probed {url}")

    backends = await resolve(
        {"REDIS_URL": MEMORY_URL, "AMQP_URL": MEMORY_URL}, False, probe_redis_url=never, probe_amqp_url=never
    )

    assert (backends.redis.mode, backends.amqp.mode, backends.mode) == ("embedded", "embedded", "embedded")


async def test_unset_urls_probe_the_defaults() -> None:
    probed: list[str] = []

    async def record(url: str, timeout: float) -> str | None:
        probed.append(url)
        return "down"

    backends = await resolve({"AMQP_URL": "  "}, False, probe_redis_url=record, probe_amqp_url=record)

    assert probed == ["redis://127.0.0.1:6379/0", "amqp://guest:guest@127.0.0.1:5672/"]
    assert backends.mode == "embedded"


async def test_dead_ports_fall_back_to_embedded_and_say_why() -> None:
    dead = free_port()
    environ = {
        "REDIS_URL": f"redis://:{SECRET}@127.0.0.1:{dead}/0",
        "AMQP_URL": f"amqp://kadai:{SECRET}@127.0.0.1:{dead}/",
    }

    backends = await resolve(environ, False, timeout=0.5)

    assert backends.mode == "embedded"
    assert "did not answer" in backends.redis.reason and str(dead) in backends.redis.reason
    assert "did not answer" in backends.amqp.reason
    assert SECRET not in backends.redis.reason + backends.amqp.reason


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A port that accepts connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
async def test_a_server_that_never_answers_is_given_up_on_within_the_timeout(silent_server: int, scheme: str) -> None:
    probe = probe_redis if scheme == "redis" else probe_amqp
    started = asyncio.get_running_loop().time()

    problem = await probe(f"{scheme}://127.0.0.1:{silent_server}/", 0.2)

    assert problem is not None
    assert asyncio.get_running_loop().time() - started < 1.0


@pytest.mark.redis
async def test_the_real_redis_answers(redis_server: str) -> None:
    assert await probe_redis(redis_server, 1.0) is None


@pytest.mark.rabbitmq
async def test_the_real_broker_answers_and_a_wrong_login_does_not(rabbitmq_server: str) -> None:
    from yarl import URL

    wrong = str(URL(rabbitmq_server).with_user("kadai-nobody").with_password(SECRET))

    assert await probe_amqp(rabbitmq_server, 2.0) is None
    problem = await probe_amqp(wrong, 2.0)
    assert problem is not None and SECRET not in problem


async def test_management_url_and_port_probe() -> None:
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await port_answers(f"http://127.0.0.1:{port}")
    finally:
        server.close()
        await server.wait_closed()

    assert not await port_answers(f"http://127.0.0.1:{free_port()}")
    assert management_url("amqp://u:p@mq.internal:5672/vhost") == "http://mq.internal:15672"
