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
from gateway.event_loop import EVENT_LOOPS, EventLoopName, default_event_loop, uvloop_installed
from gateway.units import parse_duration

DEV_JWT_SECRET = "kadai-jwt-secret-dev-key-2024"
"""The spec's development secret: the default outside production, refused in production."""

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_HEADER_TIMEOUT = 10.0
MEMORY_URL = "memory://"
"""REDIS_URL / AMQP_URL value for the embedded backends of one development process: the in-process rate
limiter (no response cache) and the in-process event bus. Refused in production."""
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEV_PASSWORDS = frozenset({"kadai123", "guest"})
"""Passwords of the development set-up (the spec's kadai/kadai123, RabbitMQ's guest/guest): refused in
backend URLs in production."""


def mask_url(url: str) -> str:
    """The URL with any password replaced, fit for logs."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return "<unparseable URL>"
    return str(parsed.with_password("***")) if parsed.password else url


def public_url(url: str) -> str:
    """The URL fit for logs and status output: no password and no query (it may carry an API key)."""
    try:
        return mask_url(str(URL(url).with_query(None).with_fragment(None)))
    except (ValueError, TypeError):
        return "<unparseable URL>"


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    env: Literal["development", "production"] = "development"
    jwt_secret: str = field(default=DEV_JWT_SECRET, repr=False)
    """HS* secret; "" in production when tokens are verified with public keys and no secret is set."""
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    """Allowed `alg` values: HS* only (verified with jwt_secret) or RS/PS/ES* only (public keys)."""
    jwt_public_key_file: str | None = None
    """PEM public key verifying RS/PS/ES* tokens (exclusive with jwt_jwks_url)."""
    jwt_jwks_url: str | None = field(default=None, repr=False)
    """JWKS URL whose keys verify RS/PS/ES* tokens, chosen by the token's kid."""
    jwt_issuer: str | None = None
    """Required `iss` when set."""
    jwt_audience: tuple[str, ...] = ()
    """When set, `aud` must name one of these."""
    jwt_leeway: float = 5.0
    """Clock skew tolerated on exp, nbf and iat, in seconds."""
    jwt_cache_size: int = 10_000
    """Verified tokens remembered until their exp; 0 verifies every request."""
    jwt_jwks_ttl: float = 600.0
    """Age after which the JWKS is fetched again (in the background)."""
    jwt_jwks_refresh_interval: float = 10.0
    """Shortest time between two JWKS fetches, however many unknown kids arrive."""
    redis_url: str = DEFAULT_REDIS_URL
    redis_cluster: bool = False
    """REDIS_URL names one node of a Redis Cluster: commands go to the node owning each key's slot."""
    amqp_url: str = DEFAULT_AMQP_URL
    log_level: str = "INFO"
    registry_path: str = "registry.yaml"
    drain_timeout: float = 30.0
    drain_delay: float = 0.0
    reload_interval: float = 0.5
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    """Seconds a client has to send a request's headers (slow clients are cut off past it)."""
    event_loop: EventLoopName = field(default_factory=default_event_loop)
    """The loop `kadai gateway` serves on (KADAI_EVENT_LOOP; uvloop by default where it is installed)."""

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in self.public_view().items())
        return f"Settings({shown})"

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def embedded_redis(self) -> bool:
        """REDIS_URL=memory://: rate limits in this process's memory, no response cache."""
        return self.redis_url == MEMORY_URL

    @property
    def log_level_number(self) -> int:
        return logging.getLevelName(self.log_level)

    @property
    def jwt_key_source(self) -> Literal["secret", "publicKeyFile", "jwks"]:
        if self.jwt_jwks_url:
            return "jwks"
        return "publicKeyFile" if self.jwt_public_key_file else "secret"

    def public_view(self) -> dict[str, object]:
        """What may be shown in logs and status output."""
        if not self.jwt_secret:
            secret_state = "not set"
        else:
            secret_state = "development default" if self.jwt_secret == DEV_JWT_SECRET else "set"
        return {
            "env": self.env,
            "redisUrl": mask_url(self.redis_url),
            "redisCluster": self.redis_cluster,
            "amqpUrl": mask_url(self.amqp_url),
            "jwtSecret": secret_state,
            "jwt": {
                "algorithms": list(self.jwt_algorithms),
                "keySource": self.jwt_key_source,
                "publicKeyFile": self.jwt_public_key_file,
                "jwksUrl": public_url(self.jwt_jwks_url) if self.jwt_jwks_url else None,
                "issuer": self.jwt_issuer,
                "audience": list(self.jwt_audience),
                "leewaySeconds": self.jwt_leeway,
            },
            "logLevel": self.log_level,
            "registry": self.registry_path,
            "eventLoop": self.event_loop,
        }


