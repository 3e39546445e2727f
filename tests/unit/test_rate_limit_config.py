"""Unit tests of the rate_limit settings: the tier schema, the cascade of tiers through the registry, and errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.errors import ConfigError
from gateway.config.loader import load_registry, parse_registry
from gateway.config.schema import RegistryConfig
from gateway.middleware.rate_limit import RateLimitConfig

SOURCE = "reg.yaml"
REPO_REGISTRY = Path(__file__).resolve().parents[2] / "registry.yaml"
SPEC = {"second": (10, 1000), "ten_seconds": (100, 10_000), "minute": (1000, 60_000)}


def parse(defaults: dict[str, Any], service: dict[str, Any], *routes: dict[str, Any]) -> RegistryConfig:
    """One service `users` with the given service options and routes (default: one route /api/v1/users)."""
    document = {
        "version": 1,
        "defaults": defaults,
        "services": {
            "users": {
                "instances": ["http://127.0.0.1:3001"],
                **service,
                "routes": list(routes) or [{"prefix": "/api/v1/users"}],
            }
        },
    }
    return parse_registry(yaml.safe_dump(document, sort_keys=False).encode(), SOURCE)


def tiers_of(config: RegistryConfig, prefix: str = "/api/v1/users") -> dict[str, tuple[int, int]] | None:
    """The route's tiers as {name: (limit, window_ms)}, or None when rate limiting is off there."""
    route = next(r for r in config.routes if r.prefix == prefix)
    settings = route.middleware.get("rate_limit")
    if settings is None:
        return None
    assert isinstance(settings, RateLimitConfig)
    return {tier.name: (tier.limit, tier.window_ms) for tier in settings.tiers()}


