"""Retries with exponential backoff and jitter, only where repeating a request is safe.

Retried: GET, HEAD, OPTIONS, PUT, DELETE (idempotent by RFC 9110) and any request carrying an
Idempotency-Key; on a connection failure, a timeout, or a 502/503/504 from the instance. Any other
request (a POST, a PATCH) is retried only when none of it reached the instance: the connection could not
be opened (refused, unreachable, connect timeout), Envoy's `connect-failure`. A request whose body must be
replayed is read into memory first, up to `buffer_limit`; a bigger or chunked body is streamed and gets
one attempt. A fail-fast 503 (open breaker, no healthy instance) is never retried.

Two brakes keep retries from turning an outage into a storm: an overall deadline per request (no new
attempt starts after it, counted from the request's arrival, and a retry still running there is cut
off with a 504; the first attempt keeps the route's own timeouts), and a retry budget per service (retries
at most `budget.ratio` of the service's recent requests, plus a small floor), the policy of Envoy and
Finagle.
"""
from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import aiohttp
from aiohttp import web
from pydantic import Field
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from gateway.errors import BadGateway, ClientClosedRequest, GatewayTimeout
from gateway.exchange import Exchange, Reply
from gateway.middleware.base import BuildContext, Handler, Middleware, MiddlewareConfig
from gateway.units import ByteSize, Duration

NAME = "retry"
PRIORITY = 3_000

_RETRYABLE_FAULTS = frozenset({"connect", "timeout"})


class RetryBudgetConfig(MiddlewareConfig):
    ratio: float = Field(
        0.2, ge=0, le=10, description="Retries allowed per request of the service in the window (0.2 = 20 %)."
    )
    min_retries: int = Field(
        10, ge=0, description="Retries always allowed per window, so a quiet service can still retry."
    )
    window: Duration = Field(10.0, ge=1, le=600, description="Length of the sliding window the budget counts over.")


class RetryConfig(MiddlewareConfig):
    retries: int = Field(3, ge=0, le=10, description="Attempts after the first one, at most.")
    methods: tuple[str, ...] = Field(
        ("GET", "HEAD", "OPTIONS", "PUT", "DELETE"),
        description="Methods retried; any other method only with an Idempotency-Key header.",
    )
    statuses: tuple[int, ...] = Field((502, 503, 504), description="Upstream statuses retried.")
    backoff: Duration = Field(0.1, gt=0, description="Wait before the first retry; it doubles for each next one.")
    max_backoff: Duration = Field(
        2.0, gt=0, description="Longest backoff between two attempts (the jitter comes on top)."
    )
    jitter: Duration = Field(0.1, ge=0, description="Random extra wait (0 to this) added to each backoff.")
    deadline: Duration = Field(
        15.0, gt=0, description="Retries start and end within this time after the request arrived."
    )
    buffer_limit: ByteSize = Field(
        1_048_576, ge=0, description="Largest request body kept in memory to be replayed by a retry."
    )
    budget: RetryBudgetConfig = Field(default_factory=RetryBudgetConfig, description="The service's retry budget.")


