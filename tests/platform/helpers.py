"""Helpers of the `kadai up` tests: the repository's registry moved to free ports, and a real `kadai up`
process whose start-up text (stderr) and log lines (stdout) the tests read."""
from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services import catalog
from tests.process.helpers import clean_env, json_lines
from tests.support import REPO, free_port

READY = "Kadai platform is up"


def registry_on_free_ports(path: Path) -> tuple[Path, dict[str, int]]:
    """registry.yaml as shipped, every instance moved to a free loopback port; returns (file, service -> port)."""
    document: dict[str, Any] = yaml.safe_load((REPO / "registry.yaml").read_text())
    ports = {}
    for name, spec in document["services"].items():
        ports[name] = free_port()
        spec["instances"] = [f"http://127.0.0.1:{ports[name]}"]
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path, ports


def implemented(name: str) -> bool:
    """Whether a catalogued service's module declares its SERVICE (what `kadai up` can start)."""
    try:
        module = importlib.import_module(catalog.entry(name).module)
    except ModuleNotFoundError:
        return False
    return hasattr(module, "SERVICE")


def platform_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """A clean environment with fast settings: a data dir and an events prefix of the test's own."""
    return clean_env(
        KADAI_DATA_DIR=str(tmp_path / "data"),
        KADAI_EVENTS_PREFIX="test-up-" + os.urandom(6).hex(),
        KADAI_EVENTS_RETRY_DELAY="200ms",
        KADAI_DRAIN_TIMEOUT="5s",
        USER_SCRYPT_COST="10",
        PYTHONUNBUFFERED="1",
        **overrides,
    )


@dataclass
class UpProcess:
    """`python -m gateway up` on a registry, its output in files beside it."""

    registry: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stdout_path(self) -> Path:
        return self.registry.with_suffix(f".{self.port}.out")

    @property
    def stderr_path(self) -> Path:
        return self.registry.with_suffix(f".{self.port}.err")

    def start(self) -> UpProcess:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "up", "--registry", str(self.registry),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=REPO, env=self.env, stdout=out, stderr=err,
            )
        return self

    def banner(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def logs(self) -> list[dict[str, Any]]:
        return json_lines(self.stdout_path.read_text(errors="replace")) if self.stdout_path.exists() else []

    def describe(self) -> str:
        out = self.stdout_path.read_text(errors="replace")[-4000:] if self.stdout_path.exists() else ""
        return f"stderr:\n{self.banner()}\nstdout (end):\n{out}"

    async def wait_ready(self, timeout: float = 30.0) -> str:
        """The start-up text, once printed; fails at once if the process exits instead."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while READY not in (text := self.banner()):
            if self.proc.poll() is not None:
                raise AssertionError(f"kadai up exited with {self.proc.returncode}:\n{self.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"kadai up not ready after {timeout}s:\n{self.describe()}")
            await asyncio.sleep(0.05)
        return text

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        return await self.wait_exit(timeout)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"kadai up still running {timeout}s later:\n{self.describe()}")
            await asyncio.sleep(0.02)
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
