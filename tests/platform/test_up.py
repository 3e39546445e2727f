"""`kadai up` as a user runs it: a real process with the gateway and every service of a registry, on
embedded backends and on the real Redis and RabbitMQ, driven by `kadai demo`, stopped by a signal."""
from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest

from gateway.config.settings import DEV_JWT_SECRET
from services.events.bus import Topology
from services.platform.demo import PASSWORD
from tests.platform.helpers import READY, UpProcess, implemented, platform_env, registry_on_free_ports
from tests.process.helpers import connect_refused, run_kadai
from tests.services.helpers import delete_topology
from tests.support import free_port

pytestmark = pytest.mark.slow

StartUp = Callable[[Path, dict[str, str]], UpProcess]

REDIS_PASSWORD = "r3dis-pw-not-for-logs"
AMQP_PASSWORD = "amqp-pw-not-for-logs"
STRONG_SECRET = "a-production-secret-of-more-than-32-characters"
DEMO_STEPS = 18
LOW_STOCK_STEPS = {
    "lower the lamp's stock (low at or below 5)": "8 -> 3 (PATCH /api/v1/products/{id}/stock), lowStock true",
    "the seller got a low-stock SMS": "left.' (",
    "the lamp's analytics show the stock movements": "2 movements (7 units out, 0 in), stock 3, low",
}
"""The stock-update flow's steps (after the paid and the failed-payment paths) and what each shows."""


