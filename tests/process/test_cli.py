"""The `kadai` command run as a real process: check, token, gateway start-up refusals, secrets in logs."""
from __future__ import annotations

import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.process.helpers import clean_env, json_lines, run_kadai
from tests.support import REPO, GatewayProcess, free_port, service, write_registry

pytestmark = pytest.mark.slow

DEV_SECRET = "kadai-jwt-secret-dev-key-2024"
STRONG_SECRET = "0123456789abcdefghij0123456789ABCDEFGHIJ"  # 40 characters
assert len(STRONG_SECRET) == 40


def _decode(token: str, secret: str) -> dict[str, Any]:
    with warnings.catch_warnings():
        # The spec's development secret is 29 bytes: pyjwt warns that it is short; that is known and fine here.
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.decode(token, secret, algorithms=["HS256"])


def _bad_duration_registry(path: Path) -> Path:
    return write_registry(
        path,
        {"x": service(["http://127.0.0.1:9"], {"prefix": "/api/v1/x", "timeouts": {"read": "soon"}})},
    )


# --- kadai --help -----------------------------------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    result = run_kadai(["--help"])
    assert result.returncode == 0, result.stderr
    for command in ("gateway", "check", "token"):
        assert command in result.stdout


def test_gateway_help_lists_its_options() -> None:
    result = run_kadai(["gateway", "--help"])
    assert result.returncode == 0, result.stderr
    for option in ("--registry", "--host", "--port", "--workers"):
        assert option in result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = run_kadai([])
    assert result.returncode == 2
    assert "usage: kadai" in result.stderr
    assert result.stdout == ""


# --- kadai check --------------------------------------------------------------------------------------------


