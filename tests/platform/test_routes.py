"""`kadai routes`: the route table of a registry, as a table (gateway/route_listing.py) and as the command."""
from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.loader import load_registry
from gateway.route_listing import HEADINGS, RouteRow, render, render_table, route_rows
from tests.process.helpers import clean_env, run_kadai
from tests.support import REPO, service, write_registry

SPEC_CHAIN = ("request_id", "metrics", "access_log", "jwt", "rate_limit", "retry", "breaker")
SPEC_ROUTES = [
    ("/api/v1/auth", "user-service", "http://127.0.0.1:3001", "no"),
    ("/api/v1/users", "user-service", "http://127.0.0.1:3001", "yes"),
    ("/api/v1/products", "product-service", "http://127.0.0.1:3002", "yes"),
    ("/api/v1/orders", "order-service", "http://127.0.0.1:3003", "yes"),
    ("/api/v1/payments", "payment-service", "http://127.0.0.1:3004", "yes"),
    ("/api/v1/notifications", "notification-service", "http://127.0.0.1:3005", "yes"),
    ("/api/v1/broadcasts", "broadcast-service", "http://127.0.0.1:3006", "yes"),
    ("/api/v1/analytics", "analytics-service", "http://127.0.0.1:3007", "yes"),
    ("/api/v1/ai", "ai-service", "http://127.0.0.1:8000", "yes"),
]


def test_rows_of_the_shipped_registry_follow_the_spec_and_the_chain_order() -> None:
    rows = route_rows(load_registry(REPO / "registry.yaml"))

    assert [(row.prefix, row.service, row.instances[0], "yes" if row.auth else "no") for row in rows] == SPEC_ROUTES
    cached = ("/api/v1/ai",)  # computed answers: the shipped registry caches them (graceful degradation)
    assert {row.middleware for row in rows if row.prefix not in cached} == {SPEC_CHAIN}
    assert {row.middleware for row in rows if row.prefix in cached} == {
        ("request_id", "metrics", "access_log", "jwt", "rate_limit", "cache", "retry", "breaker")
    }


def test_the_chain_lists_what_a_route_switches_on_or_off(tmp_path: Path) -> None:
    registry = write_registry(
        tmp_path / "registry.yaml",
        {
            "plain": service(["http://127.0.0.1:1"], {"prefix": "/api/v1/plain", "retry": False, "breaker": False}),
            "cached": service(
                ["http://127.0.0.1:2"], {"prefix": "/api/v1/cached", "cache": {"ttl": "5s"}, "rate_limit": {}}
            ),
        },
    )

    chains = {row.prefix: row.middleware for row in route_rows(load_registry(registry))}

    assert chains["/api/v1/plain"] == ("request_id", "metrics", "access_log", "jwt")
    assert chains["/api/v1/cached"] == (
        "request_id", "metrics", "access_log", "jwt", "rate_limit", "cache", "retry", "breaker"
    )


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (
            [RouteRow("/a", "svc", ("http://h:1",), True, ("request_id", "jwt"))],
            ["/a      svc      http://h:1  yes   request_id > jwt"],
        ),
        (
            [RouteRow("/api/v1/long", "s", ("http://h:1", "http://host:22"), False, ())],
            ["/api/v1/long  s        http://h:1      no    (none)", "                       http://host:22"],
        ),
        (
            [RouteRow("/x", "nobody", (), True, ("breaker",))],
            ["/x      nobody   (none)     yes   breaker"],
        ),
    ],
    ids=["one-instance", "two-instances-no-middleware", "no-instances"],
)
def test_the_table_aligns_columns_and_gives_each_extra_instance_a_line(
    rows: list[RouteRow], expected: list[str]
) -> None:
    header, *lines = render_table(rows).splitlines()

    assert header.split("  ")[0] == HEADINGS[0]
    assert header.rstrip().endswith(HEADINGS[-1])
    assert lines == expected


def test_render_adds_the_gateway_endpoints_chain_and_a_summary() -> None:
    text = render(load_registry(REPO / "registry.yaml"))

    assert "gateway endpoints (/api/v1/health, /api/docs, /metrics ...): request_id > metrics > access_log" in text
    assert text.endswith("9 routes to 8 services from " + str(REPO / "registry.yaml"))


@pytest.mark.slow
def test_the_command_prints_the_table_of_kadai_registry(tmp_path: Path) -> None:
    registry = write_registry(tmp_path / "mine.yaml", {"things": service(["http://127.0.0.1:7"], "/api/v1/things")})

    result = run_kadai(["routes"], env=clean_env(KADAI_REGISTRY=str(registry)))

    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split() == ["PREFIX", "SERVICE", "INSTANCES", "AUTH", "MIDDLEWARE", "(outermost", "first)"]
    chain = "request_id > metrics > access_log > jwt > retry > breaker"  # no rate_limit: not in the file's defaults
    assert row.split(maxsplit=4) == ["/api/v1/things", "things", "http://127.0.0.1:7", "no", chain]


@pytest.mark.slow
def test_the_command_reports_an_invalid_registry(tmp_path: Path) -> None:
    registry = tmp_path / "broken.yaml"
    registry.write_text("version: 1\nservices: {x: {instances: [], routes: [{prefix: nope}]}}\n")

    result = run_kadai(["routes", "--registry", str(registry)])

    assert result.returncode == 1
    assert str(registry) in result.stderr
    assert result.stdout == ""
