"""Prometheus's own checker on our Prometheus files: the scrape config, the alert rules and their unit tests.

promtool comes with Debian's prometheus package (ops/test installs it); without it these tests fail under
CI and are skipped loudly elsewhere, like the tests that need Redis or RabbitMQ.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS = Path(__file__).resolve().parents[2] / "ops" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed: run the suite with ops/test (it installs Debian's prometheus package)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(f"MISSING BACKEND: {message}")
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ],
    ids=["config", "rules", "rule-unit-tests"],
)
def test_promtool_accepts(promtool: str, command: list[str]) -> None:
    # check config reads the rule files it names, relative to the config's directory.
    result = subprocess.run([promtool, *command], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"promtool {' '.join(command)}:\n{result.stdout}\n{result.stderr}"
