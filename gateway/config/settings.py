"""Process settings from environment variables, validated once at start-up.

Secrets are kept out of repr() and logs: Settings prints them masked.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from yarl import URL

from gateway.config.errors import ConfigError
from gateway.units import parse_duration

DEV_JWT_SECRET = "kadai-jwt-secret-dev-key-2024"
"""The spec's development secret: the default outside production, refused in production."""

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def mask_url(url: str) -> str:
    """The URL with any password replaced, fit for logs."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return "<unparseable URL>"
    return str(parsed.with_password("***")) if parsed.password else url


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    env: Literal["development", "production"] = "development"
    jwt_secret: str = field(default=DEV_JWT_SECRET, repr=False)
    redis_url: str = DEFAULT_REDIS_URL
    amqp_url: str = DEFAULT_AMQP_URL
    log_level: str = "INFO"
    registry_path: str = "registry.yaml"
    drain_timeout: float = 30.0
    drain_delay: float = 0.0
    reload_interval: float = 0.5

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in self.public_view().items())
        return f"Settings({shown})"

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def log_level_number(self) -> int:
        return logging.getLevelName(self.log_level)

    def public_view(self) -> dict[str, object]:
        """What may be shown in logs and status output."""
        return {
            "env": self.env,
            "redisUrl": mask_url(self.redis_url),
            "amqpUrl": mask_url(self.amqp_url),
            "jwtSecret": "development default" if self.jwt_secret == DEV_JWT_SECRET else "set",
            "logLevel": self.log_level,
            "registry": self.registry_path,
        }


def _url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    *first, last = [f"{scheme}://" for scheme in schemes]
    expected = f"{', '.join(first)} or {last}"
    try:
        parsed = URL(url)
        parsed.port  # noqa: B018 - yarl checks the port range lazily
    except (ValueError, TypeError) as exc:
        return f"not a valid URL ({exc})"
    if parsed.scheme not in schemes:
        article = "an" if expected[0] in "aeiou" else "a"
        return f"expected {article} {expected} URL, got {mask_url(url)!r}"
    return None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the environment; raise ConfigError naming each bad variable."""
    env = os.environ if environ is None else environ
    problems: list[str] = []

    mode = env.get("KADAI_ENV", "development").strip().lower()
    if mode not in ("development", "production"):
        problems.append(f"KADAI_ENV: expected development or production, got {mode!r}")
        mode = "development"

    secret = env.get("JWT_SECRET", "")
    if mode == "production":
        if not secret:
            problems.append("JWT_SECRET: required when KADAI_ENV=production")
        elif secret == DEV_JWT_SECRET:
            problems.append("JWT_SECRET: the development secret is refused when KADAI_ENV=production")
        elif len(secret) < 32:
            problems.append("JWT_SECRET: use at least 32 characters in production")
    secret = secret or DEV_JWT_SECRET

    redis_url = env.get("REDIS_URL", DEFAULT_REDIS_URL)
    amqp_url = env.get("AMQP_URL", DEFAULT_AMQP_URL)
    for var, url, schemes in (
        ("REDIS_URL", redis_url, ("redis", "rediss", "unix")),
        ("AMQP_URL", amqp_url, ("amqp", "amqps")),
    ):
        problem = _url_problem(url, schemes)
        if problem:
            problems.append(f"{var}: {problem}")

    level = env.get("LOG_LEVEL", "INFO").strip().upper()
    if level not in _LOG_LEVELS:
        problems.append(f"LOG_LEVEL: expected one of {', '.join(_LOG_LEVELS)}, got {level!r}")
        level = "INFO"

    durations: dict[str, float] = {}
    for var, default in (("KADAI_DRAIN_TIMEOUT", 30.0), ("KADAI_DRAIN_DELAY", 0.0), ("KADAI_RELOAD_INTERVAL", 0.5)):
        try:
            durations[var] = parse_duration(env[var]) if var in env else default
        except ValueError as exc:
            problems.append(f"{var}: {exc}")
            durations[var] = default
    if durations["KADAI_RELOAD_INTERVAL"] <= 0:
        problems.append("KADAI_RELOAD_INTERVAL: must be above zero")

    if problems:
        raise ConfigError("environment", problems)
    return Settings(
        env=mode,  # type: ignore[arg-type]
        jwt_secret=secret,
        redis_url=redis_url,
        amqp_url=amqp_url,
        log_level=level,
        registry_path=env.get("KADAI_REGISTRY", "registry.yaml"),
        drain_timeout=durations["KADAI_DRAIN_TIMEOUT"],
        drain_delay=durations["KADAI_DRAIN_DELAY"],
        reload_interval=durations["KADAI_RELOAD_INTERVAL"],
    )
