"""Circuit breakers: one per instance; an instance that keeps failing is skipped until it has rested.

pybreaker's synchronous state machine keeps the state (closed, open, half-open) and the counts; this
module chooses the instance, awaits the upstream call outside the breaker, and reports the outcome
afterwards with a synchronous `call`. That keeps three things out of the counts: a client that hung up
(cancellation), errors that are the client's (413, 499), and answers to requests sent before the breaker
last changed state (a slow success must not close an open breaker that no trial has tested). A half-open
breaker lets exactly one trial request through at a time.

Breakers live on the Instance objects, which survive registry reloads; the settings of the service's
routes apply to them (write `breaker:` at the service level: routes of one service share instances).
State is per gateway process (pybreaker's Redis storage is blocking, so it is not used on the event loop).
"""
from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import pybreaker
from pydantic import Field

from gateway.errors import BadGateway, GatewayTimeout, ServiceUnavailable
from gateway.exchange import Exchange, Reply
from gateway.middleware.base import BuildContext, Handler, Middleware, MiddlewareConfig
from gateway.routing import Instance
from gateway.telemetry import GatewayMetrics, multiprocess_mode
from gateway.units import Duration

NAME = "breaker"
PRIORITY = 2_000

log = logging.getLogger("gateway.breaker")

_STATE_VALUES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}


class BreakerConfig(MiddlewareConfig):
    fail_max: int = Field(5, ge=1, le=1000, description="Consecutive failures of an instance that open its breaker.")
    reset_timeout: Duration = Field(
        30.0, gt=0, description="How long an open breaker fails fast before letting one trial request through."
    )
    success_threshold: int = Field(
        1, ge=1, le=100, description="Successful trial requests in a row that close a half-open breaker."
    )
    failure_statuses: tuple[int, ...] = Field(
        (500, 502, 503, 504),
        description="Upstream statuses that count as failures (connection errors and timeouts always do).",
    )


class _InstanceFailure(Exception):
    """The outcome reported to pybreaker for a failed call."""


def _fail() -> None:
    raise _InstanceFailure


def _succeed() -> None:
    return None


