"""Unit tests of gateway.ratelimit.limiter: timeouts, back-off with a single probe, recovery, reports, sharing.

The backend here is the in-process one with a switch that makes it fail or hang; the real Redis failures
are exercised in tests/integration/test_rate_limit.py.
"""
from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.config.loader import parse_registry
from gateway.config.settings import Settings
from gateway.ratelimit import (
    COMPONENT,
    Decision,
    FailurePolicy,
    InProcessBackend,
    Limiter,
    Plan,
    RedisBackend,
    Tier,
    process_limiter,
)
from gateway.resources import Resources
from gateway.routing import build_table
from gateway.telemetry import GatewayMetrics

PLAN = Plan([Tier("t", 1000, 1000)])
POLICY = FailurePolicy(timeout=0.05, backoff=1.0, backoff_max=4.0)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class SwitchableBackend(InProcessBackend):
    """In-process buckets that raise `failure` (or hang while `hang` is set) instead of answering."""

    kind: ClassVar[str] = "switchable"

    def __init__(self) -> None:
        super().__init__()
        self.failure: Exception | None = None
        self.hang = asyncio.Event()
        self.calls = 0
        self.release = asyncio.Event()

    async def acquire(self, plan: Plan, client: str) -> Decision:
        self.calls += 1
        if self.hang.is_set():
            await self.release.wait()
        if self.failure is not None:
            raise self.failure
        return await super().acquire(plan, client)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics()


@pytest.fixture
def backend() -> SwitchableBackend:
    return SwitchableBackend()


@pytest.fixture
def limiter(backend: SwitchableBackend, metrics: GatewayMetrics, clock: Clock) -> Limiter:
    return Limiter(backend, metrics, clock)


def errors(metrics: GatewayMetrics, kind: str) -> float:
    return metrics.ratelimit_backend_errors.labels(kind)._value.get()


async def test_healthy_backend_decides(limiter: Limiter) -> None:
    assert limiter().get("status") == "unchecked"
    decision = await limiter.check(PLAN, "c", POLICY)
    assert decision is not None and decision.allowed
    report = limiter()
    assert (report["status"], report["backend"], report["consecutiveFailures"]) == ("ok", "switchable", 0)


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."), "connection"),
        (ConnectionResetError("reset by peer"), "connection"),
        (ResponseError("OOM command not allowed"), "error"),
        (ValueError("unexpected reply"), "error"),
    ],
    ids=["redis-connection", "os-error", "redis-error", "anything-else"],
)
async def test_failures_answer_none_and_are_counted_by_kind(
    limiter: Limiter, backend: SwitchableBackend, metrics: GatewayMetrics, failure: Exception, kind: str
) -> None:
    backend.failure = failure
    assert await limiter.check(PLAN, "c", POLICY) is None
    assert errors(metrics, kind) == 1
    report = limiter()
    assert report["status"] == "down"
    assert report["consecutiveFailures"] == 1
    assert kind in report["lastError"] and str(failure) in report["lastError"]
    assert report["retryInSeconds"] == 1.0


async def test_a_slow_backend_times_out(limiter: Limiter, backend: SwitchableBackend, metrics: GatewayMetrics) -> None:
    backend.hang.set()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await limiter.check(PLAN, "c", POLICY) is None
    assert loop.time() - started < 1.0
    assert errors(metrics, "timeout") == 1
    assert limiter()["status"] == "down"


