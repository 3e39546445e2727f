"""Helpers for the real-process tests: bounded waits, process exits, JSON log lines, a clean environment."""
from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, GatewayProcess

# Variables the gateway reads: a developer's shell (or CI) must not change what these tests see.
GATEWAY_ENV_VARS = (
    "KADAI_ENV",
    "JWT_SECRET",
    "REDIS_URL",
    "AMQP_URL",
    "LOG_LEVEL",
    "KADAI_REGISTRY",
    "KADAI_DRAIN_TIMEOUT",
    "KADAI_RELOAD_INTERVAL",
    "PROMETHEUS_MULTIPROC_DIR",
)


def clean_env(**overrides: str) -> dict[str, str]:
    """os.environ without the gateway's variables, plus overrides."""
    env = {key: value for key, value in os.environ.items() if key not in GATEWAY_ENV_VARS}
    env.update(overrides)
    return env


def run_kadai(
    args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS` to completion and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_kadai_service(name: str, port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `kadai service NAME` on 127.0.0.1:port in the background, its output (stdout and stderr) in log_path."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "service", name, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def sigterm_and_wait(process: subprocess.Popen[bytes], log_path: Path, timeout: float = 15.0) -> int:
    """SIGTERM a process started by start_kadai_service and return its exit status; fails the test, with
    the process's log, when it is still running after `timeout`."""
    process.send_signal(signal.SIGTERM)
    try:
        return await asyncio.to_thread(process.wait, timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {timeout:.0f} s after SIGTERM; its log:\n{log_path.read_text()}")


async def wait_until(
    condition: Callable[[], bool] | Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> float:
    """Poll condition until it holds; return the seconds it took. Fails the test after timeout."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def wait_exit(process: GatewayProcess, timeout: float) -> tuple[int, float]:
    """Wait (without blocking the event loop) for the process to exit; return (exit code, seconds waited)."""
    assert process.proc is not None
    started = time.monotonic()
    deadline = started + timeout
    while (code := process.proc.poll()) is None:
        if time.monotonic() >= deadline:
            raise AssertionError(f"gateway still running {timeout}s later:\n{process.output()[-3000:]}")
        await asyncio.sleep(0.02)
    return code, time.monotonic() - started


async def connect_refused(port: int, host: str = "127.0.0.1") -> bool:
    """True if a new TCP connection to host:port is refused; False if it was accepted."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except (ConnectionRefusedError, ConnectionResetError):
        # Reset: the connection was still in the backlog when the listener closed, so it is gone too.
        return True
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass
    return False


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among the lines of a gateway's output (other lines are skipped)."""
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def pid_alive(pid: int) -> bool:
    """True if pid is a running (not zombie) process."""
    status = Path(f"/proc/{pid}/status")
    try:
        text = status.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("State:"):
            return "Z" not in line.split()[1]
    return True


def spawn(process: GatewayProcess, *, new_session: bool = False) -> GatewayProcess:
    """Start the gateway of `process` WITHOUT waiting for its port (GatewayProcess.start waits for it).

    new_session puts it in a process group of its own, whose id is its pid (for os.killpg).
    """
    process.launch(new_session=new_session)
    return process


async def wait_listening(process: GatewayProcess, timeout: float = 15.0) -> None:
    """Wait until the gateway accepts connections; fail at once if it exits instead."""
    assert process.proc is not None

    async def listening() -> bool:
        assert process.proc is not None
        if process.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {process.proc.returncode}:\n{process.output()[-3000:]}")
        return not await connect_refused(process.port)

    await wait_until(listening, timeout, f"the gateway to listen on {process.port}")
