"""The core middleware the registry and catalogue tests are about, and a filter that hides the others.

The resilience chain (jwt, rate limit, retry, breaker, ...) adds built-ins over time; tests of the
cascade and of plugin ordering look only at the core three and at their own plugins.
"""
from __future__ import annotations

from collections.abc import Iterable

from gateway.middleware import load_catalogue

CORE = frozenset({"request_id", "access_log", "metrics"})
OTHER_BUILTINS = frozenset(load_catalogue()) - CORE
DEFAULT_ON = frozenset(name for name, cls in load_catalogue().items() if cls.ENABLED_BY_DEFAULT)


def core(names: Iterable[str]) -> list[str]:
    """The names in order, without the built-ins outside the core (plugins stay)."""
    return [name for name in names if name not in OTHER_BUILTINS]


def all_off() -> dict[str, bool]:
    """Registry options that switch off every built-in enabled by default."""
    return {name: False for name in DEFAULT_ON}