async def test_backoff_skips_the_backend_then_one_probe_recovers(
    limiter: Limiter, backend: SwitchableBackend, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.ratelimit")
    backend.failure = RedisConnectionError("gone")
    assert await limiter.check(PLAN, "c", POLICY) is None
    assert backend.calls == 1
    for _ in range(20):  # within the back-off nothing reaches the backend
        assert await limiter.check(PLAN, "c", POLICY) is None
    assert backend.calls == 1

    clock.now += 1.0
    assert await limiter.check(PLAN, "c", POLICY) is None  # a failed probe doubles the back-off
    assert backend.calls == 2
    clock.now += 1.9
    assert await limiter.check(PLAN, "c", POLICY) is None
    assert backend.calls == 2
    clock.now += 0.1
    backend.failure = None
    decision = await limiter.check(PLAN, "c", POLICY)
    assert decision is not None and decision.allowed
    assert limiter()["status"] == "ok" and limiter()["consecutiveFailures"] == 0
    assert await limiter.check(PLAN, "c", POLICY) is not None
    assert backend.calls == 4

    records = [r for r in caplog.records if r.name == "gateway.ratelimit"]
    assert [(r.levelno, r.getMessage().split(":")[0]) for r in records] == [
        (logging.WARNING, "rate limiter backend unavailable"),
        (logging.INFO, "rate limiter backend answers again"),
    ]
    assert records[1].fields["failedCalls"] == 2  # type: ignore[attr-defined]


async def test_backoff_doubles_up_to_its_ceiling(limiter: Limiter, backend: SwitchableBackend, clock: Clock) -> None:
    backend.failure = RedisConnectionError("gone")
    await limiter.check(PLAN, "c", POLICY)
    delays = []
    for _ in range(5):
        clock.now = limiter.retry_at
        await limiter.check(PLAN, "c", POLICY)
        delays.append(limiter.retry_at - clock.now)
    assert delays == [2.0, 4.0, 4.0, 4.0, 4.0]


async def test_only_one_probe_at_a_time(limiter: Limiter, backend: SwitchableBackend, clock: Clock) -> None:
    backend.failure = RedisConnectionError("gone")
    await limiter.check(PLAN, "c", POLICY)
    clock.now += 1.0
    backend.failure = None
    backend.hang.set()
    slow_policy = FailurePolicy(timeout=5.0, backoff=1.0, backoff_max=4.0)
    probe = asyncio.create_task(limiter.check(PLAN, "c", slow_policy))
    while backend.calls < 2:
        await asyncio.sleep(0)
    others = await asyncio.gather(*(limiter.check(PLAN, "c", slow_policy) for _ in range(10)))
    assert others == [None] * 10
    assert backend.calls == 2
    backend.release.set()
    decision = await probe
    assert decision is not None and decision.allowed
    assert limiter()["status"] == "ok"


async def test_calls_in_flight_when_the_backend_fails_do_not_stretch_the_backoff(
    limiter: Limiter, backend: SwitchableBackend, clock: Clock
) -> None:
    backend.hang.set()
    backend.failure = RedisConnectionError("gone")
    calls = [asyncio.create_task(limiter.check(PLAN, "c", FailurePolicy(5.0, 1.0, 4.0))) for _ in range(10)]
    while backend.calls < 10:
        await asyncio.sleep(0)
    backend.release.set()
    assert await asyncio.gather(*calls) == [None] * 10
    assert limiter.retry_at == clock.now + 1.0
    assert limiter()["consecutiveFailures"] == 10


async def test_cancellation_is_not_a_backend_failure(limiter: Limiter, backend: SwitchableBackend) -> None:
    backend.hang.set()
    call = asyncio.create_task(limiter.check(PLAN, "c", FailurePolicy(5.0, 1.0, 4.0)))
    while backend.calls < 1:
        await asyncio.sleep(0)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert limiter()["status"] == "unchecked"


async def test_redis_backend_without_a_client_is_a_connection_failure(metrics: GatewayMetrics) -> None:
    limiter = Limiter(RedisBackend(lambda: None), metrics)
    assert await limiter.check(PLAN, "c", POLICY) is None
    assert errors(metrics, "connection") == 1
    assert limiter()["backend"] == "redis"


def test_every_route_and_every_reload_share_the_process_limiter() -> None:
    resources = Resources(Settings())
    registry = b"""
version: 1
defaults: {rate_limit: true}
services:
  users:
    instances: [http://127.0.0.1:3001]
    routes: [{prefix: /api/v1/users}, {prefix: /api/v1/auth, rate_limit: {payments: {limit: 1, window: 1m}}}]
"""
    config = parse_registry(registry, "reg.yaml")

    async def forward(exchange: object) -> object:
        raise AssertionError("not called")

    first = build_table(config, resources, forward, 1)  # type: ignore[arg-type]
    limiter = resources.components[COMPONENT]
    assert isinstance(limiter, Limiter)
    build_table(config, resources, forward, 2, previous=first)  # type: ignore[arg-type]
    assert resources.components[COMPONENT] is limiter
    assert process_limiter(resources) is limiter
    assert [name for name, report in resources.components.items() if isinstance(report, Limiter)] == [COMPONENT]
