"""Unit tests of the retry middleware's backoff schedule: its tenacity wait doubles from `backoff`, stops at
`max_backoff`, and adds 0 to `jitter` at random."""
from __future__ import annotations

from typing import Any

import pytest
from tenacity import AsyncRetrying, RetryCallState

from gateway.config.settings import Settings
from gateway.middleware.base import BuildContext
from gateway.middleware.retry import RetryConfig, RetryMiddleware
from gateway.resources import Resources

SAMPLES = 200
"""Draws per retry: enough that the jitter's spread shows, never so many the test is slow."""


def middleware(**config: Any) -> RetryMiddleware:
    return RetryMiddleware(RetryConfig(**config), BuildContext("svc", "/api/v1/svc", Resources(settings=Settings())))


def wait_before(retrying: AsyncRetrying, retry: int) -> float:
    """The wait tenacity sleeps before retry number `retry`, i.e. after attempt number `retry` failed."""
    state = RetryCallState(retrying, None, (), {})
    state.attempt_number = retry
    return float(retrying.wait(state))


@pytest.mark.parametrize(
    ("config", "bases"),
    [
        ({}, [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]),
        ({"backoff": 0.25, "max_backoff": 1.0}, [0.25, 0.5, 1.0, 1.0, 1.0]),
        ({"backoff": 0.3, "max_backoff": 1.0}, [0.3, 0.6, 1.0, 1.0]),
        ({"backoff": 1.0, "max_backoff": 0.5}, [0.5, 0.5, 0.5]),
    ],
    ids=["defaults", "doubling-to-the-cap", "cap-between-steps", "cap-below-backoff"],
)
@pytest.mark.parametrize("jitter", [0.0, 0.05], ids=["no-jitter", "jitter"])
def test_waits_double_from_backoff_up_to_max_backoff_plus_jitter(
    config: dict[str, Any], bases: list[float], jitter: float
) -> None:
    retry = middleware(**config, jitter=jitter, retries=len(bases))
    for retrying in (retry.retrying, retry.retrying_unsent):
        for number, base in enumerate(bases, start=1):
            waits = [wait_before(retrying, number) for _ in range(SAMPLES)]
            assert all(base <= wait <= base + jitter for wait in waits), (number, base, min(waits), max(waits))
            if jitter:
                # Drawn at random each time, not a fixed offset: 200 uniform draws cover most of the range.
                assert max(waits) - min(waits) > jitter / 2, (number, min(waits), max(waits))
            else:
                assert waits == [pytest.approx(base)] * SAMPLES


def test_default_jitter_spreads_waits_by_up_to_100ms() -> None:
    retrying = middleware().retrying
    waits = [wait_before(retrying, 1) for _ in range(SAMPLES)]
    assert all(0.1 <= wait <= 0.2 for wait in waits)
    assert max(waits) - min(waits) > 0.05
