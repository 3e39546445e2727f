"""Unit tests of RetryBudget (gateway.middleware.retry): ratio, floor and the sliding window, on a hand-moved clock."""
from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from gateway.middleware.retry import RetryBudget, RetryBudgetConfig

T0 = 1_000.0
"""Start of the hand-moved clock: a whole second, so slot boundaries are easy to reason about."""


def budget(ratio: float, min_retries: int, window: float = 10.0) -> RetryBudget:
    return RetryBudget(RetryBudgetConfig(ratio=ratio, min_retries=min_retries, window=window))


def spend_all(retry_budget: RetryBudget, now: float, limit: int = 100) -> int:
    """How many retries the budget grants at `now` before it refuses one."""
    for granted in range(limit):
        if not retry_budget.try_spend(now=now):
            return granted
    raise AssertionError(f"the budget granted {limit} retries and never refused")


@pytest.mark.parametrize(
    ("ratio", "min_retries", "requests", "granted"),
    [
        (0.0, 3, 0, 3),
        (0.0, 3, 50, 3),
        (0.0, 0, 50, 0),
        (0.5, 0, 10, 5),
        (0.2, 0, 4, 0),
        (0.2, 0, 5, 1),
        (0.2, 1, 20, 4),
        (0.2, 10, 20, 10),
        (2.0, 0, 3, 6),
    ],
    ids=["floor-when-quiet", "floor-ignores-traffic-at-ratio-0", "no-floor-no-ratio", "ratio",
         "ratio-rounds-down", "ratio-exact", "ratio-above-floor", "floor-above-ratio", "ratio-above-1"],
)
def test_allowed_retries_are_the_larger_of_floor_and_ratio(
    ratio: float, min_retries: int, requests: int, granted: int
) -> None:
    retry_budget = budget(ratio, min_retries)
    for _ in range(requests):
        retry_budget.record_request(now=T0)

    assert spend_all(retry_budget, T0) == granted


def test_a_refused_retry_is_not_counted() -> None:
    retry_budget = budget(0.5, 0)
    for _ in range(4):
        retry_budget.record_request(now=T0)
    assert spend_all(retry_budget, T0) == 2
    assert [retry_budget.try_spend(now=T0) for _ in range(5)] == [False] * 5

    for _ in range(2):
        retry_budget.record_request(now=T0)

    assert spend_all(retry_budget, T0) == 1  # 6 requests allow 3 in all; the refusals took nothing


def test_spent_retries_come_back_when_their_second_leaves_the_window() -> None:
    retry_budget = budget(0.0, 2, window=10)
    assert spend_all(retry_budget, T0 + 0.2) == 2

    assert retry_budget.try_spend(now=T0 + 5) is False
    assert retry_budget.try_spend(now=T0 + 9.999) is False  # second T0 is still one of the last ten
    assert retry_budget.try_spend(now=T0 + 10) is True
    assert retry_budget.try_spend(now=T0 + 10.5) is True
    assert retry_budget.try_spend(now=T0 + 10.9) is False


def test_retries_spread_over_the_window_expire_slot_by_slot() -> None:
    retry_budget = budget(0.0, 3, window=5)
    for second in range(3):
        assert retry_budget.try_spend(now=T0 + second) is True
    assert retry_budget.try_spend(now=T0 + 4) is False

    assert spend_all(retry_budget, T0 + 5) == 1  # only the retry of second T0 has expired
    assert spend_all(retry_budget, T0 + 6) == 1  # then the one of T0 + 1
    assert spend_all(retry_budget, T0 + 10) == 2  # those of T0 + 2 and T0 + 5 too; T0 + 6's is still counted
    assert retry_budget.try_spend(now=T0 + 10) is False


def test_requests_leaving_the_window_shrink_the_allowance() -> None:
    retry_budget = budget(1.0, 0, window=10)
    for _ in range(5):
        retry_budget.record_request(now=T0)
    for _ in range(3):
        retry_budget.record_request(now=T0 + 5)

    assert spend_all(retry_budget, T0 + 9) == 8
    assert retry_budget.try_spend(now=T0 + 10) is False  # 3 requests left in the window, and 8 retries

    for _ in range(4):
        retry_budget.record_request(now=T0 + 15)
    assert retry_budget.try_spend(now=T0 + 15) is False  # 4 requests, but the 8 retries of T0 + 9 still count
    assert spend_all(retry_budget, T0 + 19) == 4


def test_a_reused_slot_starts_from_zero() -> None:
    retry_budget = budget(1.0, 0, window=10)
    for _ in range(5):
        retry_budget.record_request(now=T0)
    assert spend_all(retry_budget, T0) == 5

    retry_budget.record_request(now=T0 + 10)  # same slot as T0, ten seconds later

    assert spend_all(retry_budget, T0 + 10) == 1


def test_a_quiet_gap_longer_than_the_window_forgets_everything() -> None:
    retry_budget = budget(0.5, 1, window=3)
    for _ in range(10):
        retry_budget.record_request(now=T0)
    assert spend_all(retry_budget, T0) == 5

    assert spend_all(retry_budget, T0 + 1_000) == 1  # only the floor; old slots hold stale stamps


@pytest.mark.parametrize(
    ("window", "slots"), [(1, 1), (1.4, 1), (1.5, 2), (10, 10), (60, 60)], ids=["1s", "1.4s", "1.5s", "10s", "1m"]
)
def test_window_is_counted_in_whole_second_slots(window: float, slots: int) -> None:
    retry_budget = budget(0.0, 1, window=window)
    assert retry_budget.slots == slots
    assert retry_budget.try_spend(now=T0) is True
    assert retry_budget.try_spend(now=T0 + slots - 1) is False
    assert retry_budget.try_spend(now=T0 + slots) is True


def test_configure_changes_ratio_and_floor_and_keeps_the_counts() -> None:
    retry_budget = budget(0.0, 1)
    for _ in range(10):
        retry_budget.record_request(now=T0)
    assert spend_all(retry_budget, T0) == 1

    retry_budget.configure(RetryBudgetConfig(ratio=0.5, min_retries=0))

    assert spend_all(retry_budget, T0 + 1) == 4  # 10 requests allow 5, one of them is spent already


def test_without_a_clock_argument_it_uses_the_monotonic_clock() -> None:
    retry_budget = budget(0.0, 1)
    retry_budget.record_request()
    assert retry_budget.try_spend() is True
    assert retry_budget.try_spend() is False
    assert retry_budget.try_spend(now=time.monotonic() + 10) is True


@pytest.mark.parametrize(
    "settings",
    [{"ratio": -0.1}, {"ratio": 11}, {"min_retries": -1}, {"window": 0.5}, {"window": "11m"}],
    ids=["negative-ratio", "ratio-too-big", "negative-floor", "window-under-1s", "window-over-10m"],
)
def test_config_bounds(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RetryBudgetConfig.model_validate(settings)


def test_config_defaults_and_units() -> None:
    assert RetryBudgetConfig() == RetryBudgetConfig(ratio=0.2, min_retries=10, window=10.0)
    assert RetryBudgetConfig.model_validate({"window": "30s"}).window == 30.0