def development_credentials_problem(url: str) -> str | None:
    """Why a backend URL may not be used in production: it logs in with a development password."""
    try:
        password = URL(url).password
    except (ValueError, TypeError):
        return None  # reported as an invalid URL elsewhere
    if password in DEV_PASSWORDS:
        return "its credentials are the development ones (kadai/kadai123, guest/guest): refused when KADAI_ENV=production"
    return None


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

    jwt_settings = _load_jwt(env, mode == "production", problems)

    redis_url = env.get("REDIS_URL", DEFAULT_REDIS_URL)
    amqp_url = env.get("AMQP_URL", DEFAULT_AMQP_URL)
    for var, url, schemes in (
        ("REDIS_URL", redis_url, ("redis", "rediss", "unix")),
        ("AMQP_URL", amqp_url, ("amqp", "amqps")),
    ):
        if url == MEMORY_URL:
            # One process's own memory: other processes share nothing with it, and it is lost at exit.
            if mode == "production":
                problems.append(f"{var}: {MEMORY_URL} (in-process) is for development, not KADAI_ENV=production")
            continue
        problem = _url_problem(url, schemes)
        if problem is None and mode == "production" and var in env:
            # Only a URL that is set: the gateway does not use AMQP_URL, so its default is never in use.
            problem = development_credentials_problem(url)
        if problem:
            problems.append(f"{var}: {problem}")

    cluster_text = env.get("REDIS_CLUSTER", "false").strip().lower()
    redis_cluster = cluster_text in ("true", "1", "yes")
    if cluster_text not in ("true", "1", "yes", "false", "0", "no", ""):
        problems.append(f"REDIS_CLUSTER: expected true or false, got {cluster_text!r}")
    elif redis_cluster and (redis_url == MEMORY_URL or redis_url.startswith("unix")):
        problems.append("REDIS_CLUSTER: needs REDIS_URL to name a node of the cluster (redis:// or rediss://)")

    level = env.get("LOG_LEVEL", "INFO").strip().upper()
    if level not in _LOG_LEVELS:
        problems.append(f"LOG_LEVEL: expected one of {', '.join(_LOG_LEVELS)}, got {level!r}")
        level = "INFO"

    durations: dict[str, float] = {}
    for var, default in (
        ("KADAI_DRAIN_TIMEOUT", 30.0),
        ("KADAI_DRAIN_DELAY", 0.0),
        ("KADAI_RELOAD_INTERVAL", 0.5),
        ("KADAI_HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT),
    ):
        try:
            durations[var] = parse_duration(env[var]) if var in env else default
        except ValueError as exc:
            problems.append(f"{var}: {exc}")
            durations[var] = default
    if durations["KADAI_RELOAD_INTERVAL"] <= 0:
        problems.append("KADAI_RELOAD_INTERVAL: must be above zero")
    if durations["KADAI_HEADER_TIMEOUT"] <= 0:
        problems.append("KADAI_HEADER_TIMEOUT: must be above zero")

    event_loop = env.get("KADAI_EVENT_LOOP", "").strip().lower() or default_event_loop()
    if event_loop not in EVENT_LOOPS:
        problems.append(f"KADAI_EVENT_LOOP: expected uvloop or asyncio, got {event_loop!r}")
        event_loop = "asyncio"
    elif event_loop == "uvloop" and not uvloop_installed():
        problems.append("KADAI_EVENT_LOOP: uvloop is not installed (pip install uvloop), or set asyncio")
        event_loop = "asyncio"

    if problems:
        raise ConfigError("environment", problems)
    return Settings(
        env=mode,  # type: ignore[arg-type]
        **jwt_settings,  # type: ignore[arg-type]
        redis_url=redis_url,
        redis_cluster=redis_cluster,
        amqp_url=amqp_url,
        log_level=level,
        registry_path=env.get("KADAI_REGISTRY", "registry.yaml"),
        drain_timeout=durations["KADAI_DRAIN_TIMEOUT"],
        drain_delay=durations["KADAI_DRAIN_DELAY"],
        reload_interval=durations["KADAI_RELOAD_INTERVAL"],
        header_timeout=durations["KADAI_HEADER_TIMEOUT"],
        event_loop=event_loop,  # type: ignore[arg-type]
    )


_MAX_LEEWAY = 300.0
_MAX_CACHE_SIZE = 1_000_000


def _load_jwt(env: Mapping[str, str], production: bool, problems: list[str]) -> dict[str, object]:
    """The JWT_* variables: one key source, an allow-list that fits it, and the claim checks."""
    # Imported here: gateway.auth imports this module.
    from gateway.auth.keys import HMAC_MIN_SECRET, KeyProblem, is_hmac, load_public_key_file, parse_algorithms

    if "JWT_ALGORITHM" in env:
        problems.append("JWT_ALGORITHM: not read; the allow-list is JWT_ALGORITHMS (comma-separated)")
    key_file = env.get("JWT_PUBLIC_KEY_FILE", "").strip() or None
    jwks_url = env.get("JWT_JWKS_URL", "").strip() or None
    if key_file and jwks_url:
        problems.append("JWT_JWKS_URL: set JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL, not both")

    algorithms: tuple[str, ...] | None = None
    listed = env.get("JWT_ALGORITHMS", "").strip()
    if listed:
        try:
            algorithms = parse_algorithms(listed)
        except KeyProblem as exc:
            problems.append(f"JWT_ALGORITHMS: {exc}")
    elif not (key_file or jwks_url):
        algorithms = ("HS256",)
    elif jwks_url:
        algorithms = ("RS256",)
    if algorithms is not None and is_hmac(algorithms) and (key_file or jwks_url):
        problems.append(
            "JWT_ALGORITHMS: HS* tokens are verified with JWT_SECRET; "
            "with JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL allow RS*, PS* or ES* algorithms"
        )
    if algorithms is not None and not is_hmac(algorithms) and not (key_file or jwks_url):
        problems.append("JWT_ALGORITHMS: RS*, PS* and ES* tokens need JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL")

    if key_file and not (algorithms is not None and is_hmac(algorithms)):
        try:
            if algorithms is None:
                # Not listed: the key's type decides (an RSA key gives RS256, an EC key its curve's ES*).
                bound = load_public_key_file(key_file, ("RS256", "ES256", "ES384", "ES512"))
                algorithms = tuple(sorted(bound.algorithms))
            else:
                load_public_key_file(key_file, algorithms)
        except KeyProblem as exc:
            problems.append(f"JWT_PUBLIC_KEY_FILE: {exc}")
    if jwks_url:
        problem = _url_problem(jwks_url, ("https", "http"))
        if problem:
            problems.append(f"JWT_JWKS_URL: {problem}")
        elif production and not jwks_url.lower().startswith("https://"):
            problems.append("JWT_JWKS_URL: must be an https:// URL when KADAI_ENV=production")

    secret = env.get("JWT_SECRET", "")
    uses_secret = algorithms is None or is_hmac(algorithms)
    if production:
        if not secret:
            if uses_secret:
                problems.append("JWT_SECRET: required when KADAI_ENV=production and tokens are HS* signed")
        elif secret == DEV_JWT_SECRET:
            problems.append("JWT_SECRET: the development secret is refused when KADAI_ENV=production")
        else:
            needed = max((HMAC_MIN_SECRET[name] for name in algorithms or () if name in HMAC_MIN_SECRET), default=32)
            if len(secret.encode()) < needed:
                problems.append(f"JWT_SECRET: use at least {needed} characters in production")
    if not secret:
        # Production never falls back on the development secret, even where nothing verifies with it.
        secret = "" if production else DEV_JWT_SECRET

    durations: dict[str, float] = {}
    for var, default in (("JWT_LEEWAY", 5.0), ("JWT_JWKS_CACHE_TTL", 600.0), ("JWT_JWKS_REFRESH_INTERVAL", 10.0)):
        try:
            durations[var] = parse_duration(env[var]) if var in env else default
        except ValueError as exc:
            problems.append(f"{var}: {exc}")
            durations[var] = default
    if durations["JWT_LEEWAY"] > _MAX_LEEWAY:
        problems.append("JWT_LEEWAY: at most 5m; a clock-skew allowance, not a grace period")
    for var in ("JWT_JWKS_CACHE_TTL", "JWT_JWKS_REFRESH_INTERVAL"):
        if durations[var] <= 0:
            problems.append(f"{var}: must be above zero")

    cache_size = 10_000
    if "JWT_CACHE_SIZE" in env:
        text = env["JWT_CACHE_SIZE"].strip()
        if text.isdigit() and int(text) <= _MAX_CACHE_SIZE:
            cache_size = int(text)
        else:
            problems.append(f"JWT_CACHE_SIZE: expected a whole number from 0 to {_MAX_CACHE_SIZE}, got {text!r}")

    audience = tuple(item.strip() for item in env.get("JWT_AUDIENCE", "").split(",") if item.strip())
    return {
        "jwt_secret": secret,
        "jwt_algorithms": algorithms or ("HS256",),
        "jwt_public_key_file": key_file,
        "jwt_jwks_url": jwks_url,
        "jwt_issuer": env.get("JWT_ISSUER", "").strip() or None,
        "jwt_audience": audience,
        "jwt_leeway": durations["JWT_LEEWAY"],
        "jwt_cache_size": cache_size,
        "jwt_jwks_ttl": durations["JWT_JWKS_CACHE_TTL"],
        "jwt_jwks_refresh_interval": durations["JWT_JWKS_REFRESH_INTERVAL"],
    }
