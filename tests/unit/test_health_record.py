"""Unit tests of HealthPoller.record: thresholds in a row flip an instance's state; gauges and counters follow."""
from __future__ import annotations

import logging
import time

import pytest

from gateway.config.schema import HealthCheck
from gateway.config.settings import Settings
from gateway.health import HealthPoller
from gateway.resources import Resources
from gateway.routing import Instance, InstanceState, RouteTable, Service

U, H, X = InstanceState.UNKNOWN, InstanceState.HEALTHY, InstanceState.UNHEALTHY
URL = "http://10.0.0.1:80"
FAILED = "status 500"


class Setup:
    def __init__(self, unhealthy_threshold: int = 3, healthy_threshold: int = 2, state: InstanceState = U) -> None:
        self.resources = Resources(settings=Settings())
        self.instance = Instance(URL)
        self.instance.state = state
        health = HealthCheck(unhealthy_threshold=unhealthy_threshold, healthy_threshold=healthy_threshold)
        self.service = Service("svc", (self.instance,), health)
        self.poller = HealthPoller(self._no_table, self.resources)

    @staticmethod
    def _no_table() -> RouteTable:
        raise AssertionError("record() must not read the route table")

    def results(self, outcomes: str) -> list[InstanceState]:
        """Apply results written as a string (. passed, x failed); return the state after each."""
        states = []
        for outcome in outcomes:
            self.poller.record(self.service, self.instance, None if outcome == "." else FAILED)
            states.append(self.instance.state)
        return states

    def sample(self, name: str, **labels: str) -> float | None:
        return self.resources.metrics.registry.get_sample_value(name, {"service": "svc", "instance": URL, **labels})


@pytest.mark.parametrize(
    ("start", "outcomes", "expected"),
    [
        (U, ".", [H]),
        (U, "x", [X]),
        (H, "xxx", [H, H, X]),
        (H, "xx.xx", [H, H, H, H, H]),
        (H, "x.xx.x", [H, H, H, H, H, H]),
        (H, "...", [H, H, H]),
        (X, "..", [X, H]),
        (X, ".x.", [X, X, X]),
        (X, ".x..", [X, X, X, H]),
        (X, "xxxx", [X, X, X, X]),
        (U, "x..xxx", [X, X, H, H, H, X]),
        (U, ".xxx..", [H, H, H, X, X, H]),
    ],
    ids=["unknown-pass-decides", "unknown-fail-decides", "healthy-to-unhealthy-at-threshold",
         "pass-resets-failures", "passes-keep-resetting", "healthy-stays", "unhealthy-back-at-threshold",
         "fail-resets-passes", "back-after-passes-in-a-row", "unhealthy-stays", "round-trip-from-unhealthy",
         "round-trip-from-healthy"],
)
def test_thresholds_in_a_row_flip_the_state(
    start: InstanceState, outcomes: str, expected: list[InstanceState]
) -> None:
    setup = Setup(unhealthy_threshold=3, healthy_threshold=2, state=start)
    assert setup.results(outcomes) == expected


@pytest.mark.parametrize(
    ("unhealthy", "healthy"), [(1, 1), (2, 2), (5, 3)], ids=["1-1", "2-2", "5-3"]
)
def test_thresholds_come_from_the_service_settings(unhealthy: int, healthy: int) -> None:
    setup = Setup(unhealthy_threshold=unhealthy, healthy_threshold=healthy, state=H)
    states = setup.results("x" * unhealthy)
    assert states[-1] is X and all(state is H for state in states[:-1])
    states = setup.results("." * healthy)
    assert states[-1] is H and all(state is X for state in states[:-1])


def test_counts_and_last_result_are_kept_on_the_instance() -> None:
    setup = Setup(state=H)
    before = time.time()
    setup.results("xx")
    instance = setup.instance
    assert (instance.fails, instance.passes, instance.last_error) == (2, 0, FAILED)
    assert instance.checked_at is not None and before <= instance.checked_at <= time.time()

    setup.results(".")
    assert (instance.fails, instance.passes, instance.last_error) == (0, 1, None)
    assert instance.state is H


def test_routability_gauge_and_check_counters() -> None:
    setup = Setup(unhealthy_threshold=2, healthy_threshold=2)
    gauge = "kadai_gateway_instance_healthy"
    checks = "kadai_gateway_health_checks_total"
    assert setup.sample(gauge) is None  # no series before the first result

    observed = []
    for outcome in ".xx..":
        setup.results(outcome)
        observed.append(setup.sample(gauge))

    assert observed == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert setup.sample(checks, result="ok") == 3
    assert setup.sample(checks, result="failed") == 2


def test_state_changes_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    setup = Setup(unhealthy_threshold=2, healthy_threshold=2, state=H)
    with caplog.at_level(logging.INFO, logger="gateway.health"):
        setup.results("xxxx..")
    messages = [(record.levelname, record.getMessage()) for record in caplog.records]
    assert messages == [
        ("WARNING", f"instance {URL} of svc taken out of routing: {FAILED}"),
        ("INFO", f"instance {URL} of svc back in routing"),
    ]


def test_the_first_pass_of_a_new_instance_is_not_logged_as_a_return(caplog: pytest.LogCaptureFixture) -> None:
    setup = Setup()
    with caplog.at_level(logging.INFO, logger="gateway.health"):
        setup.results(".")
    assert setup.instance.state is H
    assert caplog.records == []