def line_of(text: str, label: str) -> str:
    """What follows `label` on the start-up text's line that begins with it (leading spaces ignored)."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(label + " "):
            return stripped[len(label):].strip()
    raise AssertionError(f"no line {label!r} in:\n{text}")


async def health_detailed(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url + "/api/v1/health/detailed") as response:
        assert response.status == 200
        body = await response.json()
    data: dict[str, Any] = body["data"]
    return data


async def assert_docs_merge_every_service(url: str, services: list[str]) -> None:
    """/api/docs/openapi.json holds each running service's own document under its public prefix."""
    async with aiohttp.ClientSession() as session, session.get(url + "/api/docs/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    statuses = {name: document["x-kadai"]["services"].get(name, {}).get("status") for name in services}
    assert statuses == dict.fromkeys(services, "merged"), statuses
    paths = document["paths"]
    # Operations only the services' own documents describe, published under the gateway's prefixes.
    assert "post" in paths["/api/v1/orders"] and "post" in paths["/api/v1/auth/login"]
    assert "get" in paths["/api/v1/ai/forecast/{productId}"]


async def run_demo(process: UpProcess) -> str:
    result = await asyncio.to_thread(run_kadai, ["demo", "--url", process.url], env=process.env, timeout=90)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{process.describe()}"
    assert f"demo OK: {DEMO_STEPS} steps" in result.stdout
    shown = step_results(result.stdout)
    assert list(shown)[-len(LOW_STOCK_STEPS):] == list(LOW_STOCK_STEPS)
    for title, expected in LOW_STOCK_STEPS.items():
        assert expected in shown[title], f"{title}: {shown[title]}"
    sms = shown["the seller got a low-stock SMS"]
    assert sms.startswith("to demo-seller-") and "'Kadai: low stock for product Demo lamp: 3 left.'" in sms
    return result.stdout


def step_results(stdout: str) -> dict[str, str]:
    """Title -> what the step printed after "ok", for each numbered step line of `kadai demo`."""
    results = {}
    for line in stdout.splitlines():
        number, _, rest = line.strip().partition(". ")
        if number.isdigit() and " ok  " in rest:
            title, _, shown = rest.partition(" ok  ")
            results[title.rstrip(". ")] = shown
    return results


def assert_services_reported(text: str, ports: dict[str, int]) -> list[str]:
    """Every registry service is on the start-up text, healthy on its port: all eight exist."""
    started = []
    for name, port in ports.items():
        assert implemented(name), f"{name} declares no SERVICE"
        assert line_of(text, name) == f"http://127.0.0.1:{port}   healthy"
        started.append(name)
    assert len(started) == 8, started
    return started


async def assert_stopped_and_ports_free(process: UpProcess, signum: int, ports: dict[str, int]) -> None:
    code = await process.stop(signum)
    assert code == 0, process.describe()
    for port in (process.port, *ports.values()):
        assert await connect_refused(port), f"port {port} still accepts connections"
    logs = process.logs()
    assert logs[-1]["message"] == "platform stopped"
    # A clean stop: nothing went wrong on the way down (runner.py logs "did not stop cleanly" as an error).
    troubles = [line for line in logs if line.get("level") in ("error", "critical")]
    assert not troubles, troubles


@pytest.mark.parametrize(
    ("urls", "reason", "signum"),
    [
        pytest.param(
            {
                "REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{{dead}}/0",
                "AMQP_URL": f"amqp://kadai:{AMQP_PASSWORD}@127.0.0.1:{{dead}}/",
            },
            "did not answer",
            signal.SIGTERM,
            id="servers-down-sigterm",
        ),
        pytest.param(
            {"REDIS_URL": "memory://", "AMQP_URL": "memory://"}, "=memory://", signal.SIGINT, id="memory-urls-sigint"
        ),
    ],
)
async def test_embedded_platform_serves_the_order_flow_and_stops_cleanly(
    tmp_path: Path, up: StartUp, urls: dict[str, str], reason: str, signum: int
) -> None:
    dead = free_port()  # closed again: nothing listens there
    registry, ports = registry_on_free_ports(tmp_path / "registry.yaml")
    process = up(registry, platform_env(tmp_path, **{name: url.format(dead=dead) for name, url in urls.items()}))

    text = await process.wait_ready()

    assert "embedded backends" in text.splitlines()[0]
    rate_limits, events = line_of(text, "rate limits"), line_of(text, "events")
    assert rate_limits.startswith("in-process (embedded): REDIS_URL") and reason in rate_limits
    assert events.startswith("in-process bus (embedded): AMQP_URL") and reason in events
    assert line_of(text, "response cache") == "off (it needs Redis)"
    assert line_of(text, "gateway").startswith(f"{process.url}   {registry}, 9 routes")
    assert line_of(text, "API docs") == f"{process.url}/api/docs"
    assert line_of(text, "dashboard") == f"{process.url}/dashboard"
    assert "RabbitMQ" not in text
    started = assert_services_reported(text, ports)

    health = await health_detailed(process.url)
    platform, limiter = health["components"]["platform"], health["components"]["rateLimiter"]
    assert (platform["mode"], platform["rateLimiter"], platform["eventBus"]) == ("embedded", "in-process", "in-process")
    assert platform["backends"]["redis"]["url"] == platform["backends"]["amqp"]["url"] == "memory://"
    assert limiter["backend"] == "in-process"
    states = {service["name"]: service["state"] for service in health["services"]}
    assert all(states[name] == "up" for name in started)
    await assert_docs_merge_every_service(process.url, started)

    await run_demo(process)
    assert (await health_detailed(process.url))["components"]["rateLimiter"]["status"] == "ok"

    await assert_stopped_and_ports_free(process, signum, ports)
    logs = process.logs()
    created = [line for line in logs if line.get("path") == "/orders" and line.get("status") == 201]
    # Each part of the one process logs under its own name: the demo's two orders are order-service's lines.
    assert [line["service"] for line in created] == ["order-service", "order-service"]
    assert {"api-gateway", "kadai-platform", "user-service", "payment-service"} <= {line["service"] for line in logs}
    output = process.banner() + process.stdout_path.read_text()
    for secret in (REDIS_PASSWORD, AMQP_PASSWORD, PASSWORD):
        assert secret not in output
    assert (tmp_path / "data" / "order-service.sqlite3").exists()


@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_platform_on_redis_and_rabbitmq_serves_the_order_flow(
    tmp_path: Path, up: StartUp, redis_server: str, rabbitmq_server: str
) -> None:
    registry, ports = registry_on_free_ports(tmp_path / "registry.yaml")
    env = platform_env(tmp_path, REDIS_URL=redis_server, AMQP_URL=rabbitmq_server)
    prefix = env["KADAI_EVENTS_PREFIX"]
    try:
        process = up(registry, env)
        text = await process.wait_ready()

        assert "external backends" in text.splitlines()[0]
        assert "embedded" not in text
        assert line_of(text, "rate limits") == f"Redis at {redis_server} (external, answered at start)"
        assert line_of(text, "events").endswith(f"(external, answered at start), prefix {prefix}")
        assert_services_reported(text, ports)
        platform = (await health_detailed(process.url))["components"]["platform"]
        assert (platform["mode"], platform["rateLimiter"], platform["eventBus"]) == ("external", "redis", "rabbitmq")

        await run_demo(process)

        limiter = (await health_detailed(process.url))["components"]["rateLimiter"]
        assert (limiter["backend"], limiter["status"]) == ("redis", "ok")
        # The events went through the broker: the consuming services' queues are there.
        connection = await aio_pika.connect(rabbitmq_server, timeout=5)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"{prefix}.order-service.events", passive=True)
            assert queue.declaration_result.consumer_count == 1
        await assert_stopped_and_ports_free(process, signal.SIGTERM, ports)
    finally:
        await delete_topology(rabbitmq_server, {Topology(prefix, name) for name in ports})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"JWT_SECRET": STRONG_SECRET, "REDIS_URL": "memory://", "AMQP_URL": "amqp://mq:5672/"},
            "REDIS_URL: memory:// (in-process) is for development, not KADAI_ENV=production",
        ),
        (
            {"JWT_SECRET": STRONG_SECRET, "AMQP_URL": "memory://"},
            "AMQP_URL: memory:// (the in-process bus) is for development, not KADAI_ENV=production",
        ),
        ({"JWT_SECRET": STRONG_SECRET}, "AMQP_URL: required when KADAI_ENV=production"),
        ({"AMQP_URL": "amqp://mq:5672/"}, "JWT_SECRET: required when KADAI_ENV=production"),
        (
            {"JWT_SECRET": DEV_JWT_SECRET, "AMQP_URL": "amqp://mq:5672/"},
            "JWT_SECRET: the development secret is refused when KADAI_ENV=production",
        ),
    ],
    ids=["embedded-redis", "embedded-bus", "no-broker-url", "no-secret", "development-secret"],
)
def test_production_refuses_embedded_backends_and_development_secrets(
    tmp_path: Path, overrides: dict[str, str], message: str
) -> None:
    registry, _ports = registry_on_free_ports(tmp_path / "registry.yaml")
    env = platform_env(tmp_path, KADAI_ENV="production", **overrides)

    result = run_kadai(["up", "--registry", str(registry), "--port", str(free_port())], env=env)

    assert result.returncode == 2
    assert message in result.stderr
    assert READY not in result.stderr


