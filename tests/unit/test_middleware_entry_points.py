"""Middleware from installed packages: the `kadai.middleware` entry-point group."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config.loader import parse_registry
from gateway.middleware import PluginError, load_catalogue

_MODULE = '''
from typing import ClassVar
from gateway.middleware import Middleware, MiddlewareConfig

class DemoConfig(MiddlewareConfig):
    greeting: str = "hi"

class DemoMiddleware(Middleware):
    NAME: ClassVar[str] = "demo"
    PRIORITY: ClassVar[int] = 100
    Config: ClassVar[type[MiddlewareConfig]] = DemoConfig

    async def __call__(self, exchange, call_next):
        return await call_next(exchange)
'''


def _install(site: Path, package: str, entry: str) -> None:
    """Lay out an installed distribution (package + dist-info with entry_points.txt) under site."""
    (site / package).mkdir()
    (site / package / "__init__.py").write_text(textwrap.dedent(_MODULE))
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[kadai.middleware]\n{entry}\n")


def test_an_installed_package_adds_its_middleware(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, "kadai_demo_plugin", "demo = kadai_demo_plugin:DemoMiddleware")
    monkeypatch.syspath_prepend(str(tmp_path))
    catalogue = load_catalogue()
    assert catalogue["demo"].__module__ == "kadai_demo_plugin"
    registry = parse_registry(
        b"version: 1\nservices:\n  s:\n    routes: [{prefix: /api/v1/s, demo: {greeting: hello}}]\n"
    )
    assert registry.routes[0].middleware["demo"].greeting == "hello"  # type: ignore[attr-defined]


def test_a_broken_entry_point_is_a_plugin_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(tmp_path, "kadai_broken_plugin", "broken = kadai_broken_plugin:NoSuchClass")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="entry point 'broken'"):
        load_catalogue()
