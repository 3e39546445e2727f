"""Settings of a service process, read once from environment variables and validated at load.

The platform part (KADAI_ENV, JWT_SECRET, LOG_LEVEL, KADAI_DRAIN_TIMEOUT) comes from the gateway's own
loader, so a service and the gateway accept exactly the same values; the rest is the services' own.
Every problem names its variable; secrets never appear in repr() or logs.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from yarl import URL

from gateway.config.errors import ConfigError
from gateway.config.settings import (
    DEFAULT_AMQP_URL,
    Settings,
    development_credentials_problem,
    load_settings,
    mask_url,
)
from gateway.units import parse_duration
from services.catalog import CATALOG
from services.kit.credential import CREDENTIAL_FORM, service_credential

MEMORY_BUS_URL = "memory://"
"""AMQP_URL value that selects the in-process bus: no broker, events delivered inside the process."""

_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True, repr=False)
class ServiceSettings:
    """Everything a service process is configured with. Durations are seconds."""

    platform: Settings = field(default_factory=Settings)
    """JWT key, KADAI_ENV, LOG_LEVEL and drain timeout, shared with the gateway."""
    data_dir: Path = Path("var")
    """KADAI_DATA_DIR: one SQLite file per service lives here."""
    amqp_url: str = DEFAULT_AMQP_URL
    """AMQP_URL: the broker, or memory:// for the in-process bus."""
    events_prefix: str = "kadai"
    """KADAI_EVENTS_PREFIX: first part of every exchange and queue name."""
    max_attempts: int = 5
    """KADAI_EVENTS_MAX_ATTEMPTS: deliveries of a failing event before it is dead-lettered."""
    retry_delay: float = 10.0
    """KADAI_EVENTS_RETRY_DELAY: wait before a failed event is delivered again."""
    prefetch: int = 10
    """KADAI_EVENTS_PREFETCH: unacknowledged events a service works on at once."""
    declare_consumers: bool = True
    """KADAI_EVENTS_DECLARE_CONSUMERS: a publisher also declares the queues (and bindings) of every
    catalogue service that consumes events, so an event published before its consumer first started waits
    in that consumer's queue instead of being dropped by the exchange."""
    publish_timeout: float = 5.0
    """KADAI_EVENTS_PUBLISH_TIMEOUT: longest wait for the broker's confirm of one publish."""
    connect_timeout: float = 5.0
    """KADAI_AMQP_CONNECT_TIMEOUT: longest wait for one connection attempt to the broker."""
    reconnect_interval: float = 2.0
    """KADAI_AMQP_RECONNECT_INTERVAL: pause between connection attempts while the broker is away."""
    outbox_poll_interval: float = 1.0
    """KADAI_OUTBOX_POLL_INTERVAL: how often the relay looks for pending events besides commit wake-ups."""
    retention: float = 7 * 86400.0
    """KADAI_EVENTS_RETENTION: how long sent outbox rows and processed event IDs are kept."""
    service_token_ttl: int = 60
    """KADAI_SERVICE_TOKEN_TTL: lifetime of the tokens a service signs for its calls to other services
    (and of those user-service issues at POST /service-tokens)."""
    service_secret: str | None = field(default=None, repr=False)
    """KADAI_SERVICE_SECRET: the platform's service secret. user-service issues a service token to a
    catalogue service that presents its credential derived from it (services/kit/credential.py); a
    service that cannot sign and has no KADAI_SERVICE_CREDENTIAL derives its own from it. Unset:
    user-service issues none. At least 32 characters in production."""
    service_credential: str | None = field(default=None, repr=False)
    """KADAI_SERVICE_CREDENTIAL: this service's own credential (`kadai service-credential NAME`), sent
    to KADAI_TOKEN_URL instead of one derived from KADAI_SERVICE_SECRET: with it, the service needs
    not hold the platform secret, and its credential obtains tokens in its own name only."""
    token_url: str | None = None
    """KADAI_TOKEN_URL: user-service's base URL, where a service that cannot sign its own service tokens
    (public-key verification without JWT_PRIVATE_KEY_FILE) fetches them. Needs KADAI_SERVICE_CREDENTIAL
    or KADAI_SERVICE_SECRET."""
    call_timeout: float = 5.0
    """KADAI_SERVICE_CALL_TIMEOUT: default total timeout of a call to another service."""
    private_key_pem: bytes | None = field(default=None, repr=False)
    """JWT_PRIVATE_KEY_FILE's content: sign tokens with RS*/ES* instead of HS* with JWT_SECRET."""
    key_id: str | None = None
    """JWT_KEY_ID: the `kid` header of tokens signed with the private key."""
    service_urls: Mapping[str, str] = field(default_factory=dict)
    """<NAME>_URL overrides (USER_SERVICE_URL, ...) of where other services are reached."""
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The environment the settings were read from; a service's own EnvConfig is read from it."""

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in self.public_view().items())
        return f"ServiceSettings({shown})"

    @property
    def memory_bus(self) -> bool:
        return self.amqp_url == MEMORY_BUS_URL

    def database_path(self, service: str) -> Path:
        return self.data_dir / f"{service}.sqlite3"

    def service_url(self, service: str) -> str:
        """Base URL of another service: its <NAME>_URL override, else 127.0.0.1 on its catalogue port."""
        if service in self.service_urls:
            return self.service_urls[service]
        entry = CATALOG.get(service)
        if entry is None:
            raise LookupError(f"unknown service {service!r} (not in services/catalog.py)")
        return f"http://127.0.0.1:{entry.port}"

    @property
    def fetches_tokens(self) -> bool:
        """Whether service tokens can be asked of user-service: KADAI_TOKEN_URL and something to prove with."""
        return bool(self.token_url and (self.service_credential or self.service_secret))

    def credential_of(self, service: str) -> str | None:
        """What `service` sends to POST /service-tokens: KADAI_SERVICE_CREDENTIAL, else its credential
        derived from KADAI_SERVICE_SECRET; None with neither."""
        if self.service_credential is not None:
            return self.service_credential
        return service_credential(self.service_secret, service) if self.service_secret is not None else None

    def public_view(self) -> dict[str, object]:
        """What may be shown in logs and status output."""
        return {
            **self.platform.public_view(),
            "amqpUrl": self.amqp_url if self.memory_bus else mask_url(self.amqp_url),
            "dataDir": str(self.data_dir),
            "eventsPrefix": self.events_prefix,
            "maxAttempts": self.max_attempts,
            "retryDelay": self.retry_delay,
            "signing": "private key" if self.private_key_pem else "JWT_SECRET",
            "serviceSecret": "set" if self.service_secret else "not set",
            "serviceCredential": "set" if self.service_credential else "not set",
            "tokenUrl": mask_url(self.token_url) if self.token_url else None,
        }