class RetryBudget:
    """Requests and retries of one service over a sliding window of one-second slots."""

    __slots__ = ("ratio", "min_retries", "slots", "requests", "retries", "stamps")

    def __init__(self, config: RetryBudgetConfig) -> None:
        self.slots = self.slots_for(config)
        self.requests = [0] * self.slots
        self.retries = [0] * self.slots
        self.stamps = [0] * self.slots
        self.configure(config)

    @staticmethod
    def slots_for(config: RetryBudgetConfig) -> int:
        return max(1, round(config.window))

    def configure(self, config: RetryBudgetConfig) -> None:
        """Apply a reloaded ratio and floor, keeping the counts (a new window needs a new budget)."""
        self.ratio = config.ratio
        self.min_retries = config.min_retries

    def _slot(self, now: float) -> int:
        second = int(now)
        index = second % self.slots
        if self.stamps[index] != second:
            self.stamps[index] = second
            self.requests[index] = 0
            self.retries[index] = 0
        return index

    def _live(self, counts: list[int], now: float) -> int:
        oldest = int(now) - self.slots
        return sum(count for count, stamp in zip(counts, self.stamps, strict=True) if stamp > oldest)

    def record_request(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.requests[self._slot(now)] += 1

    def try_spend(self, now: float | None = None) -> bool:
        """Take one retry from the budget; False when it is spent."""
        now = time.monotonic() if now is None else now
        index = self._slot(now)
        allowed = max(self.min_retries, self.ratio * self._live(self.requests, now))
        if self._live(self.retries, now) + 1 > allowed:
            return False
        self.retries[index] += 1
        return True


class RetryMiddleware(Middleware):
    NAME: ClassVar[str] = NAME
    PRIORITY: ClassVar[int] = PRIORITY
    Config: ClassVar[type[MiddlewareConfig]] = RetryConfig
    ENABLED_BY_DEFAULT: ClassVar[bool] = True

    def __init__(self, config: RetryConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        self.methods = frozenset(method.upper() for method in config.methods)
        self.statuses = frozenset(config.statuses)
        self.retries = config.retries
        self.buffer_limit = config.buffer_limit
        self.deadline = config.deadline
        metrics = context.resources.metrics
        self.metrics = metrics
        self.exhausted = metrics.retry_budget_exhausted.labels(context.service)
        budgets = context.resources.retry_budgets
        budget = budgets.get(context.service)
        if budget is None or budget.slots != RetryBudget.slots_for(config.budget):
            budget = budgets[context.service] = RetryBudget(config.budget)
        else:
            budget.configure(config.budget)
        self.budget = budget
        self.retrying = AsyncRetrying(
            stop=stop_after_attempt(config.retries + 1) | self._past_deadline | self._budget_spent,
            # backoff, 2x backoff, 4x backoff ... capped, plus 0..jitter at random.
            wait=wait_exponential(multiplier=config.backoff, max=config.max_backoff) + wait_random(0, config.jitter),
            retry=retry_if_exception(self._retryable_error) | retry_if_result(self._retryable_reply),
            before_sleep=self._before_retry,
            retry_error_callback=_last_outcome,
            reraise=True,
        )
        # Requests that are not idempotent: only a failure that sent nothing is repeated.
        self.retrying_unsent = self.retrying.copy(retry=retry_if_exception(self._unsent_error))

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Reply:
        request = exchange.request
        self.budget.record_request()
        if self.retries == 0:
            return await call_next(exchange)
        if request.body_exists and not await self._buffer_body(exchange):
            return await call_next(exchange)
        # The first attempt runs without tenacity: a request that needs no retry (nearly all of them)
        # pays nothing for the machinery. Only a retryable outcome hands over to tenacity, which
        # replays that outcome as its own first attempt, so its counting, waits and stops are unchanged.
        try:
            reply = await call_next(exchange)
        except (BadGateway, GatewayTimeout) as error:
            idempotent = self._idempotent(request)
            if exchange.upstream_fault not in _RETRYABLE_FAULTS or not (idempotent or exchange.request_unsent):
                raise
            error.__dict__["_exchange"] = exchange
            first: Reply | BaseException = error
        else:
            if not self._retryable_reply(reply) or not (idempotent := self._idempotent(request)):
                return reply
            first = reply
        retrying = (self.retrying if idempotent else self.retrying_unsent).copy()
        return await retrying(_attempt, call_next, exchange, [first])

    async def _buffer_body(self, exchange: Exchange) -> bool:
        """Read a small body whole so it can be sent again; False when it must be streamed once."""
        request = exchange.request
        length = request.content_length
        route = exchange.route
        assert route is not None
        if length is None or length > self.buffer_limit or length > route.config.options.max_body_size:
            return False
        try:
            exchange.body = await request.content.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError, aiohttp.ClientPayloadError) as exc:
            exchange.failure = "client closed the connection during the upload"
            raise ClientClosedRequest() from exc
        return True

    def _retryable_error(self, error: BaseException) -> bool:
        if not isinstance(error, (BadGateway, GatewayTimeout)):
            return False
        return _exchange_of(error).upstream_fault in _RETRYABLE_FAULTS

    def _unsent_error(self, error: BaseException) -> bool:
        return self._retryable_error(error) and _exchange_of(error).request_unsent

    def _idempotent(self, request: web.BaseRequest) -> bool:
        """Whether the request may be sent again after an answer came back (asked only once one failed)."""
        return request.method in self.methods or "Idempotency-Key" in request.headers

    def _retryable_reply(self, reply: Reply) -> bool:
        return reply.upstream is not None and reply.status in self.statuses

    def _past_deadline(self, state: RetryCallState) -> bool:
        """A stop condition: the next attempt would start `deadline` or later after the request arrived.

        Counted from the arrival rather than from the first attempt (tenacity's stop_before_delay): the
        upload of a buffered body comes before the first attempt and is part of the client's wait."""
        return _state_exchange(state).elapsed + state.upcoming_sleep >= self.deadline

    def _budget_spent(self, state: RetryCallState) -> bool:
        """A stop condition, asked only once a retry is otherwise due: spends the budget or stops."""
        if self.budget.try_spend():
            return False
        self.exhausted.inc()
        exchange = _state_exchange(state)
        exchange.failure = (exchange.failure or "") + " (retry budget spent)"
        return True

    def _before_retry(self, state: RetryCallState) -> None:
        """Drop what the failed attempt left behind, and count it."""
        exchange = _state_exchange(state)
        outcome = state.outcome
        assert outcome is not None
        # A retry may not outlive the overall deadline: its total timeout ends there (504 when it does).
        exchange.deadline = exchange.started + self.deadline
        instance = exchange.instance
        if outcome.failed:
            cause = exchange.upstream_fault or "error"
            status = getattr(outcome.exception(), "status", 502)
        else:
            reply: Reply = outcome.result()
            cause, status = "status", reply.status
            if reply.upstream is not None:
                reply.upstream.close()
            exchange.release_instance()
        if instance is not None:
            # The next attempt goes to another instance when there is one. This one's answer is replaced,
            # but it is still what the instance did: its figures on the dashboard count it.
            exchange.tried = (*(exchange.tried or ()), instance)
            instance.window.record(status, time.perf_counter() - exchange.attempt_started)
        if exchange.upstream_fault is not None:
            self.metrics.upstream_errors.labels(exchange.service, exchange.upstream_fault).inc()
        exchange.upstream_fault = None
        exchange.request_unsent = False
        exchange.failure = None
        self.metrics.retries.labels(exchange.service, cause).inc()


async def _attempt(call_next: Handler, exchange: Exchange, first: list[Reply | BaseException]) -> Reply:
    if first:  # the outcome of the attempt made before tenacity took over
        outcome = first.pop()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    try:
        return await call_next(exchange)
    except (BadGateway, GatewayTimeout) as error:
        error.__dict__["_exchange"] = exchange  # read back by the retry predicate
        raise


def _exchange_of(error: BaseException) -> Exchange:
    return error.__dict__["_exchange"]  # type: ignore[no-any-return]


def _state_exchange(state: RetryCallState) -> Exchange:
    return state.args[1]  # type: ignore[no-any-return]


def _last_outcome(state: RetryCallState) -> Reply:
    """When the attempts run out, the client gets the last answer (or error) as it was."""
    assert state.outcome is not None
    return state.outcome.result()  # type: ignore[no-any-return]
