"""Rate limiting: multi-tier token buckets, their backends (Redis, in-process) and the process's limiter."""
from __future__ import annotations

from gateway.ratelimit.buckets import Decision, InProcessBackend, LimiterBackend, Plan, Tier
from gateway.ratelimit.limiter import COMPONENT, FailurePolicy, Limiter, process_limiter
from gateway.ratelimit.redis_backend import RedisBackend

__all__ = [
    "COMPONENT",
    "Decision",
    "FailurePolicy",
    "InProcessBackend",
    "Limiter",
    "LimiterBackend",
    "Plan",
    "RedisBackend",
    "Tier",
    "process_limiter",
]
