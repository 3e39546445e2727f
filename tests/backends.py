"""The real Redis and RabbitMQ the suite talks to (REDIS_URL, AMQP_URL), and how a test asks for them.

A test that needs a server it cannot reach fails under CI (CI=true) and is skipped loudly elsewhere.
"""
from __future__ import annotations

import os
import shutil
import socket

import pytest
from yarl import URL

from gateway.config.settings import DEFAULT_AMQP_URL, DEFAULT_REDIS_URL


def redis_url() -> str:
    return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)


def amqp_url() -> str:
    return os.environ.get("AMQP_URL", DEFAULT_AMQP_URL)


def _address(url: str, default_port: int) -> tuple[str, int]:
    parsed = URL(url)
    return parsed.host or "127.0.0.1", parsed.port or default_port


def _first_bytes(url: str, default_port: int, greeting: bytes, size: int, timeout: float) -> bytes:
    """Connect, send a greeting, return what the server answers first (b"" when nothing answers)."""
    try:
        with socket.create_connection(_address(url, default_port), timeout=timeout) as sock:
            sock.sendall(greeting)
            return sock.recv(size)
    except OSError:
        return b""


def redis_answers(url: str, timeout: float = 2.0) -> bool:
    """PING over the Redis protocol: +PONG, or -NOAUTH from a server that wants a password."""
    return _first_bytes(url, 6379, b"*1\r\n$4\r\nPING\r\n", 64, timeout).startswith((b"+PONG", b"-NOAUTH"))


def amqp_answers(url: str, timeout: float = 3.0) -> bool:
    """Send the AMQP 0-9-1 protocol header; a broker answers with a method frame (type 1)."""
    return _first_bytes(url, 5672, b"AMQP\x00\x00\x09\x01", 1, timeout) == b"\x01"


def require(name: str, reachable: bool, url: str) -> None:
    """Fail (under CI) or skip loudly when a server a test needs is missing."""
    if reachable:
        return
    where = URL(url).with_password("***") if URL(url).password else url
    _missing(f"{name} is not reachable at {where}: run the suite with ops/test, which starts or installs it")


def redis_server_binary(who: str) -> str:
    """The redis-server program, for tests that start (and pause, kill) a Redis of their own."""
    binary = shutil.which("redis-server")
    if binary is None:
        _missing(f"redis-server is not installed: {who} start one of their own")
    assert binary is not None
    return binary


def require_programs(*names: str, why: str) -> None:
    """Fail (under CI) or skip loudly when a program a test runs is not installed."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        _missing(f"{' and '.join(missing)} not installed ({why}): run the suite with ops/test, which installs them")


def _missing(message: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(f"MISSING BACKEND: {message}")
