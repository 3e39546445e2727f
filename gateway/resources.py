"""Process-wide resources shared by the dispatcher, the middleware and the admin endpoints."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from gateway.config.settings import Settings
from gateway.telemetry import GatewayMetrics

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from gateway.auth.verifier import TokenVerifier
    from gateway.upstream import UpstreamPool
    from gateway.reload import ReloadStatus

ComponentReport = Callable[[], dict[str, Any]]
"""Returns a component's state for /api/v1/health/detailed; must be cheap and never raise."""


@dataclass(slots=True)
class Resources:
    settings: Settings
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    started_at: float = field(default_factory=time.time)
    session: aiohttp.ClientSession | None = None
    """The process's aiohttp client: https:// instances, health polls, service specs; open while the app runs."""
    pool: UpstreamPool | None = None
    """The process's own keep-alive pool to http:// instances (the proxy's hot path); open while the app runs."""
    draining: bool = False
    """Set once shutdown starts: health answers 503 so load balancers stop sending traffic."""
    reload_status: ReloadStatus | None = None
    redis: Redis | RedisCluster | None = None
    """The process's Redis client (rate limits, response cache); open while the app runs."""
    verifier: TokenVerifier | None = None
    """The process's JWT verifier (its cache of verified tokens outlives registry reloads); set while the app runs."""
    retry_budgets: dict[str, Any] = field(default_factory=dict)
    """The retry budget of each service (gateway.middleware.retry.RetryBudget), kept across reloads."""
    components: dict[str, ComponentReport] = field(default_factory=dict)
    """Extra parts of the gateway (limiter backend, JWT keys, ...) reporting under "components" in
    /api/v1/health/detailed, by name."""
