"""Unit tests of gateway.middleware: the catalogue, plugin imports and chain composition."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, cast

import pytest
import yaml

from gateway.config.errors import ConfigError
from gateway.config.loader import parse_registry
from gateway.config.settings import Settings
from gateway.exchange import Exchange, Reply
from gateway.middleware import (
    BuildContext,
    Handler,
    Middleware,
    MiddlewareConfig,
    PluginError,
    compile_chain,
    import_middleware,
    load_catalogue,
)
from gateway.middleware import BUILTIN
from gateway.middleware.access_log import AccessLogMiddleware
from gateway.middleware.metrics import MetricsMiddleware
from gateway.middleware.request_id import RequestIdMiddleware
from tests.middleware_names import CORE, all_off, core
from gateway.resources import Resources
from gateway.routing import build_table

HERE = __name__


class RecorderConfig(MiddlewareConfig):
    tag: str = "plugin"


class _Recorder(Middleware):
    """Appends "<tag> in" and "<tag> out" to exchange.log around the rest of the chain."""

    Config: ClassVar[type[MiddlewareConfig]] = RecorderConfig

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Reply:
        log: list[str] = cast(Any, exchange).log
        log.append(f"{self.NAME} in")
        reply = await call_next(exchange)
        log.append(f"{self.NAME} out")
        return reply


class OuterMiddleware(_Recorder):
    NAME: ClassVar[str] = "outer"
    PRIORITY: ClassVar[int] = 200


class InnerMiddleware(_Recorder):
    NAME: ClassVar[str] = "inner"
    PRIORITY: ClassVar[int] = 100


class SomeMiddleware(_Recorder):
    """A plugin the registry names by import path; off unless a route switches it on."""

    NAME: ClassVar[str] = "some_plugin"
    PRIORITY: ClassVar[int] = 9_800


class EdgePluginMiddleware(_Recorder):
    NAME: ClassVar[str] = "edge_plugin"
    PRIORITY: ClassVar[int] = 20_000
    ENABLED_BY_DEFAULT: ClassVar[bool] = True
    EDGE: ClassVar[bool] = True


class ClashingMiddleware(_Recorder):
    NAME: ClassVar[str] = "request_id"
    PRIORITY: ClassVar[int] = 1


class BadConfigMiddleware(_Recorder):
    NAME: ClassVar[str] = "bad_config"
    PRIORITY: ClassVar[int] = 1
    Config: ClassVar[Any] = dict


class NamelessMiddleware(_Recorder):
    PRIORITY: ClassVar[int] = 1


NOT_A_CLASS = OuterMiddleware.__call__


def context() -> BuildContext:
    return BuildContext("svc", "/api/v1/svc", Resources(settings=Settings()))


def fake_exchange() -> Exchange:
    return cast(Exchange, SimpleNamespace(log=[]))


def registry(plugins: list[str], route_options: dict[str, Any], defaults: dict[str, Any] | None = None) -> bytes:
    services = {
        "users": {
            "instances": ["http://127.0.0.1:3001"],
            "routes": [{"prefix": "/api/v1/users", **route_options}, {"prefix": "/api/v1/auth"}],
        }
    }
    document = {"version": 1, "plugins": plugins, "defaults": defaults or {}, "services": services}
    return yaml.safe_dump(document).encode()


def test_catalogue_has_the_core_builtins() -> None:
    catalogue = load_catalogue()
    assert {name: catalogue[name] for name in CORE} == {
        "request_id": RequestIdMiddleware,
        "access_log": AccessLogMiddleware,
        "metrics": MetricsMiddleware,
    }
    assert all(catalogue[name].ENABLED_BY_DEFAULT and catalogue[name].EDGE for name in CORE)
    assert len(catalogue) == len(BUILTIN)


def test_catalogue_adds_plugins_after_builtins() -> None:
    catalogue = load_catalogue([f"{HERE}:SomeMiddleware", f"{HERE}:SomeMiddleware"])
    assert core(catalogue) == ["request_id", "access_log", "metrics", "some_plugin"]
    assert list(catalogue)[-1] == "some_plugin"
    assert catalogue["some_plugin"] is SomeMiddleware


def test_import_middleware_returns_the_class() -> None:
    assert import_middleware("gateway.middleware.metrics:MetricsMiddleware") is MetricsMiddleware


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("gateway.middleware.metrics.MetricsMiddleware", "expected 'package.module:ClassName', got"),
        (":MetricsMiddleware", "expected 'package.module:ClassName'"),
        ("gateway.middleware.metrics:", "expected 'package.module:ClassName'"),
        ("", "expected 'package.module:ClassName'"),
        ("no_such_module_xyz.sub:Thing", "cannot import 'no_such_module_xyz.sub'"),
        (f"{HERE}:Missing", f"module '{HERE}' has no attribute 'Missing'"),
        ("json:loads", "json:loads is not a subclass of gateway.middleware.Middleware"),
        (f"{HERE}:NOT_A_CLASS", "is not a subclass of gateway.middleware.Middleware"),
        (f"{HERE}:RecorderConfig", "is not a subclass of gateway.middleware.Middleware"),
        (
            f"{HERE}:BadConfigMiddleware",
            "BadConfigMiddleware.Config is not a subclass of gateway.middleware.MiddlewareConfig",
        ),
        (f"{HERE}:NamelessMiddleware", "NamelessMiddleware does not define NAME"),
    ],
    ids=["dot-not-colon", "no-module", "no-class", "empty", "missing-module", "missing-attribute", "function",
         "method", "not-middleware-class", "config-not-middleware-config", "no-name"],
)
def test_import_middleware_errors(path: str, message: str) -> None:
    with pytest.raises(PluginError) as caught:
        import_middleware(path)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "source",
    ["raise RuntimeError('boom at import')\n", "def broken(:\n"],
    ids=["runtime-error", "syntax-error"],
)
def test_plugin_module_failing_at_import_is_a_plugin_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, source: str
) -> None:
    name = f"kadai_broken_plugin_{request.node.callspec.id.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=name):
        import_middleware(f"{name}:Thing")


def test_name_clash_is_a_plugin_error() -> None:
    with pytest.raises(PluginError) as caught:
        load_catalogue([f"{HERE}:ClashingMiddleware"])
    message = str(caught.value)
    assert f"{HERE}:ClashingMiddleware uses the name 'request_id'" in message
    assert "already taken by gateway.middleware.request_id" in message


def test_registry_reports_plugin_errors_under_plugins() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_registry(registry([f"{HERE}:ClashingMiddleware"], {}), "reg.yaml")
    (problem,) = caught.value.problems
    assert problem.startswith("plugins: ") and "already taken" in problem


async def terminal(exchange: Exchange) -> Reply:
    cast(Any, exchange).log.append("terminal")
    return Reply(204)


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ((), ["terminal"]),
        ((OuterMiddleware,), ["outer in", "terminal", "outer out"]),
        ((OuterMiddleware, InnerMiddleware), ["outer in", "inner in", "terminal", "inner out", "outer out"]),
        ((InnerMiddleware, OuterMiddleware), ["inner in", "outer in", "terminal", "outer out", "inner out"]),
    ],
    ids=["empty", "one", "first-is-outermost", "sequence-order-not-priority"],
)
async def test_compile_chain_nests_in_sequence_order(
    order: tuple[type[Middleware], ...], expected: list[str]
) -> None:
    ctx = context()
    chain = compile_chain([cls(RecorderConfig(), ctx) for cls in order], terminal)
    exchange = fake_exchange()
    reply = await chain(exchange)
    assert reply.status == 204
    assert cast(Any, exchange).log == expected


def test_compile_chain_without_middleware_is_the_terminal() -> None:
    assert compile_chain([], terminal) is terminal


def test_middleware_keeps_its_config_and_context() -> None:
    ctx = context()
    config = RecorderConfig(tag="x")
    middleware = OuterMiddleware(config, ctx)
    assert middleware.config is config and middleware.context is ctx


def test_plugin_name_is_unknown_without_the_plugin() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_registry(registry([], {"some_plugin": {"tag": "t"}}), "reg.yaml")
    (problem,) = caught.value.problems
    assert problem.startswith("services.users.routes[0].some_plugin: unknown option")


def test_plugin_name_becomes_a_valid_option_key() -> None:
    config = parse_registry(registry([f"{HERE}:SomeMiddleware"], {"some_plugin": {"tag": "t"}}), "reg.yaml")
    assert config.plugins == (f"{HERE}:SomeMiddleware",)
    assert config.middleware_classes["some_plugin"] is SomeMiddleware
    users, auth = config.routes
    assert users.middleware["some_plugin"] == RecorderConfig(tag="t")
    assert "some_plugin" not in auth.middleware
    assert "some_plugin" not in config.edge_middleware
    table = build_table(config, Resources(settings=Settings()), terminal, 1)
    assert core(table.routes["/api/v1/users"].middleware) == ["request_id", "some_plugin", "metrics", "access_log"]
    assert core(table.routes["/api/v1/auth"].middleware) == ["request_id", "metrics", "access_log"]


def test_plugin_config_is_validated_at_its_route() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_registry(registry([f"{HERE}:SomeMiddleware"], {"some_plugin": {"colour": "red"}}), "reg.yaml")
    assert caught.value.problems == ("services.users.routes[0].some_plugin.colour: unknown field",)


def test_enabled_by_default_edge_plugin_wraps_routes_and_edge() -> None:
    config = parse_registry(registry([f"{HERE}:EdgePluginMiddleware"], {}), "reg.yaml")
    assert all("edge_plugin" in route.middleware for route in config.routes)
    assert "edge_plugin" in config.edge_middleware
    table = build_table(config, Resources(settings=Settings()), terminal, 1)
    assert table.routes["/api/v1/auth"].middleware[0] == "edge_plugin"


async def test_edge_chain_runs_edge_middleware_then_the_exchange_terminal() -> None:
    builtins_off = {**all_off(), "auth": False}  # with jwt off, a route left at auth: true is refused
    config = parse_registry(registry([f"{HERE}:EdgePluginMiddleware"], {}, builtins_off), "reg.yaml")
    assert list(config.edge_middleware) == ["edge_plugin"]
    table = build_table(config, Resources(settings=Settings()), terminal, 1)
    exchange = cast(Exchange, SimpleNamespace(log=[], terminal=terminal))
    await table.edge_chain(exchange)
    assert cast(Any, exchange).log == ["edge_plugin in", "terminal", "edge_plugin out"]
