"""Fixtures of the browser tests: Debian's Chromium (CHROMIUM_PATH, default /usr/bin/chromium) driven by
Playwright. Playwright's own browser downloads are never used; ops/test installs the chromium package.

A machine without Chromium or Playwright fails these tests under CI (CI=true) and skips them loudly
elsewhere, like the Redis and RabbitMQ tests.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Browser

DEFAULT_CHROMIUM = "/usr/bin/chromium"


def chromium_path() -> str:
    return os.environ.get("CHROMIUM_PATH", DEFAULT_CHROMIUM)


def _missing(message: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(f"MISSING BACKEND: {message}")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable; fails under CI and skips loudly elsewhere when it or Playwright is missing."""
    path = chromium_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)) and shutil.which(path) is None:
        _missing(f"Chromium is not installed at {path}: run the suite with ops/test, which installs it "
                 "(apt-get install chromium), or point CHROMIUM_PATH at one")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _missing("Playwright is not installed: pip install -e '.[dev]' (ops/test does)")
    return path


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    """A headless Chromium for one test."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield launched
        finally:
            await launched.close()