def problems(defaults: dict[str, Any], service: dict[str, Any], *routes: dict[str, Any]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        parse(defaults, service, *routes)
    return caught.value.problems


PAYMENTS = {"payments": {"limit": 10, "window": "1m"}}


@pytest.mark.parametrize(
    ("defaults", "service", "route", "expected"),
    [
        ({}, {}, {}, None),
        ({"rate_limit": True}, {}, {}, SPEC),
        ({"rate_limit": {}}, {}, {}, SPEC),
        ({"rate_limit": True}, {}, {"rate_limit": PAYMENTS}, {**SPEC, "payments": (10, 60_000)}),
        ({}, {}, {"rate_limit": PAYMENTS}, {**SPEC, "payments": (10, 60_000)}),
        (
            {"rate_limit": {"minute": {"limit": 600, "window": "1m"}}},
            {},
            {},
            {**SPEC, "minute": (600, 60_000)},
        ),
        (
            {"rate_limit": {"minute": {"limit": 600, "window": "1m"}}},
            {"rate_limit": {"minute": {"limit": 50, "window": "30s"}}},
            {"rate_limit": PAYMENTS},
            {**SPEC, "minute": (50, 30_000), "payments": (10, 60_000)},
        ),
        ({"rate_limit": True}, {"rate_limit": {"second": False}}, {}, {k: SPEC[k] for k in ("ten_seconds", "minute")}),
        ({"rate_limit": True}, {}, {"rate_limit": {"ten_seconds": None}}, {k: SPEC[k] for k in ("second", "minute")}),
        (
            {"rate_limit": True},
            {"rate_limit": {"second": False}},
            {"rate_limit": {"second": {"limit": 3, "window": "500ms"}}},
            {**SPEC, "second": (3, 500)},
        ),
        ({"rate_limit": True}, {"rate_limit": False}, {}, None),
        ({"rate_limit": {"minute": False}}, {"rate_limit": False}, {"rate_limit": True}, SPEC),
        ({"rate_limit": {"fail_open": False}}, {}, {"rate_limit": {"timeout": "5ms"}}, SPEC),
    ],
    ids=[
        "off-by-default", "true-gives-spec-tiers", "empty-mapping-gives-spec-tiers", "route-adds-a-tier",
        "route-only", "defaults-override-a-tier", "each-level-adds-or-replaces", "service-removes-with-false",
        "route-removes-with-null", "route-re-adds-a-removed-tier", "service-switches-off",
        "true-after-false-starts-from-code-defaults", "settings-do-not-touch-tiers",
    ],
)
def test_tiers_cascade_by_name(
    defaults: dict[str, Any],
    service: dict[str, Any],
    route: dict[str, Any],
    expected: dict[str, tuple[int, int]] | None,
) -> None:
    config = parse(defaults, service, {"prefix": "/api/v1/users", **route})
    assert tiers_of(config) == expected


def test_settings_cascade_by_key_next_to_the_tiers() -> None:
    config = parse(
        {"rate_limit": {"fail_open": False, "timeout": "50ms"}},
        {"rate_limit": {"backoff": "2s"}},
        {"prefix": "/api/v1/users", "rate_limit": {"timeout": "5ms"}},
    )
    settings = config.routes[0].middleware["rate_limit"]
    assert isinstance(settings, RateLimitConfig)
    assert (settings.fail_open, settings.timeout, settings.backoff, settings.backoff_max) == (False, 0.005, 2.0, 5.0)


def test_a_tier_is_written_whole() -> None:
    """A lower level replaces a tier's mapping, it does not merge into it: a missing window is an error."""
    found = problems({"rate_limit": True}, {}, {"prefix": "/api/v1/users", "rate_limit": {"minute": {"limit": 5}}})
    assert found == ("services.users.routes[0].rate_limit.minute.window: Field required",)


def test_tiers_are_ordered_shortest_window_first() -> None:
    config = parse({"rate_limit": {"hour": {"limit": 5000, "window": "1h"}, "burst": {"limit": 3, "window": "100ms"}}}, {})
    assert list(tiers_of(config) or {}) == ["burst", "second", "ten_seconds", "minute", "hour"]


@pytest.mark.parametrize(
    ("level", "rate_limit", "path", "reason"),
    [
        ("route", {"payments": {"limit": 0, "window": "1m"}}, "rate_limit.payments.limit", "greater than 0"),
        ("route", {"payments": {"limit": 10, "window": "soon"}}, "rate_limit.payments.window", "'soon'"),
        ("route", {"payments": {"limit": 10, "window": "0s"}}, "rate_limit.payments.window", "greater than or equal"),
        ("route", {"payments": {"limit": 10, "window": "2d"}}, "rate_limit.payments.window", "expected a duration"),
        ("route", {"payments": {"limit": 10, "window": "1m", "burst": 3}}, "rate_limit.payments.burst", "unknown field"),
        ("route", {"payments": True}, "rate_limit.payments", "a tier is a mapping {limit, window}"),
        ("service", {"timout": "5ms"}, "rate_limit.timout", "not a setting (timeout, fail_open"),
        ("service", {"Payments": {"limit": 1, "window": "1s"}}, "rate_limit", "tier name 'Payments'"),
        ("service", {"timeout": "10s"}, "rate_limit.timeout", "less than or equal to 5"),
        ("route", {"second": False, "ten_seconds": False, "minute": None}, "rate_limit", "every tier is removed"),
        ("route", {"backoff": "10s", "backoff_max": "1s"}, "rate_limit", "backoff_max must not be below backoff"),
    ],
    ids=[
        "zero-limit", "bad-window", "zero-window", "unknown-unit", "unknown-tier-field", "tier-true",
        "misspelt-setting", "bad-tier-name", "timeout-too-long", "no-tier-left", "backoff-order",
    ],
)
def test_bad_settings_name_the_level_and_field(level: str, rate_limit: dict[str, Any], path: str, reason: str) -> None:
    if level == "route":
        found = problems({"rate_limit": True}, {}, {"prefix": "/api/v1/users", "rate_limit": rate_limit})
        where = "services.users.routes[0]"
    else:
        found = problems({"rate_limit": True}, {"rate_limit": rate_limit})
        where = "services.users"
    assert len(found) == 1, found
    assert found[0].startswith(f"{where}.{path}: "), found
    assert reason in found[0], found


def test_an_error_in_defaults_is_reported_once_where_it_was_written() -> None:
    found = problems(
        {"rate_limit": {"payments": {"limit": -1, "window": "1m"}}},
        {},
        {"prefix": "/api/v1/users"},
        {"prefix": "/api/v1/auth", "rate_limit": {"second": False}},
    )
    assert found == ("defaults.rate_limit.payments.limit: Input should be greater than 0",)


def test_repository_registry_has_the_spec_tiers_and_the_payments_tier() -> None:
    config = load_registry(REPO_REGISTRY)
    for route in config.routes:
        expected = {**SPEC, "payments": (10, 60_000)} if route.prefix == "/api/v1/payments" else SPEC
        assert tiers_of(config, route.prefix) == expected, route.prefix
