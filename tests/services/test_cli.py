"""`kadai service` and `kadai events dlq` as a user runs them."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.process.helpers import clean_env, json_lines, run_kadai, wait_until
from tests.support import REPO, free_port


@pytest.mark.slow
async def test_kadai_service_runs_user_service_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(
        AMQP_URL="memory://", KADAI_DATA_DIR=str(tmp_path / "data"), USER_SCRYPT_COST="10", PYTHONUNBUFFERED="1"
    )
    log_path = tmp_path / "user-service.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "service", "user", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
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
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(process.wait, 15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"user-service still running 15 s after SIGTERM; its log:\n{log_path.read_text()}")
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
