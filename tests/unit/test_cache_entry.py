"""Unit tests of the response cache's entries (gateway.middleware.cache): which answers may be served stale."""
from __future__ import annotations

import time

import pytest

from gateway.middleware.cache import _Entry


def entry(*headers: tuple[str, str]) -> _Entry:
    return _Entry(200, [("Content-Type", "application/json"), *headers], b"{}", time.time(), 30.0)


@pytest.mark.parametrize(
    ("headers", "forbidden"),
    [
        ((), False),
        ((("Cache-Control", "public, max-age=60"),), False),
        ((("Cache-Control", "max-age=60, must-revalidate"),), True),
        ((("cache-control", "Proxy-Revalidate"),), True),
        ((("Cache-Control", "s-maxage=10"),), True),
        ((("Cache-Control", "public"), ("Cache-Control", "must-revalidate")), True),
        ((("Cache-Control", "stale-if-error=600"),), False),
        ((("X-Note", "must-revalidate"),), False),
    ],
    ids=["no-directives", "max-age", "must-revalidate", "proxy-revalidate-any-case", "s-maxage",
         "second-cache-control-header", "stale-if-error", "other-header"],
)
def test_revalidation_directives_forbid_serving_stale(headers: tuple[tuple[str, str], ...], forbidden: bool) -> None:
    assert entry(*headers).forbids_stale() is forbidden


def test_the_directives_survive_the_trip_through_redis() -> None:
    stored = entry(("Cache-Control", "max-age=5, must-revalidate"))
    decoded = _Entry.decode(stored.encode())
    assert decoded is not None and decoded.forbids_stale()


def test_cache_backoff_steps_aside_after_a_failure_and_returns_after_its_delay() -> None:
    import time

    from gateway.middleware.cache import CacheBackoff

    backoff = CacheBackoff()
    backoff.BACKOFF = 0.05  # type: ignore[misc]
    assert backoff.open() and backoff()["state"] == "ok"
    backoff.failed("lookup: TimeoutError")
    assert not backoff.open()
    assert backoff() == {"state": "backing-off", "retryInSeconds": backoff()["retryInSeconds"], "lastError": "lookup: TimeoutError"}
    time.sleep(0.06)
    assert backoff.open()  # one probe may go through
    backoff.failed("lookup: TimeoutError")
    assert backoff.delay == 0.1  # doubled
    backoff.succeeded()
    assert backoff.open() and backoff()["state"] == "ok" and backoff.delay == 0.0
