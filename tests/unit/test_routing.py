"""Unit tests of gateway.routing: longest-prefix matching, instance selection and table rebuilds."""
from __future__ import annotations

from typing import Any

import pytest
import yaml

from gateway.config.loader import parse_registry
from gateway.config.settings import Settings
from gateway.exchange import Exchange, Reply
from gateway.resources import Resources
from gateway.routing import Instance, InstanceState, RouteTable, Service, build_table
from tests.middleware_names import core

SERVICES: dict[str, Any] = {
    "users": {
        "instances": ["http://127.0.0.1:3001", "http://127.0.0.1:3011", "http://127.0.0.1:3021"],
        "routes": [{"prefix": "/api/v1/users"}, {"prefix": "/api/v1/auth", "auth": False}],
    },
    "admin": {"instances": ["http://127.0.0.1:3009"], "routes": [{"prefix": "/api/v1/users/admin/"}]},
    "orders": {"instances": [], "routes": [{"prefix": "/api/v1/orders", "access_log": False}]},
    "root": {"instances": ["http://127.0.0.1:3100"], "routes": [{"prefix": "/svc", "strip_prefix": ""}]},
}


async def forward(exchange: Exchange) -> Reply:
    return Reply(204)


def make_table(services: dict[str, Any] | None = None, previous: RouteTable | None = None) -> RouteTable:
    data = yaml.safe_dump({"version": 1, "services": services or SERVICES}).encode()
    config = parse_registry(data, "reg.yaml")
    resources = Resources(settings=Settings())
    revision = previous.revision + 1 if previous else 1
    return build_table(config, resources, forward, revision, previous=previous)


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return make_table()


@pytest.mark.parametrize(
    ("path", "prefix"),
    [
        ("/api/v1/users", "/api/v1/users"),
        ("/api/v1/users/", "/api/v1/users"),
        ("/api/v1/users/42", "/api/v1/users"),
        ("/api/v1/users/42/orders", "/api/v1/users"),
        ("/api/v1/users/admin", "/api/v1/users/admin"),
        ("/api/v1/users/admin/", "/api/v1/users/admin"),
        ("/api/v1/users/admin/x/y", "/api/v1/users/admin"),
        ("/api/v1/users/administrators", "/api/v1/users"),
        ("/api/v1/auth/login", "/api/v1/auth"),
        ("/svc", "/svc"),
        ("/svc/a", "/svc"),
        ("/api/v1/usersx", None),
        ("/api/v1/user", None),
        ("/api/v1", None),
        ("/api/v1/", None),
        ("/", None),
        ("", None),
        ("/other/api/v1/users", None),
        ("/API/v1/users", None),
    ],
    ids=["exact", "trailing-slash", "below", "deep", "longest-exact", "longest-trailing-slash", "longest-deep",
         "longest-segment-boundary", "other-route", "top-level", "top-level-below", "segment-boundary",
         "shorter-name", "parent", "parent-slash", "root", "empty", "embedded", "case-sensitive"],
)
def test_match_longest_prefix_on_segment_boundaries(table: RouteTable, path: str, prefix: str | None) -> None:
    route = table.match(path)
    assert (route.prefix if route else None) == prefix


def test_route_carries_its_service_config_and_timeouts(table: RouteTable) -> None:
    route = table.match("/api/v1/auth/login")
    assert route is not None
    assert route.service is table.services["users"]
    assert route.config.options.auth is False
    assert (route.timeout.sock_connect, route.timeout.sock_read, route.timeout.total) == (1.0, 10.0, 60.0)


def test_chain_is_sorted_by_priority_highest_outermost(table: RouteTable) -> None:
    assert core(table.routes["/api/v1/users"].middleware) == ["request_id", "metrics", "access_log"]
    assert core(table.routes["/api/v1/orders"].middleware) == ["request_id", "metrics"]
    priorities = [table.config.middleware_classes[name].PRIORITY for name in table.routes["/api/v1/users"].middleware]
    assert priorities == sorted(priorities, reverse=True)


def test_total_timeout_zero_means_no_limit() -> None:
    services = {"a": {"routes": [{"prefix": "/api/v1/a", "timeouts": {"total": 0}}]}}
    route = make_table(services).routes["/api/v1/a"]
    assert route.timeout.total is None


def service_of(*states: InstanceState) -> Service:
    instances = []
    for index, state in enumerate(states):
        instance = Instance(f"http://10.0.0.{index + 1}:80")
        instance.state = state
        instances.append(instance)
    return Service("svc", tuple(instances), make_table().services["users"].health)


U, H, X = InstanceState.UNKNOWN, InstanceState.HEALTHY, InstanceState.UNHEALTHY


@pytest.mark.parametrize(
    ("states", "picks"),
    [
        ((U,), [1, 1, 1]),
        ((U, U, U), [1, 2, 3, 1, 2, 3]),
        ((H, U), [1, 2, 1, 2]),
        ((U, X, U), [1, 3, 1, 3, 1, 3]),
        ((X, X, H), [3, 3, 3]),
        ((X,), [None, None]),
        ((X, X), [None, None]),
        ((), [None, None]),
    ],
    ids=["one", "round-robin", "healthy-and-unknown", "skips-unhealthy", "only-one-routable", "one-down",
         "all-down", "no-instances"],
)
def test_pick(states: tuple[InstanceState, ...], picks: list[int | None]) -> None:
    service = service_of(*states)
    got = []
    for _ in picks:
        instance = service.pick()
        got.append(service.instances.index(instance) + 1 if instance else None)
    assert got == picks


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ((), "no-instances"),
        ((U,), "unchecked"),
        ((H, U), "unchecked"),
        ((H, H), "up"),
        ((H, X), "degraded"),
        ((U, X), "degraded"),
        ((X, X), "down"),
    ],
    ids=["no-instances", "not-checked-yet", "partly-checked", "all-healthy", "some-unhealthy",
         "unchecked-and-unhealthy", "all-unhealthy"],
)
def test_service_state(states: tuple[InstanceState, ...], expected: str) -> None:
    assert service_of(*states).state == expected


def test_instance_describe() -> None:
    instance = Instance("http://10.0.0.1:80")
    instance.state = InstanceState.UNHEALTHY
    assert instance.describe() == {"url": "http://10.0.0.1:80", "state": "unhealthy", "inFlight": 0}
    assert instance.routable is False


def test_rebuild_keeps_instances_of_unchanged_urls() -> None:
    first = make_table()
    kept = first.services["users"].instances[1]
    kept.state = InstanceState.UNHEALTHY
    changed: dict[str, Any] = {
        **SERVICES,
        "users": {
            **SERVICES["users"],
            "instances": ["http://127.0.0.1:3011", "http://127.0.0.1:3031"],
        },
    }
    second = make_table(changed, previous=first)
    new_users = second.services["users"]
    assert second.revision == 2
    assert new_users is not first.services["users"]
    assert new_users.instances[0] is kept
    assert new_users.instances[0].state is InstanceState.UNHEALTHY
    assert new_users.instances[1].url == "http://127.0.0.1:3031"
    assert new_users.instances[1].state is InstanceState.UNKNOWN
    assert new_users.state == "degraded"
    assert second.services["admin"].instances[0] is first.services["admin"].instances[0]


def test_rebuild_without_previous_starts_fresh() -> None:
    first = make_table()
    first.services["users"].instances[0].state = InstanceState.UNHEALTHY
    second = make_table()
    assert second.services["users"].instances[0] is not first.services["users"].instances[0]
    assert second.services["users"].instances[0].state is InstanceState.UNKNOWN
