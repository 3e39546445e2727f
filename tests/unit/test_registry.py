"""Unit tests of gateway.config.loader.parse_registry: typed config, option cascade and precise errors."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from yarl import URL

from gateway.config.errors import ConfigError
from gateway.config.loader import load_registry, parse_registry
from gateway.config.schema import RegistryConfig, RouteConfig
from gateway.middleware.request_id import RequestIdConfig
from tests.middleware_names import CORE, core

SOURCE = "reg.yaml"
REPO_REGISTRY = Path(__file__).resolve().parents[2] / "registry.yaml"
BUILTIN_MIDDLEWARE = set(CORE)


def registry(services: dict[str, Any] | None = None, **top: Any) -> bytes:
    """A registry document; without services, one user-service with /api/v1/users."""
    if services is None:
        services = {"user-service": {"instances": ["http://127.0.0.1:3001"], "routes": [{"prefix": "/api/v1/users"}]}}
    return yaml.safe_dump({"version": 1, **top, "services": services}, sort_keys=False).encode()


def one_route(service_options: dict[str, Any] | None = None, **route_options: Any) -> dict[str, Any]:
    """The services mapping of one service with one route /api/v1/users carrying route_options."""
    return {
        "users": {
            "instances": ["http://127.0.0.1:3001"],
            **(service_options or {}),
            "routes": [{"prefix": "/api/v1/users", **route_options}],
        }
    }


def with_instances(*urls: str) -> bytes:
    """A registry whose one service has these instance URLs."""
    return registry({"users": {"instances": list(urls), "routes": [{"prefix": "/api/v1/u"}]}})


def parse(data: bytes) -> RegistryConfig:
    return parse_registry(data, SOURCE)


def route(config: RegistryConfig, prefix: str) -> RouteConfig:
    return next(r for r in config.routes if r.prefix == prefix)


def problems_of(data: bytes) -> tuple[str, ...]:
    """The problems of a refused registry, after checking the error names the source."""
    with pytest.raises(ConfigError) as caught:
        parse(data)
    error = caught.value
    assert error.source == SOURCE
    assert str(error).startswith(f"{SOURCE}: ")
    assert all(problem in str(error) for problem in error.problems)
    return error.problems


def assert_problem(problem: str, path: str, reason: str) -> None:
    assert problem.startswith(f"{path}: "), problem
    assert reason in problem.removeprefix(f"{path}: "), problem


# --- valid files --------------------------------------------------------------------------------------------


def test_minimal_file_gives_typed_config() -> None:
    data = registry()
    config = parse(data)
    assert config.source == SOURCE
    assert config.digest == hashlib.sha256(data).hexdigest()
    assert list(config.services) == ["user-service"]
    service = config.services["user-service"]
    assert service.instances == ("http://127.0.0.1:3001",)
    assert (service.health.path, service.health.interval, service.health.timeout) == ("/health", 30.0, 2.0)
    assert service.routes == config.routes
    (only,) = config.routes
    assert (only.service, only.prefix) == ("user-service", "/api/v1/users")
    options = only.options
    assert (options.auth, options.strip_prefix, options.max_body_size) == (True, "/api/v1", 10_000_000)
    assert (options.timeouts.connect, options.timeouts.read, options.timeouts.total) == (1.0, 10.0, 60.0)
    assert set(core(only.middleware)) == BUILTIN_MIDDLEWARE
    assert set(core(config.edge_middleware)) == BUILTIN_MIDDLEWARE
    assert BUILTIN_MIDDLEWARE <= set(config.middleware_classes)
    assert config.plugins == ()
    assert config.gateway.admin_networks == () and config.gateway.trusted_proxies == ()


@pytest.mark.parametrize(
    ("urls", "expected"),
    [
        (["http://127.0.0.1:3001/"], ("http://127.0.0.1:3001",)),
        (["http://a:1", "http://b:2/"], ("http://a:1", "http://b:2")),
        (["https://svc.internal:8443/base/"], ("https://svc.internal:8443/base",)),
        (["http://[::1]:3001"], ("http://[::1]:3001",)),
        ([], ()),
    ],
    ids=["trailing-slash", "two", "https-with-path", "ipv6", "none"],
)
def test_instances_are_normalised(urls: list[str], expected: tuple[str, ...]) -> None:
    config = parse(registry({"users": {"instances": urls, "routes": [{"prefix": "/api/v1/users"}]}}))
    assert config.services["users"].instances == expected


@pytest.mark.parametrize(
    ("defaults", "service", "route_options", "expected"),
    [
        ({}, {}, {}, (1.0, 10.0, 60.0)),
        ({"timeouts": {"connect": "1s", "read": "10s"}}, {}, {"timeouts": {"read": "30s"}}, (1.0, 30.0, 60.0)),
        ({"timeouts": {"connect": "2s"}}, {"timeouts": {"read": "20s"}}, {"timeouts": {"total": 0}}, (2.0, 20.0, 0.0)),
        ({"timeouts": {"read": "5s"}}, {"timeouts": {"read": "6s"}}, {}, (1.0, 6.0, 60.0)),
        ({}, {}, {"timeouts": {"connect": "250ms", "total": "2m"}}, (0.25, 10.0, 120.0)),
    ],
    ids=["code-defaults", "route-merges-defaults", "three-levels-merge", "service-overrides-defaults",
         "route-only"],
)
def test_timeouts_cascade_by_key(
    defaults: dict[str, Any], service: dict[str, Any], route_options: dict[str, Any], expected: tuple[float, ...]
) -> None:
    config = parse(registry(one_route(service, **route_options), defaults=defaults))
    timeouts = config.routes[0].options.timeouts
    assert (timeouts.connect, timeouts.read, timeouts.total) == pytest.approx(expected)


def test_scalar_options_cascade_defaults_service_route() -> None:
    services = {
        "users": {
            "instances": ["http://127.0.0.1:3001"],
            "auth": False,
            "max_body_size": "1MiB",
            "routes": [
                {"prefix": "/api/v1/auth"},
                {"prefix": "/api/v1/users", "auth": True, "max_body_size": 100},
                {"prefix": "/api/v1/users/avatars/", "strip_prefix": "/api/v1/users"},
            ],
        },
        "orders": {"instances": ["http://127.0.0.1:3003"], "routes": [{"prefix": "/api/v1/orders"}]},
    }
    config = parse(registry(services, defaults={"strip_prefix": "/api", "max_body_size": "512KB"}))
    summary = {r.prefix: (r.options.auth, r.options.max_body_size, r.options.strip_prefix) for r in config.routes}
    assert summary == {
        "/api/v1/auth": (False, 1_048_576, "/api"),
        "/api/v1/users": (True, 100, "/api"),
        "/api/v1/users/avatars": (False, 1_048_576, "/api/v1/users"),
        "/api/v1/orders": (True, 512_000, "/api"),
    }


@pytest.mark.parametrize(
    ("prefix", "strip_prefix"),
    [("/api/v1/users", "/api/v1/users"), ("/users", ""), ("/users", "/"), ("/api/v1/users", "/api/v1/")],
    ids=["whole-prefix", "empty", "root", "trailing-slash"],
)
def test_strip_prefix_variants_accepted(prefix: str, strip_prefix: str) -> None:
    config = parse(registry({"users": {"routes": [{"prefix": prefix, "strip_prefix": strip_prefix}]}}))
    assert config.routes[0].options.strip_prefix == strip_prefix.rstrip("/")


def test_route_can_switch_off_auth() -> None:
    routes = [{"prefix": "/api/v1/auth", "auth": False}, {"prefix": "/api/v1/users"}]
    config = parse(registry({"users": {"routes": routes}}))
    assert {r.prefix: r.options.auth for r in config.routes} == {"/api/v1/auth": False, "/api/v1/users": True}


def test_middleware_switched_off_at_a_route_is_absent_from_that_route_only() -> None:
    services = {
        "users": {"routes": [{"prefix": "/api/v1/users", "access_log": False}, {"prefix": "/api/v1/auth"}]},
        "orders": {"routes": [{"prefix": "/api/v1/orders"}]},
    }
    config = parse(registry(services))
    assert set(core(route(config, "/api/v1/users").middleware)) == {"request_id", "metrics"}
    assert set(core(route(config, "/api/v1/auth").middleware)) == BUILTIN_MIDDLEWARE
    assert set(core(route(config, "/api/v1/orders").middleware)) == BUILTIN_MIDDLEWARE
    assert set(core(config.edge_middleware)) == BUILTIN_MIDDLEWARE


@pytest.mark.parametrize(
    ("defaults", "service", "route_options", "route_expected", "edge_expected"),
    [
        ({"access_log": False}, {}, {}, {"request_id", "metrics"}, {"request_id", "metrics"}),
        ({"access_log": False}, {}, {"access_log": True}, BUILTIN_MIDDLEWARE, {"request_id", "metrics"}),
        ({"access_log": False}, {"access_log": {}}, {}, BUILTIN_MIDDLEWARE, {"request_id", "metrics"}),
        ({}, {"metrics": False}, {}, {"request_id", "access_log"}, BUILTIN_MIDDLEWARE),
        ({"request_id": False, "metrics": False, "access_log": False}, {}, {}, set(), set()),
    ],
    ids=["off-in-defaults", "re-enabled-at-route", "re-enabled-by-mapping", "off-at-service", "all-off"],
)
def test_middleware_switches_cascade(
    defaults: dict[str, Any],
    service: dict[str, Any],
    route_options: dict[str, Any],
    route_expected: set[str],
    edge_expected: set[str],
) -> None:
    config = parse(registry(one_route(service, **route_options), defaults=defaults))
    assert set(core(config.routes[0].middleware)) == route_expected
    assert set(config.edge_middleware) == edge_expected


def test_middleware_config_merges_by_key_and_true_keeps_inherited_settings() -> None:
    services = {
        "users": {
            "request_id": {"header": "X-Trace-ID"},
            "routes": [
                {"prefix": "/api/v1/users", "request_id": {"trust_client": False}},
                {"prefix": "/api/v1/auth", "request_id": True},
            ],
        }
    }
    config = parse(registry(services, defaults={"request_id": {"prefix": "gw_"}}))
    users = route(config, "/api/v1/users").middleware["request_id"]
    auth = route(config, "/api/v1/auth").middleware["request_id"]
    assert isinstance(users, RequestIdConfig) and isinstance(auth, RequestIdConfig)
    assert (users.prefix, users.header, users.trust_client) == ("gw_", "X-Trace-ID", False)
    assert (auth.prefix, auth.header, auth.trust_client) == ("gw_", "X-Trace-ID", True)
    edge = config.edge_middleware["request_id"]
    assert isinstance(edge, RequestIdConfig)
    assert (edge.prefix, edge.header) == ("gw_", "X-Request-ID")


def test_prefix_trailing_slash_is_dropped() -> None:
    config = parse(registry({"users": {"routes": [{"prefix": "/api/v1/users/"}]}}))
    assert config.routes[0].prefix == "/api/v1/users"


def test_gateway_section_is_typed() -> None:
    gateway = {"admin_networks": ["10.0.0.0/8"], "trusted_proxies": ["192.168.0.1/32", "::1/128"]}
    config = parse(registry(gateway=gateway))
    assert [str(n) for n in config.gateway.admin_networks] == ["10.0.0.0/8"]
    assert [str(n) for n in config.gateway.trusted_proxies] == ["192.168.0.1/32", "::1/128"]


def test_repository_registry_has_the_spec_routes() -> None:
    config = load_registry(REPO_REGISTRY)
    spec = ["auth", "users", "products", "orders", "payments", "notifications", "broadcasts", "analytics", "ai"]
    assert sorted(r.prefix for r in config.routes) == sorted(f"/api/v1/{name}" for name in spec)
    assert [r.prefix for r in config.routes if not r.options.auth] == ["/api/v1/auth"]
    ports = {URL(url).port for service in config.services.values() for url in service.instances}
    assert ports == {3001, 3002, 3003, 3004, 3005, 3006, 3007, 8000}
    assert all(BUILTIN_MIDDLEWARE <= set(r.middleware) for r in config.routes)
    assert all(r.options.strip_prefix == "/api/v1" for r in config.routes)
    assert route(config, "/api/v1/payments").options.timeouts.read == 30.0
    assert route(config, "/api/v1/users").options.timeouts.read == 10.0


# --- refused files: one problem each ------------------------------------------------------------------------

ERROR_CASES: list[tuple[str, bytes, str, str]] = [
    ("invalid-yaml", b"version: 1\nservices:\n  a: b\n   c: d\n", "line 4, column 5", "invalid YAML"),
    ("unclosed-flow", b"version: 1\nservices: [\n", "line 3, column 1", "invalid YAML"),
    ("duplicate-top-key", b"version: 1\nversion: 1\n", "line 2, column 1", "invalid YAML: duplicate key 'version'"),
    (
        "duplicate-nested-key",
        b"version: 1\nservices:\n  users:\n    routes:\n      - prefix: /api/v1/a\n        prefix: /api/v1/b\n",
        "line 6, column 9",
        "duplicate key 'prefix'",
    ),
    ("top-level-list", b"- version: 1\n", "(top level)", "expected a mapping"),
    ("top-level-scalar", b"hello\n", "(top level)", "expected a mapping"),
    ("empty-file", b"", "(top level)", "expected a mapping"),
    ("version-2", registry(version=2), "version", "unsupported version 2"),
    ("version-missing", b"services: {users: {routes: [{prefix: /api/v1/users}]}}\n", "version", "Field required"),
    ("services-missing", b"version: 1\n", "services", "Field required"),
    ("services-empty", b"version: 1\nservices: {}\n", "services", "at least 1 item"),
    ("unknown-top-key", registry(servces={}), "servces", "unknown field"),
    ("routes-missing", registry({"users": {"instances": []}}), "services.users.routes", "Field required"),
    ("routes-empty", registry({"users": {"routes": []}}), "services.users.routes", "at least 1 item"),
    ("route-without-prefix", registry({"users": {"routes": [{"auth": False}]}}), "services.users.routes[0].prefix",
     "Field required"),
    ("service-name-upper", registry({"User_Svc": {"routes": [{"prefix": "/api/v1/u"}]}}), "services.User_Svc",
     "lowercase letters, digits and dashes"),
    ("service-name-dash-first", registry({"-users": {"routes": [{"prefix": "/api/v1/u"}]}}), "services.-users",
     "lowercase letters, digits and dashes"),
    ("unknown-option-defaults", registry(defaults={"rate_limt": 5}), "defaults.rate_limt", "unknown option (known: "),
    ("unknown-option-service", registry(one_route({"rate_limt": 5})), "services.users.rate_limt", "unknown option"),
    ("unknown-option-route", registry(one_route(rate_limt=5)), "services.users.routes[0].rate_limt", "unknown option"),
    ("bad-duration-defaults", registry(defaults={"timeouts": {"read": "soon"}}), "defaults.timeouts.read",
     "expected a duration such as 500ms, 10s or 1m, got 'soon'"),
    ("bad-duration-service", registry(one_route({"timeouts": {"connect": "10x"}})), "services.users.timeouts.connect",
     "got '10x'"),
    ("bad-duration-route", registry(one_route(timeouts={"total": "-1s"})), "services.users.routes[0].timeouts.total",
     "got '-1s'"),
    ("zero-connect", registry(one_route(timeouts={"connect": 0})), "services.users.routes[0].timeouts.connect",
     "greater than 0"),
    ("unknown-timeout-field", registry(one_route(timeouts={"conect": "1s"})),
     "services.users.routes[0].timeouts.conect", "unknown field"),
    ("timeouts-null", registry(one_route(timeouts=None)), "services.users.routes[0].timeouts", "needs a value"),
    ("bad-auth", registry(one_route(auth="maybe")), "services.users.routes[0].auth", "valid boolean"),
    ("bad-size", registry(one_route(max_body_size="10XB")), "services.users.routes[0].max_body_size",
     "expected a size"),
    ("bad-health", registry({"users": {"health": {"interval": "often"}, "routes": [{"prefix": "/api/v1/u"}]}}),
     "services.users.health.interval", "expected a duration"),
    ("instance-ftp", with_instances("ftp://h:21"),
     "services.users.instances[0]", "expected http(s)://host:port, got 'ftp://h:21'"),
    ("instance-no-host", with_instances("http://"),
     "services.users.instances[0]", "expected http(s)://host:port"),
    ("instance-no-scheme", with_instances("h:3001"),
     "services.users.instances[0]", "expected http(s)://host:port"),
    ("instance-query", with_instances("http://h:1/?a=1"),
     "services.users.instances[0]", "no query, fragment or credentials"),
    ("instance-fragment", with_instances("http://h:1#x"),
     "services.users.instances[0]", "no query, fragment or credentials"),
    ("instance-credentials", with_instances("http://u:p@h:1"),
     "services.users.instances[0]", "no query, fragment or credentials"),
    ("instance-bad-port", with_instances("http://h:99999"),
     "services.users.instances[0]", "not a URL"),
    ("instance-duplicate",
     with_instances("http://h:1", "http://a:2", "http://h:1/"),
     "services.users.instances[2]", "duplicate instance http://h:1"),
    ("prefix-duplicate-across-services",
     registry({"a": {"routes": [{"prefix": "/api/v1/u"}]}, "b": {"routes": [{"prefix": "/api/v1/u/"}]}}),
     "services.b.routes[0].prefix", "'/api/v1/u' is already routed to a"),
    ("prefix-duplicate-in-service", registry({"a": {"routes": [{"prefix": "/api/v1/u"}, {"prefix": "/api/v1/u"}]}}),
     "services.a.routes[1].prefix", "already routed to a"),
    ("reserved-health", registry({"a": {"routes": [{"prefix": "/api/v1/health"}]}}), "services.a.routes[0].prefix",
     "'/api/v1/health' is reserved for the gateway's own endpoints"),
    ("reserved-health-below", registry({"a": {"routes": [{"prefix": "/api/v1/health/deep"}]}}),
     "services.a.routes[0].prefix", "reserved"),
    ("reserved-metrics", registry({"a": {"routes": [{"prefix": "/metrics", "strip_prefix": ""}]}}),
     "services.a.routes[0].prefix", "'/metrics' is reserved"),
    ("reserved-gateway", registry({"a": {"routes": [{"prefix": "/api/v1/gateway"}]}}), "services.a.routes[0].prefix",
     "reserved"),
    ("reserved-gateway-below", registry({"a": {"routes": [{"prefix": "/api/v1/gateway/x"}]}}),
     "services.a.routes[0].prefix", "'/api/v1/gateway/x' is reserved"),
    ("prefix-root", registry({"a": {"routes": [{"prefix": "/", "strip_prefix": ""}]}}), "services.a.routes[0].prefix",
     "a route needs a prefix below /"),
    ("prefix-relative", registry({"a": {"routes": [{"prefix": "users"}]}}), "services.a.routes[0].prefix",
     "must be a path like /api/v1/users"),
    ("prefix-space", registry({"a": {"routes": [{"prefix": "/a b"}]}}), "services.a.routes[0].prefix",
     "must be a path"),
    ("prefix-dot-dot", registry({"a": {"routes": [{"prefix": "/api/v1/../x"}]}}), "services.a.routes[0].prefix",
     "must not contain . or .. segments"),
    ("strip-not-leading", registry({"a": {"routes": [{"prefix": "/api/v1x/u"}]}}), "services.a.routes[0].strip_prefix",
     "'/api/v1' is not a leading part of prefix '/api/v1x/u'"),
    ("strip-longer", registry({"a": {"routes": [{"prefix": "/api/v1/u", "strip_prefix": "/api/v1/u/x"}]}}),
     "services.a.routes[0].strip_prefix", "not a leading part"),
    ("strip-mid-segment", registry({"a": {"routes": [{"prefix": "/api/v1/users", "strip_prefix": "/api/v1/us"}]}}),
     "services.a.routes[0].strip_prefix", "not a leading part"),
    ("strip-not-a-path", registry(one_route(strip_prefix="api v1")), "services.users.routes[0].strip_prefix",
     "must be a path"),
    ("middleware-bad-setting", registry(one_route(request_id={"prefix": "bad prefix!"})),
     "services.users.routes[0].request_id.prefix", "should match pattern"),
    ("middleware-unknown-setting", registry(one_route(access_log={"nope": 1})),
     "services.users.routes[0].access_log.nope", "unknown field"),
    ("middleware-not-a-mapping", registry(one_route(request_id="yes please")),
     "services.users.routes[0].request_id", "expected a mapping of settings, true or false"),
    ("middleware-null", registry(one_route(metrics=None)), "services.users.routes[0].metrics", "needs a value"),
    ("middleware-bad-in-defaults", registry(defaults={"request_id": {"header": "X Bad"}}),
     "defaults.request_id.header", "should match pattern"),
    ("plugin-missing-module", registry(plugins=["no_such_module_xyz:Thing"]), "plugins",
     "cannot import 'no_such_module_xyz'"),
    ("jwt-off-on-protected-route", registry(one_route(jwt=False)), "services.users.routes[0].jwt",
     "false switches off the token check, but this route has auth: true and would be open to anyone"),
    ("jwt-off-at-service", registry(one_route({"jwt": False})), "services.users.jwt",
     "but services.users.routes[0] (/api/v1/users) has auth: true"),
    ("jwt-off-in-defaults", registry(one_route(), defaults={"jwt": False}), "defaults.jwt",
     "but services.users.routes[0] (/api/v1/users) has auth: true"),
    ("jwt-off-in-defaults-auth-on-at-route", registry(one_route(auth=True), defaults={"jwt": False, "auth": False}),
     "defaults.jwt", "write auth: false to make a route public"),
    ("jwt-off-at-route-auth-on-at-service", registry(one_route({"auth": True}, jwt=False), defaults={"auth": False}),
     "services.users.routes[0].jwt", "this route has auth: true"),
]


@pytest.mark.parametrize(
    ("data", "path", "reason"), [case[1:] for case in ERROR_CASES], ids=[case[0] for case in ERROR_CASES]
)
def test_refused_file_names_field_and_reason(data: bytes, path: str, reason: str) -> None:
    problems = problems_of(data)
    assert len(problems) == 1, problems
    assert_problem(problems[0], path, reason)


# --- refused files: several problems, each reported once ------------------------------------------------------


@pytest.mark.parametrize("field", ["admin_networks", "trusted_proxies"], ids=["admin-networks", "trusted-proxies"])
def test_bad_network_is_one_problem_at_its_index(field: str) -> None:
    problems = problems_of(registry(gateway={field: ["10.0.0.0/8", "10.0.0.0/33"]}))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"gateway.{field}[1]: ")


def test_bad_duration_in_service_is_reported_once_not_per_route() -> None:
    services = {"users": {"timeouts": {"read": "soon"}, "routes": [{"prefix": "/api/v1/a"}, {"prefix": "/api/v1/b"}]}}
    assert problems_of(registry(services)) == (
        "services.users.timeouts.read: expected a duration such as 500ms, 10s or 1m, got 'soon'",
    )


def test_bad_duration_in_defaults_is_reported_once_across_services() -> None:
    services = {
        "a": {"routes": [{"prefix": "/api/v1/a"}, {"prefix": "/api/v1/b"}]},
        "b": {"routes": [{"prefix": "/api/v1/c"}]},
    }
    problems = problems_of(registry(services, defaults={"timeouts": {"read": "soon"}}))
    assert len(problems) == 1
    assert_problem(problems[0], "defaults.timeouts.read", "got 'soon'")


def test_bad_value_overridden_below_is_still_reported_where_written() -> None:
    problems = problems_of(registry(one_route(timeouts={"read": "2s"}), defaults={"timeouts": {"read": "soon"}}))
    assert len(problems) == 1
    assert_problem(problems[0], "defaults.timeouts.read", "got 'soon'")


@pytest.mark.parametrize(
    ("defaults", "route_options", "path"),
    [
        ({"timeouts": {"read": "soon"}}, {"timeouts": {"connect": "2s"}}, "defaults.timeouts.read"),
        (
            {"request_id": {"prefix": "bad prefix!"}},
            {"request_id": {"trust_client": False}},
            "defaults.request_id.prefix",
        ),
    ],
    ids=["timeouts", "middleware-config"],
)
def test_bad_inherited_value_is_not_repeated_where_a_sibling_key_is_set(
    defaults: dict[str, Any], route_options: dict[str, Any], path: str
) -> None:
    problems = problems_of(registry(one_route(**route_options), defaults=defaults))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: ")


def test_several_problems_are_reported_together_in_file_order() -> None:
    services = {
        "users": {
            "instances": ["ftp://x"],
            "routes": [{"prefix": "/api/v1/health"}, {"prefix": "/api/v1/u", "timeouts": {"read": "soon"}}],
        },
        "Bad_Name": {"rate_limt": 1, "routes": [{"prefix": "/api/v1/u"}]},
    }
    with pytest.raises(ConfigError) as caught:
        parse(registry(services, defaults={"rate_limt": 1}))
    problems = caught.value.problems
    expected = [
        ("defaults.rate_limt", "unknown option"),
        ("services.users.routes[0].prefix", "reserved"),
        ("services.users.routes[1].timeouts.read", "got 'soon'"),
        ("services.users.instances[0]", "expected http(s)://host:port"),
        ("services.Bad_Name", "lowercase letters"),
        ("services.Bad_Name.rate_limt", "unknown option"),
        ("services.Bad_Name.routes[0].prefix", "already routed to users"),
    ]
    assert len(problems) == len(expected), problems
    for problem, (path, reason) in zip(problems, expected):
        assert_problem(problem, path, reason)
    assert str(caught.value).startswith(f"{SOURCE}: {len(expected)} problems\n  - defaults.rate_limt: ")


def test_jwt_off_above_several_protected_routes_names_each_of_them() -> None:
    services = {
        "users": {
            "jwt": False,
            "routes": [{"prefix": "/api/v1/auth", "auth": False}, {"prefix": "/api/v1/a"}, {"prefix": "/api/v1/b"}],
        }
    }
    problems = problems_of(registry(services))
    assert len(problems) == 2, problems
    assert_problem(problems[0], "services.users.jwt", "services.users.routes[1] (/api/v1/a) has auth: true")
    assert_problem(problems[1], "services.users.jwt", "services.users.routes[2] (/api/v1/b) has auth: true")


@pytest.mark.parametrize(
    ("defaults", "service_options", "route_options", "auth", "checked"),
    [
        ({}, {}, {"auth": False, "jwt": False}, False, False),
        ({"auth": False, "jwt": False}, {}, {}, False, False),
        ({"jwt": False}, {"auth": False}, {}, False, False),
        ({"jwt": False}, {}, {"jwt": True}, True, True),
        ({}, {"jwt": False}, {"jwt": {"roles": ["admin"]}}, True, True),
    ],
    ids=["both-off-at-route", "both-off-in-defaults", "auth-off-below-jwt-off", "jwt-back-on-at-route",
         "jwt-mapping-at-route"],
)
def test_jwt_off_is_accepted_where_no_route_requires_auth(
    defaults: dict[str, Any], service_options: dict[str, Any], route_options: dict[str, Any], auth: bool, checked: bool
) -> None:
    (only,) = parse(registry(one_route(service_options, **route_options), defaults=defaults)).routes
    assert only.options.auth is auth
    assert ("jwt" in only.middleware) is checked


def test_load_registry_names_an_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_registry(missing)
    assert caught.value.source == str(missing)
    assert caught.value.problems[0].startswith("cannot read the file: ")


def test_an_unhashable_yaml_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"line 2, column 3: invalid YAML: a mapping key must be a plain value"):
        parse_registry(b"version: 1\n? [a, b]\n: 1\nservices: {}\n", "r.yaml")