def test_check_accepts_the_repository_registry() -> None:
    path = REPO / "registry.yaml"
    result = run_kadai(["check", str(path)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: OK (")
    assert "8 services" in result.stdout
    assert result.stderr == ""


def test_check_defaults_to_kadai_registry(tmp_path: Path) -> None:
    path = write_registry(tmp_path / "mine.yaml", {"x": service(["http://127.0.0.1:9"], "/api/v1/x")})
    result = run_kadai(["check"], env=clean_env(KADAI_REGISTRY=str(path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: OK (1 services, 1 routes, 1 instances)"


def test_check_names_file_and_field_of_a_bad_duration(tmp_path: Path) -> None:
    path = _bad_duration_registry(tmp_path / "bad.yaml")
    result = run_kadai(["check", str(path)])
    assert result.returncode != 0
    assert result.stdout == ""
    assert str(path) in result.stderr
    assert "services.x.routes[0].timeouts.read" in result.stderr
    assert "'soon'" in result.stderr


def test_check_reports_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    result = run_kadai(["check", str(path)])
    assert result.returncode != 0
    assert result.stdout == ""
    assert str(path) in result.stderr
    assert "cannot read the file" in result.stderr


def test_check_reports_invalid_yaml_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\nservices:\n  x: [unclosed\n")
    result = run_kadai(["check", str(path)])
    assert result.returncode != 0
    assert result.stdout == ""
    assert str(path) in result.stderr
    assert "invalid YAML" in result.stderr
    assert "line " in result.stderr


# --- kadai token --------------------------------------------------------------------------------------------


def test_token_is_signed_with_the_development_secret() -> None:
    before = int(time.time())
    result = run_kadai(["token", "--sub", "u1", "--role", "seller", "--ttl", "60"])
    after = int(time.time())
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no pyjwt key-length warning for the spec's (29-byte) development secret
    token = result.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    claims = _decode(token, DEV_SECRET)
    assert claims["sub"] == "u1"
    assert claims["role"] == "seller"
    assert before + 60 <= claims["exp"] <= after + 60
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_token_uses_jwt_secret_from_the_environment() -> None:
    result = run_kadai(
        ["token", "--sub", "u2", "--role", "admin", "--ttl", "60", "--email", "a@example.com"],
        env=clean_env(JWT_SECRET=STRONG_SECRET),
    )
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    claims = _decode(token, STRONG_SECRET)
    assert (claims["sub"], claims["role"], claims["email"]) == ("u2", "admin", "a@example.com")
    with pytest.raises(jwt.InvalidSignatureError):
        _decode(token, DEV_SECRET)


def test_token_is_refused_in_production() -> None:
    result = run_kadai(
        ["token", "--sub", "u1", "--role", "seller", "--ttl", "60"],
        env=clean_env(KADAI_ENV="production", JWT_SECRET=STRONG_SECRET),
    )
    assert result.returncode != 0
    assert result.stdout.strip() == ""
    assert "production" in result.stderr


def test_token_rejects_a_non_positive_ttl() -> None:
    result = run_kadai(["token", "--sub", "u1", "--role", "seller", "--ttl", "0"])
    assert result.returncode == 2
    assert result.stdout == ""
    assert "--ttl" in result.stderr


# --- kadai gateway: refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [pytest.param(DEV_SECRET, id="dev-secret"), pytest.param(None, id="no-secret")],
)
def test_gateway_refuses_production_without_a_real_secret(tmp_path: Path, secret: str | None) -> None:
    registry = write_registry(tmp_path / "r.yaml", {"x": service(["http://127.0.0.1:9"], "/api/v1/x")})
    env = clean_env(KADAI_ENV="production", **({"JWT_SECRET": secret} if secret else {}))
    port = free_port()
    result = run_kadai(
        ["gateway", "--registry", str(registry), "--host", "127.0.0.1", "--port", str(port)], env=env, timeout=20
    )
    assert result.returncode != 0
    assert "JWT_SECRET" in result.stderr
    assert DEV_SECRET not in result.stdout + result.stderr
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_gateway_starts_in_production_with_a_strong_secret(
    tmp_path: Path, gateway_process: Callable[..., GatewayProcess]
) -> None:
    registry = write_registry(tmp_path / "r.yaml", {"x": service(["http://127.0.0.1:9"], "/api/v1/x")})
    gw = gateway_process(registry, env={"KADAI_ENV": "production", "JWT_SECRET": STRONG_SECRET})
    assert gw.proc is not None and gw.proc.poll() is None
    assert STRONG_SECRET not in gw.output()


def test_gateway_refuses_an_invalid_registry(tmp_path: Path) -> None:
    registry = _bad_duration_registry(tmp_path / "bad.yaml")
    port = free_port()
    result = run_kadai(["gateway", "--registry", str(registry), "--host", "127.0.0.1", "--port", str(port)], timeout=20)
    assert result.returncode != 0
    assert "services.x.routes[0].timeouts.read" in result.stderr
    assert str(registry) in result.stderr
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_gateway_refuses_a_missing_registry(tmp_path: Path) -> None:
    registry = tmp_path / "absent.yaml"
    result = run_kadai(["gateway", "--registry", str(registry), "--host", "127.0.0.1", "--port", str(free_port())])
    assert result.returncode != 0
    assert str(registry) in result.stderr
    assert "cannot read the file" in result.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_gateway_exits_when_the_port_is_taken(tmp_path: Path, workers: int) -> None:
    registry = write_registry(tmp_path / "r.yaml", {"x": service(["http://127.0.0.1:9"], "/api/v1/x")})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = run_kadai(
            ["gateway", "--registry", str(registry), "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers)],
            timeout=30,
        )
        elapsed = time.monotonic() - started
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"127.0.0.1:{port}" in output
    assert "address already in use" in output.lower()
    assert elapsed < 15, f"took {elapsed:.1f}s to give up"
    errors = [r for r in json_lines(result.stdout) if r.get("level") == "error"]
    assert any(f"cannot listen on 127.0.0.1:{port}" in r["message"] for r in errors), result.stdout


# --- secrets stay out of the logs ---------------------------------------------------------------------------


@pytest.mark.parametrize("log_level", ["INFO", "DEBUG"])
async def test_secrets_never_appear_in_output(
    tmp_path: Path, gateway_process: Callable[..., GatewayProcess], log_level: str
) -> None:
    jwt_secret = "some-long-secret-value-xyz-0123456789"
    amqp_password = "hunter2pass"
    redis_password = "redis-pw-0xdeadbeef"
    registry = write_registry(tmp_path / "r.yaml", {"x": service(["http://127.0.0.1:9"], "/api/v1/x")})
    gw = gateway_process(
        registry,
        env={
            "JWT_SECRET": jwt_secret,
            "AMQP_URL": f"amqp://u:{amqp_password}@127.0.0.1:5672/",
            "REDIS_URL": f"redis://:{redis_password}@127.0.0.1:6379/0",
            "LOG_LEVEL": log_level,
        },
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/api/v1/gateway/status") as response:
            assert response.status == 200
            status_text = await response.text()
        async with session.get(f"{gw.url}/api/v1/health/detailed") as response:
            status_text += await response.text()
        async with session.get(f"{gw.url}/api/v1/x/anything") as response:  # an error path logs too
            assert response.status == 502
            await response.read()
    gw.stop()
    output = gw.output()
    started = [r for r in json_lines(output) if r["message"].startswith("gateway listening on")]
    assert len(started) == 1, output
    # The settings ARE logged at start-up, masked: the checks below are not vacuous.
    settings = started[0]["settings"]
    assert settings["amqpUrl"] == "amqp://u:***@127.0.0.1:5672/"
    assert settings["redisUrl"] == "redis://:***@127.0.0.1:6379/0"
    assert settings["jwtSecret"] == "set"
    assert settings["logLevel"] == log_level
    for secret in (jwt_secret, amqp_password, redis_password):
        assert secret not in output
        assert secret not in status_text


@pytest.mark.parametrize(
    ("variable", "value", "secret"),
    [
        ("AMQP_URL", "http://u:hunter2pass@127.0.0.1/", "hunter2pass"),
        ("REDIS_URL", "mysql://root:hunter3pass@127.0.0.1/", "hunter3pass"),
        ("KADAI_DRAIN_TIMEOUT", "soon", None),
        ("LOG_LEVEL", "LOUD", None),
    ],
)
def test_gateway_refuses_a_bad_environment_variable_by_name(
    tmp_path: Path, variable: str, value: str, secret: str | None
) -> None:
    registry = write_registry(tmp_path / "r.yaml", {"x": service(["http://127.0.0.1:9"], "/api/v1/x")})
    result = run_kadai(
        ["gateway", "--registry", str(registry), "--host", "127.0.0.1", "--port", str(free_port())],
        env=clean_env(**{variable: value}),
    )
    assert result.returncode != 0
    assert f"{variable}:" in result.stderr
    if secret:
        assert secret not in result.stdout + result.stderr


def test_gateway_refuses_a_short_production_secret(tmp_path: Path) -> None:
    registry = write_registry(tmp_path / "r.yaml", {"x": service(["http://127.0.0.1:9"], "/api/v1/x")})
    short = "short-but-secret-1234"
    result = run_kadai(
        ["gateway", "--registry", str(registry), "--host", "127.0.0.1", "--port", str(free_port())],
        env=clean_env(KADAI_ENV="production", JWT_SECRET=short),
    )
    assert result.returncode != 0
    assert "JWT_SECRET" in result.stderr and "32" in result.stderr
    assert short not in result.stdout + result.stderr


async def test_start_up_log_and_status_name_the_registry_in_use(
    tmp_path: Path, gateway_process: Callable[..., GatewayProcess]
) -> None:
    registry = write_registry(tmp_path / "elsewhere.yaml", {"x": service(["http://127.0.0.1:9"], "/api/v1/x")})
    gw = gateway_process(registry)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.url}/api/v1/gateway/status") as response:
            data = (await response.json())["data"]
    assert data["config"]["source"] == str(registry)  # the file really in use
    started = next(r for r in json_lines(gw.output()) if r["message"].startswith("gateway listening on"))
    assert started["settings"]["registry"] == str(registry)
    assert data["settings"]["registry"] == str(registry)
