"""`kadai service` and `kadai events dlq` as a user runs them."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.catalog import CATALOG
from tests.process.helpers import clean_env, json_lines, run_kadai, sigterm_and_wait, start_kadai_service, wait_until
from tests.support import REPO, bindable, free_port


@pytest.mark.slow
async def test_kadai_service_runs_user_service_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(
        AMQP_URL="memory://", KADAI_DATA_DIR=str(tmp_path / "data"), USER_SCRYPT_COST="10", PYTHONUNBUFFERED="1"
    )
    log_path = tmp_path / "user-service.log"
    process = start_kadai_service("user", port, env, log_path)
    try:
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                assert process.poll() is None, log_path.read_text()
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(healthy, 15, "user-service to answer")
            async with session.post(
                f"http://127.0.0.1:{port}/auth/register",
                json={"email": "cli@example.com", "password": "a fine password", "name": "Cli"},
                headers={"X-Request-ID": "cli-test-1"},
            ) as response:
                assert response.status == 201
        code = await sigterm_and_wait(process, log_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert code == 0
    lines = json_lines(log_path.read_text())
    assert {line["service"] for line in lines} == {"user-service"}
    [access] = [line for line in lines if line.get("path") == "/auth/register"]
    assert (access["requestId"], access["status"], access["route"]) == ("cli-test-1", 201, "/auth/register")
    assert lines[-1]["message"] == "user-service stopped"
    assert "a fine password" not in log_path.read_text()
    assert (tmp_path / "data" / "user-service.sqlite3").exists()


def test_bad_settings_stop_the_start_naming_the_variable(tmp_path: Path) -> None:
    result = run_kadai(["service", "user"], env=clean_env(KADAI_EVENTS_MAX_ATTEMPTS="0", KADAI_DATA_DIR=str(tmp_path)))

    assert result.returncode == 2
    assert "KADAI_EVENTS_MAX_ATTEMPTS: must be at least 1" in result.stderr


def test_an_unknown_service_is_refused() -> None:
    unknown = run_kadai(["service", "billing"], env=clean_env(AMQP_URL="memory://"))

    assert unknown.returncode == 2 and "unknown service 'billing'" in unknown.stderr


def test_dead_letters_need_a_broker() -> None:
    result = run_kadai(["events", "dlq", "user-service"], env=clean_env(AMQP_URL="memory://"))

    assert result.returncode == 2
    assert "the in-process bus keeps dead letters inside the running service" in result.stderr


def catalogue_port(name: str) -> list[str]:
    """No --port (the catalogue's port) when that port is free. A developer's own platform may hold it:
    then a free port, except under CI, where the start on the catalogue port is what is tested."""
    port = CATALOG[name].port
    if bindable(port):
        return []
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"port {port} ({name}'s default) is in use: `kadai service {name}` cannot be tested on it")
    return ["--port", str(free_port())]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CATALOG), ids=list(CATALOG))
async def test_kadai_service_runs_each_catalogue_service_on_its_port(tmp_path: Path, name: str) -> None:
    override = catalogue_port(name)
    port = int(override[1]) if override else CATALOG[name].port
    env = clean_env(
        AMQP_URL="memory://", KADAI_DATA_DIR=str(tmp_path / "data"), USER_SCRYPT_COST="10", PYTHONUNBUFFERED="1"
    )
    log_path = tmp_path / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "service", name, "--host", "127.0.0.1", *override],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    health: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as session:

            async def answers() -> bool:
                assert process.poll() is None, log_path.read_text()
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as response:
                        health.update(await response.json())
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(answers, 20, f"{name} to answer on port {port}")
        code = await sigterm_and_wait(process, log_path)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert code == 0, log_path.read_text()
    data = health["data"]
    assert (data["service"], data["status"]) == (name, "ok")
    assert data["checks"]["database"] == {"status": "up"}
    lines = json_lines(log_path.read_text())
    assert {line["service"] for line in lines} == {name}
    assert any(line["message"] == f"{name} listening on http://127.0.0.1:{port}" for line in lines)
    assert lines[-1]["message"] == f"{name} stopped"
    assert (tmp_path / "data" / f"{name}.sqlite3").exists()


async def test_health_reports_draining_for_the_drain_delay_before_the_listener_closes(tmp_path: Path) -> None:
    """KADAI_DRAIN_DELAY: after SIGTERM the service keeps answering, health at 503 "draining", so that the
    gateway's health checks (and load balancers) take it out before its port closes."""
    port = free_port()
    env = clean_env(AMQP_URL="memory://", KADAI_DATA_DIR=str(tmp_path / "data"), KADAI_DRAIN_DELAY="3s",
                    PYTHONUNBUFFERED="1")
    log_path = tmp_path / "product.log"
    process = start_kadai_service("product", port, env, log_path)
    seen: list[tuple[int, str]] = []
    try:
        async with aiohttp.ClientSession() as session:

            async def health() -> tuple[int, str] | None:
                assert process.poll() is None, log_path.read_text()
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as response:
                        body = await response.json()  # the report: data when healthy, details when not
                        return response.status, (body.get("data") or body["details"])["status"]
                except aiohttp.ClientConnectionError:
                    return None

            async def up() -> bool:
                return await health() == (200, "ok")

            await wait_until(up, 20, "product-service to answer")
            process.send_signal(signal.SIGTERM)

            async def draining() -> bool:
                answer = await health()
                if answer is not None:
                    seen.append(answer)
                return answer == (503, "draining")

            await wait_until(draining, 2.5, "health to report draining while the listener is still open")
        code = await asyncio.to_thread(process.wait, 15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert code == 0, log_path.read_text()
    messages = [line["message"] for line in json_lines(log_path.read_text())]
    assert "shutting down: health reports draining" in messages
    assert messages[-1] == "product-service stopped"
