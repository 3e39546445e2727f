"""Multi-tier token buckets: the plan of a route's tiers, the decision, and the backend interface.

Each tier is a bucket of `limit` tokens refilled at `limit` per `window`; a request takes one token from
every tier of its route, or from none when any tier is empty. InProcessBackend is the reference
implementation of that formula in Python; token_bucket.lua is the same formula inside Redis.
"""
from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

KEY_PREFIX = "kadai:ratelimit"


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    limit: int
    """Bucket size: requests allowed in a burst, and refilled per window."""
    window_ms: int

    @property
    def scope(self) -> str:
        """The bucket's identity in keys: a changed limit or window starts new buckets instead of
        misreading the old ones, and routes with the same tier share its buckets."""
        return f"{self.name}.{self.limit}per{self.window_ms}ms"


class Decision(NamedTuple):
    allowed: bool
    tier: int
    """Index into Plan.tiers: the tier with the fewest tokens left (allowed), or the one that refused."""
    remaining: int
    """Whole tokens left in that tier after this request; 0 when refused."""
    reset_ms: int
    """Time until that tier's bucket is full again."""
    retry_after_ms: int
    """Time until the refusing tier has a token again; 0 when allowed."""


class Plan:
    """A route's tiers with everything a backend needs precomputed: key parts and script arguments."""

    __slots__ = ("tiers", "key_heads", "script_args")

    def __init__(self, tiers: Iterable[Tier]) -> None:
        self.tiers = tuple(tiers)
        if not self.tiers:
            raise ValueError("a rate-limit plan needs at least one tier")
        # The client part goes inside {...}: a Redis Cluster then keeps all of a client's buckets in one
        # slot, which a multi-key script requires.
        self.key_heads = tuple(f"{KEY_PREFIX}:{tier.scope}:{{" for tier in self.tiers)
        self.script_args = tuple(value for tier in self.tiers for value in (tier.limit, tier.window_ms * 1000))

    def keys(self, client: str) -> list[str]:
        """The bucket keys of one client, in tier order."""
        return [head + client + "}" for head in self.key_heads]


class LimiterBackend(ABC):
    """Where the buckets live. acquire() raises on any backend failure; the Limiter decides what then."""

    kind: ClassVar[str]

    @abstractmethod
    async def acquire(self, plan: Plan, client: str) -> Decision:
        """Take one token from every tier of plan for client, or none if any tier is empty."""


def ceil_ms(microseconds: float) -> int:
    return math.ceil(microseconds / 1000)


def take(levels: list[float], plan: Plan) -> Decision:
    """The decision for buckets already refilled to `levels` (tokens per tier, in plan order).

    On success the levels are lowered by one token each, in place. Mirrors the second half of
    token_bucket.lua; the tie-breaks (longest wait, then fewest tokens and longest reset) are the same.
    """
    tiers = plan.tiers
    refused, longest = -1, -1.0
    for index, tokens in enumerate(levels):
        if tokens < 1:
            tier = tiers[index]
            wait = (1 - tokens) * tier.window_ms * 1000 / tier.limit
            if wait > longest:
                refused, longest = index, wait
    if refused >= 0:
        tier = tiers[refused]
        full = (tier.limit - levels[refused]) * tier.window_ms * 1000 / tier.limit
        return Decision(False, refused, 0, ceil_ms(full), ceil_ms(longest))
    tightest, fewest, tightest_full = 0, -1, 0
    for index, tier in enumerate(tiers):
        left = levels[index] - 1
        levels[index] = left
        full_ms = ceil_ms((tier.limit - left) * tier.window_ms * 1000 / tier.limit)
        whole = math.floor(left)
        if fewest < 0 or whole < fewest or (whole == fewest and full_ms > tightest_full):
            tightest, fewest, tightest_full = index, whole, full_ms
    return Decision(True, tightest, fewest, tightest_full, 0)


def refill(tokens: float, updated_us: float, now_us: float, tier: Tier) -> float:
    """Tokens in a bucket at now_us that held `tokens` at updated_us (never above the limit)."""
    elapsed = now_us - updated_us
    if elapsed > 0:
        tokens += elapsed * tier.limit / (tier.window_ms * 1000)
    return min(tokens, tier.limit)


class InProcessBackend(LimiterBackend):
    """Buckets in this process's memory: the same algorithm for one process with no Redis (development).

    Several processes each keep their own buckets, so they do not enforce one global limit.
    """

    kind: ClassVar[str] = "in-process"
    SWEEP_EVERY = 4096
    """Writes between two sweeps of full (idle) buckets, which keeps memory bounded by active clients."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.buckets: dict[str, tuple[float, float, float]] = {}
        """key -> (tokens, updated at, full again at), times in microseconds of the clock."""
        self._writes = 0

    async def acquire(self, plan: Plan, client: str) -> Decision:
        now = self.clock() * 1_000_000
        keys = plan.keys(client)
        buckets = self.buckets
        levels = []
        for key, tier in zip(keys, plan.tiers):
            stored = buckets.get(key)
            levels.append(tier.limit if stored is None or stored[2] <= now else refill(stored[0], stored[1], now, tier))
        decision = take(levels, plan)
        if decision.allowed:
            for key, tier, left in zip(keys, plan.tiers, levels):
                full_at = now + (tier.limit - left) * tier.window_ms * 1000 / tier.limit
                buckets[key] = (left, now, full_at)
            self._writes += 1
            if self._writes % self.SWEEP_EVERY == 0:
                self.sweep(now)
        return decision

    def sweep(self, now_us: float) -> None:
        """Forget buckets that are full again (the same as no bucket)."""
        for key in [key for key, (_, _, full_at) in self.buckets.items() if full_at <= now_us]:
            del self.buckets[key]
