"""Helpers shared by the test suite: loopback upstreams, registry files, gateway processes."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ops.bench.procs import bindable, free_port  # ports below the ephemeral range: see free_port

REPO = Path(__file__).resolve().parent.parent


def write_registry(path: Path, services: Mapping[str, Any], **top: Any) -> Path:
    """Write a registry file: services is the `services:` mapping; top adds defaults/gateway/plugins.

    Routes need no token (`defaults: {auth: false}`) unless `defaults`, a service or a route sets `auth`:
    most tests are about something else, and the JWT tests opt in."""
    defaults = {"auth": False, **(top.pop("defaults", None) or {})}
    document: dict[str, Any] = {"version": 1, **top, "defaults": defaults, "services": dict(services)}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def service(instances: list[str], *routes: str | dict[str, Any], **options: Any) -> dict[str, Any]:
    """A service entry: service(["http://127.0.0.1:1234"], "/api/v1/users", {"prefix": "/api/v1/x", ...}).

    Health polling is off unless `health=` is given: background polls would land in the upstreams that
    tests count requests on, and the poller has tests of its own."""
    return {
        "instances": instances,
        "health": {"enabled": False},
        **options,
        "routes": [{"prefix": r} if isinstance(r, str) else r for r in routes],
    }


@dataclass
class GatewayProcess:
    """A real `python -m gateway gateway` process on a loopback port."""

    registry: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self, *, new_session: bool = False) -> GatewayProcess:
        """Start the process without waiting for its port; new_session gives it its own process group."""
        env = {**os.environ, "LOG_LEVEL": "INFO", **self.env}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.log_path = self.registry.with_suffix(f".{self.port}.log")
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "gateway", "--registry", str(self.registry),
                 "--host", "127.0.0.1", "--port", str(self.port), *self.args],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session,
            )
        return self

    def start(self, wait: float = 15.0) -> GatewayProcess:
        """Start the process and wait until it listens."""
        self.launch()
        assert self.proc is not None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gateway did not listen within {wait}s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rss_peak_kib(self) -> int:
        """Peak resident memory (VmHWM) of the process, in KiB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise RuntimeError("VmHWM not found")
