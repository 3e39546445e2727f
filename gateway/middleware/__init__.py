"""Middleware catalogue: the built-in middleware, those of installed packages, and those named by import path.

Third-party middleware is plugged in without touching gateway code, either by an entry point in the
``kadai.middleware`` group of its package, or by listing ``module:Class`` under ``plugins:`` in
registry.yaml.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points

from gateway.middleware.base import (
    BuildContext,
    Handler,
    Middleware,
    MiddlewareConfig,
    compile_chain,
)

__all__ = [
    "BUILTIN",
    "BuildContext",
    "Handler",
    "Middleware",
    "MiddlewareConfig",
    "PluginError",
    "compile_chain",
    "load_catalogue",
]

BUILTIN: tuple[str, ...] = (
    "gateway.middleware.request_id:RequestIdMiddleware",
    "gateway.middleware.access_log:AccessLogMiddleware",
    "gateway.middleware.metrics:MetricsMiddleware",
    "gateway.middleware.jwt_auth:JwtMiddleware",
    "gateway.middleware.rate_limit:RateLimitMiddleware",
    "gateway.middleware.cache:CacheMiddleware",
    "gateway.middleware.retry:RetryMiddleware",
    "gateway.middleware.breaker:BreakerMiddleware",
)
ENTRY_POINT_GROUP = "kadai.middleware"


class PluginError(Exception):
    """A middleware class could not be imported or does not honour the contract."""


def import_middleware(path: str) -> type[Middleware]:
    """Import ``package.module:ClassName`` and check it is a usable middleware class."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"expected 'package.module:ClassName', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(f"cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:  # a plugin broken at import time is a config problem, not a crash
        raise PluginError(f"importing {module_name!r} failed: {exc.__class__.__name__}: {exc}") from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise PluginError(f"module {module_name!r} has no attribute {attr!r}")
    return check_middleware_class(cls, path)


def check_middleware_class(cls: object, origin: str) -> type[Middleware]:
    if not (isinstance(cls, type) and issubclass(cls, Middleware)):
        raise PluginError(f"{origin} is not a subclass of gateway.middleware.Middleware")
    for attr in ("NAME", "PRIORITY", "Config"):
        if not hasattr(cls, attr):
            raise PluginError(f"{origin} does not define {attr}")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, MiddlewareConfig)):
        raise PluginError(f"{origin}.Config is not a subclass of gateway.middleware.MiddlewareConfig")
    return cls


def load_catalogue(plugins: Iterable[str] = ()) -> dict[str, type[Middleware]]:
    """Every middleware by NAME: built-ins, then entry points, then the registry's plugins."""
    catalogue: dict[str, type[Middleware]] = {}

    def add(cls: type[Middleware], origin: str) -> None:
        existing = catalogue.get(cls.NAME)
        if existing is not None and existing is not cls:
            raise PluginError(f"{origin} uses the name {cls.NAME!r}, already taken by {existing.__module__}")
        catalogue[cls.NAME] = cls

    for path in BUILTIN:
        add(import_middleware(path), path)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as exc:  # a broken third-party package must not look like our bug
            raise PluginError(f"entry point {entry.name!r} ({entry.value}) failed to load: {exc}") from exc
        add(check_middleware_class(loaded, f"entry point {entry.value}"), entry.value)
    for path in plugins:
        add(import_middleware(path), path)
    return catalogue
