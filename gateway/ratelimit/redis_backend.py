"""Buckets in Redis: every tier of a request checked and consumed by one EVALSHA of token_bucket.lua."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from importlib.resources import files
from typing import TYPE_CHECKING, ClassVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from gateway.ratelimit.buckets import Decision, LimiterBackend, Plan

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

SCRIPT = files("gateway.ratelimit").joinpath("token_bucket.lua").read_bytes()
SCRIPT_SHA = hashlib.sha1(SCRIPT, usedforsecurity=False).hexdigest()


class RedisBackend(LimiterBackend):
    """Shared buckets: every gateway process on the same Redis enforces one limit, on Redis's clock.

    The client is looked up on every call (`client()`), so the backend outlives registry reloads and works
    with whatever client the process has open; no client counts as a connection failure.
    """

    kind: ClassVar[str] = "redis"

    def __init__(self, client: Callable[[], Redis | RedisCluster | None]) -> None:
        self.client = client
        self.script_loads = 0
        """Times the script was (re)loaded into Redis: once at first use, again after a NOSCRIPT."""

    async def acquire(self, plan: Plan, client: str) -> Decision:
        redis = self.client()
        if redis is None:
            raise RedisConnectionError("no Redis client is open")
        keys = plan.keys(client)
        try:
            reply = await redis.evalsha(SCRIPT_SHA, len(keys), *keys, *plan.script_args)  # type: ignore[misc]
        except NoScriptError:
            # The script cache is empty (first use, restart, SCRIPT FLUSH, failover). NOSCRIPT means the
            # script did not run, so running it again cannot consume twice.
            await self.load(redis)
            reply = await redis.evalsha(SCRIPT_SHA, len(keys), *keys, *plan.script_args)  # type: ignore[misc]
        allowed, tier, amount, reset_ms = reply
        if allowed:
            return Decision(True, tier - 1, amount, reset_ms, 0)
        return Decision(False, tier - 1, 0, reset_ms, amount)

    async def load(self, redis: Redis | RedisCluster) -> None:
        sha = await redis.script_load(SCRIPT)  # type: ignore[misc]
        self.script_loads += 1
        if isinstance(sha, bytes):
            sha = sha.decode()
        if sha != SCRIPT_SHA:
            raise RuntimeError(f"Redis hashed the rate-limit script as {sha}, expected {SCRIPT_SHA}")
