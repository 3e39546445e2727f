"""Fixtures of the `kadai up` tests: real processes on free ports, stopped (killed if need be) at teardown."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.platform.helpers import UpProcess


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Callable[[Path, dict[str, str]], UpProcess]]:
    started: list[UpProcess] = []

    def start(registry: Path, env: dict[str, str]) -> UpProcess:
        process = UpProcess(registry, env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