@contextlib.contextmanager
def taken(port: int) -> Iterator[None]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


@pytest.mark.parametrize("taker", ["order-service", "api-gateway"])
async def test_a_port_in_use_stops_the_start_and_frees_every_other_port(tmp_path: Path, taker: str) -> None:
    registry, ports = registry_on_free_ports(tmp_path / "registry.yaml")
    process = UpProcess(registry, platform_env(tmp_path, REDIS_URL="memory://", AMQP_URL="memory://"))
    port = process.port if taker == "api-gateway" else ports[taker]

    with taken(port):
        process.start()
        try:
            code = await process.wait_exit()
        finally:
            process.kill()

    assert code == 1
    assert f"kadai up: cannot start: {taker}: cannot listen on 127.0.0.1:{port}" in process.banner()
    assert READY not in process.banner()
    for other in {process.port, *ports.values()} - {port}:
        assert await connect_refused(other)


def test_an_invalid_registry_stops_the_start_with_its_errors(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text("version: 1\nservices:\n  user-service:\n    instances: [http://127.0.0.1:1]\n    routes: 7\n")

    result = run_kadai(["up", "--registry", str(registry)], env=platform_env(tmp_path, REDIS_URL="memory://"))

    assert result.returncode == 1
    assert str(registry) in result.stderr and "routes" in result.stderr


def test_an_instance_the_process_cannot_serve_is_refused(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        "version: 1\nservices:\n  user-service:\n    instances: [https://127.0.0.1:3443]\n"
        "    routes: [{prefix: /api/v1/users}]\n"
    )

    result = run_kadai(["up", "--registry", str(registry)], env=platform_env(tmp_path, REDIS_URL="memory://"))

    assert result.returncode == 1
    assert "user-service: instance https://127.0.0.1:3443 must be http://HOST:PORT" in result.stderr