def load_service_settings(environ: Mapping[str, str] | None = None) -> ServiceSettings:
    """Read and validate the environment; raise ConfigError naming each bad variable."""
    env = dict(os.environ if environ is None else environ)
    problems: list[str] = []

    # The gateway's loader knows only amqp:// URLs; the bus URL is checked here.
    try:
        platform = load_settings({key: value for key, value in env.items() if key != "AMQP_URL"})
    except ConfigError as exc:
        problems.extend(exc.problems)
        platform = Settings()

    amqp_url = env.get("AMQP_URL", "").strip()
    if not amqp_url:
        if platform.production:
            problems.append("AMQP_URL: required when KADAI_ENV=production")
        amqp_url = DEFAULT_AMQP_URL
    elif amqp_url == MEMORY_BUS_URL:
        if platform.production:
            problems.append("AMQP_URL: memory:// (the in-process bus) is for development, not KADAI_ENV=production")
    elif problem := _amqp_problem(amqp_url) or (platform.production and development_credentials_problem(amqp_url)):
        problems.append(f"AMQP_URL: {problem}")

    prefix = env.get("KADAI_EVENTS_PREFIX", "kadai")
    if not _PREFIX.match(prefix):
        problems.append(f"KADAI_EVENTS_PREFIX: 1 to 64 letters, digits, dots, dashes or underscores, got {prefix!r}")

    def number(var: str, default: float, parse: Callable[[str], float], minimum: float) -> float:
        if var not in env:
            return default
        try:
            value = parse(env[var])
        except ValueError as exc:
            problems.append(f"{var}: {exc}")
            return default
        if value < minimum:
            problems.append(f"{var}: must be at least {minimum:g}, got {env[var]!r}")
            return default
        return value

    def flag(var: str, default: bool) -> bool:
        text = env.get(var)
        if text is None:
            return default
        if text.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if text.strip().lower() in ("0", "false", "no", "off"):
            return False
        problems.append(f"{var}: expected true or false, got {text!r}")
        return default

    duration = parse_duration
    whole = _parse_int
    private_key_pem, key_id = _private_key(env, platform, problems)
    service_urls = {}
    for entry in CATALOG.values():
        url = env.get(entry.url_variable)
        if url is None:
            continue
        if problem := _http_problem(url):
            problems.append(f"{entry.url_variable}: {problem}")
        service_urls[entry.name] = url.rstrip("/")
    service_secret, service_credential, token_url = _service_credentials(env, platform, problems)

    settings = ServiceSettings(
        platform=platform,
        data_dir=Path(env.get("KADAI_DATA_DIR", "var")),
        amqp_url=amqp_url,
        events_prefix=prefix,
        max_attempts=int(number("KADAI_EVENTS_MAX_ATTEMPTS", 5, whole, 1)),
        retry_delay=number("KADAI_EVENTS_RETRY_DELAY", 10.0, duration, 0.0),
        prefetch=int(number("KADAI_EVENTS_PREFETCH", 10, whole, 1)),
        declare_consumers=flag("KADAI_EVENTS_DECLARE_CONSUMERS", True),
        publish_timeout=number("KADAI_EVENTS_PUBLISH_TIMEOUT", 5.0, duration, 0.001),
        connect_timeout=number("KADAI_AMQP_CONNECT_TIMEOUT", 5.0, duration, 0.001),
        reconnect_interval=number("KADAI_AMQP_RECONNECT_INTERVAL", 2.0, duration, 0.001),
        outbox_poll_interval=number("KADAI_OUTBOX_POLL_INTERVAL", 1.0, duration, 0.001),
        retention=number("KADAI_EVENTS_RETENTION", 7 * 86400.0, duration, 0.0),
        service_token_ttl=int(number("KADAI_SERVICE_TOKEN_TTL", 60, duration, 5)),
        call_timeout=number("KADAI_SERVICE_CALL_TIMEOUT", 5.0, duration, 0.001),
        private_key_pem=private_key_pem,
        key_id=key_id,
        service_urls=service_urls,
        service_secret=service_secret,
        service_credential=service_credential,
        token_url=token_url,
        environ=env,
    )
    if problems:
        raise ConfigError("environment", problems)
    return settings


