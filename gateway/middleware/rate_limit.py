"""Rate limits: multi-tier token buckets per client (the token's subject, else the client address), in Redis.

Tiers are the keys of the settings mapping other than the settings themselves, so the registry's
key-by-key cascade adds, replaces (a tier is written whole) or removes (`false`) one tier at a time:

    defaults: {rate_limit: {second: {limit: 10, window: 1s}, minute: {limit: 1000, window: 1m}}}
    route:    {rate_limit: {payments: {limit: 10, window: 1m}}}     # adds a tier, keeps the others
"""
from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from gateway.errors import ServiceUnavailable, TooManyRequests
from gateway.exchange import Exchange, Reply
from gateway.middleware.base import BuildContext, Handler, Middleware, MiddlewareConfig
from gateway.ratelimit import FailurePolicy, Plan, Tier, process_limiter
from gateway.units import Duration

NAME = "rate_limit"
PRIORITY = 7_000
"""Inside jwt (8000): the token's subject is known when the bucket is chosen."""

TIER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_WINDOW = 86_400.0

LIMIT_HEADER = "RateLimit-Limit"
REMAINING_HEADER = "RateLimit-Remaining"
RESET_HEADER = "RateLimit-Reset"


class TierConfig(BaseModel):
    """One bucket: `limit` requests in a burst, refilled at `limit` per `window`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: int = Field(gt=0, le=1_000_000_000, description="Requests allowed per window (also the burst size).")
    window: Duration = Field(
        ge=0.001, le=MAX_WINDOW, description="Time in which the bucket refills completely: 1s, 10s, 1m, 1h (ms precision)."
    )


def _tier_or_removed(value: Any) -> Any:
    if value is False or value is None:
        return None
    if not isinstance(value, dict | TierConfig):
        settings = ", ".join(RateLimitConfig.model_fields)
        raise ValueError(
            f"not a setting ({settings}) nor a tier: a tier is a mapping {{limit, window}}, or false to remove it"
        )
    return value


TierSetting = Annotated[TierConfig | None, BeforeValidator(_tier_or_removed)]

SPEC_TIERS: dict[str, TierConfig] = {
    "second": TierConfig(limit=10, window=1.0),
    "ten_seconds": TierConfig(limit=100, window=10.0),
    "minute": TierConfig(limit=1000, window=60.0),
}
"""The platform spec's tiers, which every rate-limited route has unless the registry removes them."""


class RateLimitConfig(MiddlewareConfig):
    """The settings below, and the tiers: every other key names a tier (lowercase letters, digits and _)
    whose value is {limit, window}, or false (or null) to remove a tier inherited from the code's
    defaults (second 10/1s, ten_seconds 100/10s, minute 1000/1m) or from the registry."""

    model_config = ConfigDict(frozen=True, extra="allow")
    __pydantic_extra__: dict[str, TierSetting] = Field(init=False)

    timeout: Duration = Field(
        0.02,
        gt=0,
        le=5.0,
        description="Longest wait for the limiter's Redis call, opening a connection included (event-loop delays "
        "count too); past it the call counts as failed.",
    )
    fail_open: bool = Field(
        True, description="When Redis fails or is slow: let the request through (true) or answer 503 (false)."
    )
    backoff: Duration = Field(
        0.5, gt=0, le=60.0, description="After Redis fails, how long requests skip it before one probes it again."
    )
    backoff_max: Duration = Field(
        5.0, gt=0, le=300.0, description="Ceiling of the back-off, which doubles with every failed probe."
    )

    @model_validator(mode="after")
    def _check_tiers(self) -> Self:
        for name in self.__pydantic_extra__:
            if not TIER_NAME.match(name):
                raise ValueError(f"tier name {name!r}: use lowercase letters, digits and _, starting with a letter")
        if not self.tiers():
            raise ValueError("every tier is removed: switch rate limiting off with `rate_limit: false` instead")
        if self.backoff_max < self.backoff:
            raise ValueError("backoff_max must not be below backoff")
        return self

    def tiers(self) -> list[Tier]:
        """The tiers in effect, shortest window first: the spec's, overridden, added to or removed by name."""
        merged: dict[str, TierConfig | None] = {**SPEC_TIERS, **self.__pydantic_extra__}
        tiers = [
            Tier(name, tier.limit, max(1, round(tier.window * 1000)))
            for name, tier in merged.items()
            if tier is not None
        ]
        return sorted(tiers, key=lambda tier: (tier.window_ms, tier.limit, tier.name))


