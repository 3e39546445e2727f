"""Rate limiting: multi-tier token buckets, their backends (Redis, in-process) and the process's limiter."""
from __future__ import annotations

from gateway.ratelimit.buckets import Decision, InProcessBackend, LimiterBackend, Plan, Tier
from gateway.ratelimit.limiter import COMPONENT, FailurePolicy, Limiter, close_process_limiter, process_limiter
from gateway.ratelimit.redis_backend import RedisBackend
from gateway.ratelimit.redis_batch import BatchedRedisBackend

__all__ = [
    "BatchedRedisBackend",
    "COMPONENT",
    "Decision",
    "FailurePolicy",
    "InProcessBackend",
    "Limiter",
    "LimiterBackend",
    "Plan",
    "RedisBackend",
    "close_process_limiter",
    "Tier",
    "process_limiter",
]
