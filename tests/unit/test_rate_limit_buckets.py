"""Unit tests of the token-bucket formula (gateway.ratelimit.buckets), on the in-process backend and a fake clock."""
from __future__ import annotations

import pytest

from gateway.ratelimit import Decision, InProcessBackend, Plan, Tier


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(clock: Clock) -> InProcessBackend:
    return InProcessBackend(clock)


async def admitted(backend: InProcessBackend, plan: Plan, client: str, attempts: int) -> list[bool]:
    return [(await backend.acquire(plan, client)).allowed for _ in range(attempts)]


@pytest.mark.parametrize(
    ("tiers", "allowed", "tripped"),
    [
        ((Tier("a", 3, 60_000), Tier("b", 10, 60_000), Tier("c", 20, 60_000)), 3, "a"),
        ((Tier("a", 10, 60_000), Tier("b", 3, 60_000), Tier("c", 20, 60_000)), 3, "b"),
        ((Tier("a", 10, 1_000), Tier("b", 20, 10_000), Tier("c", 4, 3_600_000)), 4, "c"),
        ((Tier("only", 1, 1_000),), 1, "only"),
    ],
    ids=["first-tier", "middle-tier", "last-tier", "single-tier"],
)
async def test_the_smallest_bucket_trips_at_its_limit(
    backend: InProcessBackend, tiers: tuple[Tier, ...], allowed: int, tripped: str
) -> None:
    plan = Plan(tiers)
    assert await admitted(backend, plan, "ip:a", allowed + 3) == [True] * allowed + [False] * 3
    refusal = await backend.acquire(plan, "ip:a")
    assert plan.tiers[refusal.tier].name == tripped
    assert refusal.remaining == 0


async def test_refill_is_limit_per_window(backend: InProcessBackend, clock: Clock) -> None:
    plan = Plan([Tier("second", 10, 1_000)])
    assert await admitted(backend, plan, "c", 11) == [True] * 10 + [False]
    clock.advance(0.099)
    assert not (await backend.acquire(plan, "c")).allowed
    clock.advance(0.001)
    assert await admitted(backend, plan, "c", 2) == [True, False]
    clock.advance(0.35)  # 3.5 tokens
    assert await admitted(backend, plan, "c", 4) == [True, True, True, False]
    clock.advance(60)  # refills to the limit, never above
    assert await admitted(backend, plan, "c", 11) == [True] * 10 + [False]


async def test_a_refused_request_takes_nothing_from_any_tier(backend: InProcessBackend, clock: Clock) -> None:
    plan = Plan([Tier("second", 5, 1_000), Tier("minute", 2, 60_000)])
    assert await admitted(backend, plan, "c", 2) == [True, True]
    before = dict(backend.buckets)
    assert await admitted(backend, plan, "c", 5) == [False] * 5
    assert backend.buckets == before
    second_key = plan.keys("c")[0]
    assert backend.buckets[second_key][0] == pytest.approx(3.0)


async def test_clients_have_separate_buckets(backend: InProcessBackend) -> None:
    plan = Plan([Tier("t", 2, 60_000)])
    assert await admitted(backend, plan, "ip:a", 3) == [True, True, False]
    assert await admitted(backend, plan, "ip:b", 3) == [True, True, False]
    assert await admitted(backend, plan, "sub:a", 1) == [True]


async def test_allowed_decision_describes_the_tightest_tier(backend: InProcessBackend) -> None:
    plan = Plan([Tier("second", 10, 1_000), Tier("minute", 3, 60_000)])
    # minute: 2 whole tokens left, full again in 20 s (one token per 20 s).
    assert await backend.acquire(plan, "c") == Decision(True, 1, 2, 20_000, 0)
    assert await backend.acquire(plan, "c") == Decision(True, 1, 1, 40_000, 0)


async def test_ties_on_remaining_go_to_the_tier_full_last(backend: InProcessBackend) -> None:
    plan = Plan([Tier("fast", 3, 1_000), Tier("slow", 3, 30_000)])
    decision = await backend.acquire(plan, "c")
    assert (plan.tiers[decision.tier].name, decision.remaining, decision.reset_ms) == ("slow", 2, 10_000)


async def test_refusal_reports_the_tier_with_the_longest_wait(backend: InProcessBackend, clock: Clock) -> None:
    plan = Plan([Tier("second", 1, 1_000), Tier("minute", 1, 60_000)])
    assert (await backend.acquire(plan, "c")).allowed
    clock.advance(0.25)
    # Both are empty; the minute tier's next token is 59.75 s away, the second tier's 0.75 s.
    assert await backend.acquire(plan, "c") == Decision(False, 1, 0, 59_750, 59_750)


async def test_retry_after_is_the_time_to_the_next_token(backend: InProcessBackend, clock: Clock) -> None:
    plan = Plan([Tier("t", 4, 2_000)])  # one token per 500 ms
    assert await admitted(backend, plan, "c", 4) == [True] * 4
    clock.advance(0.2)
    refusal = await backend.acquire(plan, "c")
    assert (refusal.allowed, refusal.retry_after_ms, refusal.reset_ms) == (False, 300, 1_800)
    clock.advance(0.3)
    assert (await backend.acquire(plan, "c")).allowed


async def test_full_buckets_are_swept(backend: InProcessBackend, clock: Clock) -> None:
    plan = Plan([Tier("t", 2, 1_000)])
    await backend.acquire(plan, "ip:a")
    await backend.acquire(plan, "ip:b")
    await backend.acquire(plan, "ip:b")
    clock.advance(0.5)  # a is full again (one token back), b is not (one of two)
    backend.sweep(clock() * 1_000_000)
    assert list(backend.buckets) == plan.keys("ip:b")


async def test_sweep_runs_by_itself(clock: Clock) -> None:
    backend = InProcessBackend(clock)
    backend.SWEEP_EVERY = 3
    plan = Plan([Tier("t", 5, 1_000)])
    await backend.acquire(plan, "ip:a")
    clock.advance(1)
    await backend.acquire(plan, "ip:b")
    await backend.acquire(plan, "ip:c")  # the third write sweeps: a is full again
    assert sorted(backend.buckets) == sorted(plan.keys("ip:b") + plan.keys("ip:c"))


def test_plan_precomputes_keys_and_script_arguments() -> None:
    plan = Plan([Tier("second", 10, 1_000), Tier("payments", 10, 60_000)])
    assert plan.keys("ip:10.0.0.7") == [
        "kadai:ratelimit:second.10per1000ms:{ip:10.0.0.7}",
        "kadai:ratelimit:payments.10per60000ms:{ip:10.0.0.7}",
    ]
    assert plan.script_args == (10, 1_000_000, 10, 60_000_000)


def test_a_plan_needs_a_tier() -> None:
    with pytest.raises(ValueError, match="at least one tier"):
        Plan([])