def _seconds(milliseconds: int) -> str:
    """Whole seconds, rounded up, for Retry-After and RateLimit-Reset."""
    return str(-(-milliseconds // 1000))


def _window_text(window_ms: int) -> str:
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if window_ms % size == 0:
            return f"{window_ms // size}{unit}"
    return f"{window_ms}ms"


class RateLimitMiddleware(Middleware):
    NAME: ClassVar[str] = NAME
    PRIORITY: ClassVar[int] = PRIORITY
    Config: ClassVar[type[MiddlewareConfig]] = RateLimitConfig

    def __init__(self, config: RateLimitConfig, context: BuildContext) -> None:  # type: ignore[override]
        super().__init__(config, context)
        self.limiter = process_limiter(context.resources)
        self.plan = Plan(config.tiers())
        self.policy = FailurePolicy(config.timeout, config.backoff, config.backoff_max)
        self.fail_open = config.fail_open
        tiers = self.plan.tiers
        self.limit_texts = tuple(str(tier.limit) for tier in tiers)
        self.messages = tuple(
            f"Rate limit exceeded ({tier.name}: {tier.limit} per {_window_text(tier.window_ms)})"
            for tier in tiers
        )
        decisions = context.resources.metrics.ratelimit_decisions
        service = context.service
        self.allowed = decisions.labels(service, "allowed", "-")
        self.tally = context.resources.metrics.tally
        self.rejected = tuple(decisions.labels(service, "rejected", tier.name) for tier in tiers)
        self.failed_open = decisions.labels(service, "failed_open", "-")
        self.failed_closed = decisions.labels(service, "failed_closed", "-")

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Reply:
        user = exchange.user
        # The client address was resolved with the trusted-proxy rules: a client's own X-Forwarded-For
        # cannot move it to another bucket.
        client = "sub:" + user.sub if user is not None else "ip:" + exchange.client_ip
        decision = await self.limiter.check(self.plan, client, self.policy)
        if decision is None:
            if self.fail_open:
                self.failed_open.inc()
                return await call_next(exchange)
            self.failed_closed.inc()
            raise ServiceUnavailable(
                "Rate limiting is unavailable; try again shortly",
                details={"reason": "rateLimiterUnavailable"},
                headers={"Retry-After": "1"},
            )
        index = decision.tier
        if decision.allowed:
            self.tally.add(self.allowed)
            overrides = exchange.response_header_overrides
            overrides[LIMIT_HEADER] = self.limit_texts[index]
            overrides[REMAINING_HEADER] = str(decision.remaining)
            overrides[RESET_HEADER] = _seconds(decision.reset_ms)
            return await call_next(exchange)
        self.rejected[index].inc()
        tier = self.plan.tiers[index]
        retry_after = max(1, -(-decision.retry_after_ms // 1000))
        raise TooManyRequests(
            self.messages[index],
            details={
                "tier": tier.name,
                "limit": tier.limit,
                "windowSeconds": tier.window_ms / 1000,
                "retryAfterSeconds": retry_after,
            },
            headers={
                "Retry-After": str(retry_after),
                LIMIT_HEADER: self.limit_texts[index],
                REMAINING_HEADER: "0",
                RESET_HEADER: _seconds(decision.reset_ms),
            },
        )