def _parse_int(text: str) -> float:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def _amqp_problem(url: str) -> str | None:
    try:
        parsed = URL(url)
        parsed.port  # noqa: B018 - yarl checks the port range lazily
    except (ValueError, TypeError) as exc:
        return f"not a valid URL ({exc})"
    if parsed.scheme not in ("amqp", "amqps"):
        return f"expected an amqp://, amqps:// or {MEMORY_BUS_URL} URL, got {mask_url(url)!r}"
    return None


def _http_problem(url: str) -> str | None:
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        return f"not a valid URL ({exc})"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return f"expected an http:// or https:// base URL, got {mask_url(url)!r}"
    return None


SERVICE_SECRET_MIN_LENGTH = 32
"""Shortest KADAI_SERVICE_SECRET production accepts: it obtains a token for any service, and every
service's credential derives from it."""


def _service_credentials(
    env: Mapping[str, str], platform: Settings, problems: list[str]
) -> tuple[str | None, str | None, str | None]:
    """KADAI_SERVICE_SECRET, KADAI_SERVICE_CREDENTIAL and KADAI_TOKEN_URL; a problem never shows a secret."""
    secret = env.get("KADAI_SERVICE_SECRET") or None
    if secret is not None and platform.production and len(secret) < SERVICE_SECRET_MIN_LENGTH:
        problems.append(f"KADAI_SERVICE_SECRET: use at least {SERVICE_SECRET_MIN_LENGTH} characters in production")
    credential = env.get("KADAI_SERVICE_CREDENTIAL", "").strip() or None
    if credential is not None and not CREDENTIAL_FORM.match(credential):
        problems.append(
            "KADAI_SERVICE_CREDENTIAL: expected the 64 hex digits `kadai service-credential NAME` prints"
        )
    url = env.get("KADAI_TOKEN_URL", "").strip() or None
    if url is not None:
        if problem := _http_problem(url):
            problems.append(f"KADAI_TOKEN_URL: {problem}")
        elif secret is None and credential is None:
            problems.append(
                "KADAI_TOKEN_URL: set KADAI_SERVICE_CREDENTIAL (or KADAI_SERVICE_SECRET) too; user-service asks for it"
            )
        url = url.rstrip("/")
    return secret, credential, url


def signing_algorithm(key: object, allowed: tuple[str, ...]) -> str:
    """The JWT algorithm a private key signs with: the first RSA one the platform allows (RS256 when it
    allows none), or the ES* of an EC key's curve."""
    if isinstance(key, rsa.RSAPrivateKey):
        return next((name for name in allowed if name[:2] in ("RS", "PS")), "RS256")
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _EC_ALGORITHMS:
        return _EC_ALGORITHMS[key.curve.name]
    raise ValueError("expected an RSA key or an EC key on P-256, P-384 or P-521")


_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


def _private_key(env: Mapping[str, str], platform: Settings, problems: list[str]) -> tuple[bytes | None, str | None]:
    key_id = env.get("JWT_KEY_ID") or None
    path = env.get("JWT_PRIVATE_KEY_FILE")
    if not path:
        return None, key_id
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        problems.append(f"JWT_PRIVATE_KEY_FILE: cannot read {path}: {exc.strerror or exc}")
        return None, key_id
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        problems.append(f"JWT_PRIVATE_KEY_FILE: {path} is not an unencrypted PEM private key")
        return None, key_id
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        problems.append("JWT_PRIVATE_KEY_FILE: an RSA key needs at least 2048 bits")
        return None, key_id
    allowed = tuple(getattr(platform, "jwt_algorithms", ("HS256",)))
    try:
        algorithm = signing_algorithm(key, allowed)
    except ValueError as exc:
        problems.append(f"JWT_PRIVATE_KEY_FILE: {exc}")
        return None, key_id
    if algorithm not in allowed:
        # Tokens signed with it would be refused everywhere, the gateway included.
        problems.append(
            f"JWT_PRIVATE_KEY_FILE: the key signs {algorithm}, which the platform does not verify "
            f"(JWT_ALGORITHMS: {', '.join(allowed)}; give its public key as JWT_PUBLIC_KEY_FILE or in JWT_JWKS_URL)"
        )
    return pem, key_id
