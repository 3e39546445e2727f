"""Unit tests of Service.pick: round-robin and least-requests balancing, health states and the admit predicate."""
from __future__ import annotations

from collections import Counter

import pytest

from gateway.config.schema import Balancer, HealthCheck
from gateway.routing import Admit, Instance, InstanceState, Service

U, H, X = InstanceState.UNKNOWN, InstanceState.HEALTHY, InstanceState.UNHEALTHY


def make_service(
    states: tuple[InstanceState, ...], balancer: Balancer = "round_robin", in_flight: tuple[int, ...] = ()
) -> Service:
    instances = []
    for index, state in enumerate(states):
        instance = Instance(f"http://10.0.0.{index + 1}:80")
        instance.state = state
        instance.in_flight = in_flight[index] if in_flight else 0
        instances.append(instance)
    return Service("svc", tuple(instances), HealthCheck(), balancer)


def picks(service: Service, count: int, admit: Admit | None = None) -> list[int | None]:
    """1-based positions of `count` picks in a row (None where nothing was picked)."""
    chosen = []
    for _ in range(count):
        instance = service.pick(admit)
        chosen.append(service.instances.index(instance) + 1 if instance else None)
    return chosen


@pytest.mark.parametrize("balancer", ["round_robin", "least_requests"])
@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ((U, U, U), [1, 2, 3, 1, 2, 3]),
        ((H, H), [1, 2, 1, 2]),
        ((X, X, H), [3, 3, 3]),
        ((X,), [None, None]),
        ((X, X), [None, None]),
        ((), [None, None]),
    ],
    ids=["in-turn", "healthy", "only-one-routable", "one-down", "all-down", "no-instances"],
)
def test_idle_instances_are_picked_in_turn_and_unhealthy_ones_never(
    balancer: Balancer, states: tuple[InstanceState, ...], expected: list[int | None]
) -> None:
    assert picks(make_service(states, balancer), len(expected)) == expected


def test_round_robin_skips_an_unhealthy_instance() -> None:
    service = make_service((H, X, U))
    chosen = picks(service, 60)
    assert 2 not in chosen
    assert set(chosen) == {1, 3}


def test_admit_can_refuse_an_instance() -> None:
    service = make_service((H, H, H))
    chosen = picks(service, 30, admit=lambda instance: instance is not service.instances[1])
    assert set(chosen) == {1, 3}
    assert Counter(chosen)[1] >= 10 and Counter(chosen)[3] >= 10


@pytest.mark.parametrize("balancer", ["round_robin", "least_requests"])
def test_nothing_is_picked_when_admit_refuses_every_routable_instance(balancer: Balancer) -> None:
    service = make_service((H, X), balancer)
    asked: list[str] = []

    def refuse(instance: Instance) -> bool:
        asked.append(instance.url)
        return False

    assert service.pick(refuse) is None
    # The breaker is only asked about instances that health checks leave in routing.
    assert asked == ["http://10.0.0.1:80"]


@pytest.mark.parametrize(
    ("in_flight", "expected"),
    [
        ((3, 1, 2), [2, 2, 2, 2]),
        ((0, 5, 5), [1, 1, 1]),
        ((4, 4, 0), [3, 3, 3]),
        ((2, 2, 2), [1, 2, 3, 1, 2, 3]),
        ((1, 0, 0), [2, 3, 2, 3, 2, 3]),
        ((0, 7, 0, 7), [1, 3, 1, 3]),
    ],
    ids=["fewest-in-middle", "fewest-first", "fewest-last", "all-equal-rotate", "tie-of-two-rotates",
         "tie-apart-rotates"],
)
def test_least_requests_picks_the_fewest_in_flight_and_takes_ties_in_turn(
    in_flight: tuple[int, ...], expected: list[int]
) -> None:
    service = make_service((U,) * len(in_flight), "least_requests", in_flight)
    assert picks(service, len(expected)) == expected


def test_least_requests_follows_the_in_flight_counts_as_they_change() -> None:
    service = make_service((U, U, U), "least_requests")
    held: list[Instance] = []
    for _ in range(6):  # requests that stay in flight spread evenly
        instance = service.pick()
        assert instance is not None
        instance.in_flight += 1
        held.append(instance)
    assert [instance.in_flight for instance in service.instances] == [2, 2, 2]

    held[0].in_flight -= 1  # one request of the first instance finishes
    assert service.pick() is held[0]


def test_least_requests_ignores_unhealthy_and_refused_instances_even_when_idle() -> None:
    service = make_service((X, H, H), "least_requests", (0, 3, 1))
    assert picks(service, 3) == [3, 3, 3]
    refused = service.instances[2]
    assert picks(service, 3, admit=lambda instance: instance is not refused) == [2, 2, 2]
