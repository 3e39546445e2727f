"""The process's limiter: a backend behind a per-call timeout, a back-off after failures, and a health report.

When the backend fails, check() answers None and each route applies its own fail_open policy. After a
failure the backend is left alone for a back-off that doubles while it keeps failing; once it is over a
single request probes it while the others keep skipping it, so a Redis coming back sees no reconnect storm.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.envelope import utc_timestamp
from gateway.logs import log_fields
from gateway.ratelimit.buckets import Decision, InProcessBackend, LimiterBackend, Plan
from gateway.ratelimit.redis_backend import RedisBackend
from gateway.ratelimit.redis_batch import BatchedRedisBackend
from gateway.resources import Resources
from gateway.telemetry import GatewayMetrics

log = logging.getLogger("gateway.ratelimit")

COMPONENT = "rateLimiter"
"""Name of the limiter in resources.components, and so in /api/v1/health/detailed."""
ERROR_KINDS = ("timeout", "connection", "error")


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """How long one backend call may take, and how long to leave a failing backend alone."""

    timeout: float
    backoff: float
    backoff_max: float


class Limiter:
    """Wraps a backend for every route of the process; survives registry reloads (it lives on Resources)."""

    def __init__(
        self,
        backend: LimiterBackend,
        metrics: GatewayMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self._deadline_aware = getattr(backend, "deadline_aware", False)
        """The backend enforces the call's timeout itself, more cheaply than an asyncio.timeout per call."""
        self.clock = clock
        self._errors = {kind: metrics.ratelimit_backend_errors.labels(kind) for kind in ERROR_KINDS}
        self.status = "unchecked"
        """unchecked (no call yet), ok, or down."""
        self.down = False
        self.since = time.time()
        """Wall-clock time of the last status change."""
        self.down_at = 0.0
        self.failures = 0
        """Failed calls since the backend last answered."""
        self.last_error: str | None = None
        self.delay = 0.0
        self.retry_at = 0.0
        self.probing = False

    async def check(self, plan: Plan, client: str, policy: FailurePolicy) -> Decision | None:
        """The backend's decision, or None when it failed or is being left alone after failures."""
        if not self.down:
            return await self._call(plan, client, policy, probe=False)
        if self.probing or self.clock() < self.retry_at:
            return None
        self.probing = True
        try:
            return await self._call(plan, client, policy, probe=True)
        finally:
            self.probing = False

    async def _call(self, plan: Plan, client: str, policy: FailurePolicy, probe: bool) -> Decision | None:
        try:
            if self._deadline_aware:
                decision = await self.backend.acquire(plan, client, policy.timeout)  # type: ignore[call-arg]
            else:
                async with asyncio.timeout(policy.timeout):
                    decision = await self.backend.acquire(plan, client)
        except (TimeoutError, RedisTimeoutError) as exc:
            self._failed("timeout", exc, policy, probe)
            return None
        except (RedisConnectionError, OSError) as exc:
            self._failed("connection", exc, policy, probe)
            return None
        except Exception as exc:  # any other backend problem must not become a 500
            self._failed("error", exc, policy, probe)
            return None
        if self.status != "ok":
            self._recovered()
        return decision

    def _failed(self, kind: str, exc: BaseException, policy: FailurePolicy, probe: bool) -> None:
        self._errors[kind].inc()
        self.failures += 1
        self.last_error = f"{kind}: {exc.__class__.__name__}: {exc}" if str(exc) else f"{kind}: {exc.__class__.__name__}"
        if not self.down:
            self.down = True
            self.status = "down"
            self.since = time.time()
            self.down_at = self.clock()
            self.delay = policy.backoff
            self.retry_at = self.down_at + self.delay
            log.warning(
                "rate limiter backend unavailable: each route lets requests through or refuses them "
                "(its fail_open) until it answers again",
                exc_info=kind == "error",
                extra=log_fields(backend=self.backend.kind, kind=kind, error=self.last_error, retryIn=self.delay),
            )
        elif probe:
            # Only the probe grows the back-off: calls already in flight when the backend went away
            # fail together and must not push the next probe out to backoff_max at once.
            self.delay = min(self.delay * 2, policy.backoff_max)
            self.retry_at = self.clock() + self.delay

    def _recovered(self) -> None:
        if self.down:
            log.info(
                "rate limiter backend answers again",
                extra=log_fields(
                    backend=self.backend.kind,
                    downSeconds=round(self.clock() - self.down_at, 3),
                    failedCalls=self.failures,
                ),
            )
        self.down = False
        self.status = "ok"
        self.since = time.time()
        self.failures = 0
        self.delay = 0.0

    def __call__(self) -> dict[str, Any]:
        """The limiter's state for /api/v1/health/detailed."""
        report: dict[str, Any] = {
            "backend": self.backend.kind,
            "status": self.status,
            "since": utc_timestamp(self.since),
            "consecutiveFailures": self.failures,
            "lastError": self.last_error,
        }
        if self.down:
            report["retryInSeconds"] = round(max(0.0, self.retry_at - self.clock()), 3)
        return report


def process_limiter(resources: Resources) -> Limiter:
    """The limiter of this process, made on first use and kept in resources.components (as its own
    health report), so every route and every registry revision shares its buckets' backend and state."""
    current = resources.components.get(COMPONENT)
    if isinstance(current, Limiter):
        return current
    backend: LimiterBackend
    url = resources.settings.redis_url
    if resources.settings.embedded_redis:
        backend = InProcessBackend()  # REDIS_URL=memory://: one process enforces its own limits
    elif url.startswith(("redis://", "unix://")) and not resources.settings.redis_cluster:
        # Its own pipelined connection: one write per event-loop tick instead of redis-py per request.
        backend = BatchedRedisBackend(url)
    else:
        # rediss:// (TLS) and Redis Cluster go through redis-py, which routes each decision to the node
        # owning its client's slot (the keys of one decision share a {hash tag}).
        backend = RedisBackend(lambda: resources.redis)
    limiter = Limiter(backend, resources.metrics)
    resources.components[COMPONENT] = limiter
    return limiter


async def close_process_limiter(resources: Resources) -> None:
    """Close the connection a limiter backend holds of its own (at application shutdown)."""
    limiter = resources.components.get(COMPONENT)
    if isinstance(limiter, Limiter) and isinstance(limiter.backend, BatchedRedisBackend):
        await limiter.backend.close()