class InstanceBreaker(pybreaker.CircuitBreakerListener):
    """The breaker of one instance, with the single-trial rule of the half-open state."""

    def __init__(self, service: str, url: str, config: BreakerConfig, metrics: GatewayMetrics) -> None:
        self.service = service
        self.url = url
        self.metrics = metrics
        self.config = config
        self.trial_in_flight = False
        self.retired = False
        """Set once the instance left the registry; requests still finishing on it leave the metrics alone."""
        self.generation = 0
        """Bumped on every state change: an outcome is counted only under the state its request started in."""
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=config.fail_max,
            reset_timeout=config.reset_timeout,
            success_threshold=config.success_threshold,
            listeners=[self],
            name=url,
            throw_new_error_on_trip=False,
        )
        self.state_gauge = metrics.breaker_state.labels(service, url)
        self.state_gauge.set(0)

    def configure(self, config: BreakerConfig) -> None:
        """Apply the settings of a reloaded registry without losing the state."""
        self.config = config
        self.breaker.fail_max = config.fail_max
        self.breaker.reset_timeout = config.reset_timeout
        self.breaker.success_threshold = config.success_threshold

    def retire(self) -> None:
        """The instance left the registry: drop its state series, or the breaker alert would fire for good."""
        self.retired = True
        if multiprocess_mode():
            self.state_gauge.set(0)  # prometheus-client cannot remove a series in multiprocess mode
        else:
            self.metrics.breaker_state.remove(self.service, self.url)

    @property
    def state(self) -> str:
        return self.breaker.current_state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a trial through (0 when it would now)."""
        opened_at = self.breaker._state_storage.opened_at
        if self.state != pybreaker.STATE_OPEN or opened_at is None:
            return 0.0
        due = opened_at + timedelta(seconds=self.breaker.reset_timeout)
        return max(0.0, (due - datetime.now(UTC)).total_seconds())

    def admits(self) -> bool:
        """Whether a request may go to this instance now; no side effects (the balancer asks freely)."""
        state = self.state
        if state == pybreaker.STATE_CLOSED:
            return True
        if self.trial_in_flight:
            return False
        return state == pybreaker.STATE_HALF_OPEN or self.retry_in() == 0.0

    def enter(self) -> bool:
        """Called for the chosen instance; True when this request is the half-open trial."""
        if self.state == pybreaker.STATE_CLOSED:
            return False
        if self.state == pybreaker.STATE_OPEN:
            self.breaker.half_open()
        self.trial_in_flight = True
        return True

    def record(self, failed: bool, generation: int) -> None:
        """Report the outcome of a request that started at `generation` (read right after enter())."""
        if generation != self.generation:
            # Sent before the breaker opened (or before a trial decided it): pybreaker would take a late
            # success after reset_timeout as a passed trial, and a late failure would reopen it.
            return
        breaker = self.breaker
        if not failed and breaker.fail_counter == 0 and breaker.current_state == pybreaker.STATE_CLOSED:
            # The common case, in which pybreaker would only take its lock to reset a counter already at 0.
            return
        try:
            self.breaker.call(_fail if failed else _succeed)
        except (_InstanceFailure, pybreaker.CircuitBreakerError):
            # A failure, or an answer that arrived after another request opened the breaker.
            pass

    def describe(self) -> dict[str, object]:
        described: dict[str, object] = {"state": self.state, "failures": self.breaker.fail_counter}
        if self.state == pybreaker.STATE_OPEN:
            described["retryInSeconds"] = round(self.retry_in(), 3)
        return described

    # pybreaker listener
    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self.generation += 1
        if self.retired:
            return
        self.state_gauge.set(_STATE_VALUES.get(new_state.name, 0))
        self.metrics.breaker_transitions.labels(self.service, self.url, new_state.name).inc()
        level = logging.WARNING if new_state.name == pybreaker.STATE_OPEN else logging.INFO
        log.log(
            level,
            "breaker of %s %s: %s -> %s",
            self.service,
            self.url,
            old_state.name if old_state else "none",
            new_state.name,
            extra={"fields": {"service": self.service, "instance": self.url, "breaker": new_state.name}},
        )


class BreakerMiddleware(Middleware):
    NAME: ClassVar[str] = NAME
    PRIORITY: ClassVar[int] = PRIORITY
    Config: ClassVar[type[MiddlewareConfig]] = BreakerConfig
    ENABLED_BY_DEFAULT: ClassVar[bool] = True

    def __init__(self, config: BreakerConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        self.failure_statuses = frozenset(config.failure_statuses)
        self.metrics = context.resources.metrics
        self.rejections = self.metrics.breaker_rejections.labels(context.service)

    def _guard(self, instance: Instance) -> InstanceBreaker:
        breaker = instance.breaker
        if breaker is None:
            breaker = instance.breaker = InstanceBreaker(
                self.context.service, instance.url, self.config, self.metrics  # type: ignore[arg-type]
            )
        elif breaker.config is not self.config:
            breaker.configure(self.config)  # type: ignore[arg-type]
        return breaker

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Reply:
        assert exchange.route is not None
        service = exchange.route.service
        instance = service.pick(_admits, exchange.tried)
        if instance is None:
            raise self._unavailable(service.name, service.instances)
        breaker = self._guard(instance)
        trial = breaker.enter()
        generation = breaker.generation
        exchange.pinned = instance
        failed = None
        try:
            reply = await call_next(exchange)
            failed = reply.upstream is not None and reply.status in self.failure_statuses
            return reply
        except (BadGateway, GatewayTimeout):
            # Only the instance's own faults count; a body over the limit is the client's doing.
            if exchange.upstream_fault not in (None, "body_too_large"):
                failed = True
            raise
        finally:
            if trial:
                breaker.trial_in_flight = False
            if failed is not None:
                breaker.record(failed, generation)

    def _unavailable(self, service: str, instances: tuple[Instance, ...]) -> ServiceUnavailable:
        routable = [instance for instance in instances if instance.routable]
        if not routable:
            return ServiceUnavailable(f"No healthy instance of {service}", details={"service": service})
        self.rejections.inc()
        wait = min(self._guard(instance).retry_in() for instance in routable)
        return ServiceUnavailable(
            f"{service} is failing; requests are refused until it recovers",
            details={"service": service, "reason": "circuit_open"},
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


def _admits(instance: Instance) -> bool:
    breaker = instance.breaker
    return breaker is None or breaker.admits()
