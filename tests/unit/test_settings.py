"""Unit tests of gateway.config.settings: environment validation and secret masking."""
from __future__ import annotations

import logging

import pytest

import gateway.config.settings as settings_module
from gateway.config.errors import ConfigError
from gateway.config.settings import DEV_JWT_SECRET, Settings, load_settings, mask_url

STRONG_SECRET = "prod-secret-0123456789-abcdefghijklmnop"
AMQP_WITH_PASSWORD = "amqp://u:topsecret@h:5672/"


def problems_of(environ: dict[str, str]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert caught.value.source == "environment"
    assert str(caught.value).startswith("environment: ")
    return caught.value.problems


def test_defaults() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.env == "development" and not settings.production
    assert settings.jwt_secret == DEV_JWT_SECRET
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert (settings.log_level, settings.log_level_number) == ("INFO", logging.INFO)
    assert settings.registry_path == "registry.yaml"
    assert (settings.drain_timeout, settings.reload_interval) == (30.0, 0.5)


def test_values_are_read_and_normalised() -> None:
    settings = load_settings(
        {
            "KADAI_ENV": " Production ",
            "JWT_SECRET": STRONG_SECRET,
            "REDIS_URL": "rediss://:pw@cache:6380/1",
            "AMQP_URL": "amqps://u:p@mq/",
            "LOG_LEVEL": "debug",
            "KADAI_REGISTRY": "/etc/kadai/registry.yaml",
            "KADAI_DRAIN_TIMEOUT": "500ms",
            "KADAI_RELOAD_INTERVAL": "2s",
        }
    )
    assert settings.production and settings.env == "production"
    assert settings.jwt_secret == STRONG_SECRET
    assert (settings.redis_url, settings.amqp_url) == ("rediss://:pw@cache:6380/1", "amqps://u:p@mq/")
    assert (settings.log_level, settings.log_level_number) == ("DEBUG", logging.DEBUG)
    assert settings.registry_path == "/etc/kadai/registry.yaml"
    assert (settings.drain_timeout, settings.reload_interval) == (0.5, 2.0)


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("AMQP_URL", "amqp://kadai:kadai123@mq:5672/"),
        ("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        ("REDIS_URL", "redis://:kadai123@cache:6379/0"),
    ],
    ids=["amqp-spec-credentials", "amqp-guest", "redis-spec-password"],
)
def test_production_refuses_the_development_credentials(variable: str, url: str) -> None:
    production = {"KADAI_ENV": "production", "JWT_SECRET": STRONG_SECRET}
    problems = problems_of({**production, variable: url})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{variable}: ") and "development ones" in problems[0]
    assert "kadai123@" not in problems[0] and "guest@" not in problems[0]
    # The same URL is fine outside production, and the gateway's unused AMQP default is not held against it.
    load_settings({variable: url})
    load_settings(production)


@pytest.mark.parametrize(
    ("environ", "variable", "reason"),
    [
        ({"KADAI_ENV": "production"}, "JWT_SECRET", "required when KADAI_ENV=production"),
        ({"KADAI_ENV": "production", "JWT_SECRET": ""}, "JWT_SECRET", "required"),
        ({"KADAI_ENV": "production", "JWT_SECRET": DEV_JWT_SECRET}, "JWT_SECRET", "development secret is refused"),
        ({"KADAI_ENV": "production", "JWT_SECRET": "short-secret"}, "JWT_SECRET", "at least 32 characters"),
        ({"KADAI_ENV": "production", "JWT_SECRET": "x" * 31}, "JWT_SECRET", "at least 32 characters"),
        ({"KADAI_ENV": "staging"}, "KADAI_ENV", "expected development or production, got 'staging'"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL", "expected one of DEBUG, INFO, WARNING, ERROR, got 'VERBOSE'"),
        ({"LOG_LEVEL": "critical"}, "LOG_LEVEL", "got 'CRITICAL'"),
        ({"REDIS_URL": "http://cache:6379"}, "REDIS_URL", "expected a redis://, rediss:// or unix:// URL"),
        ({"REDIS_URL": "cache:6379"}, "REDIS_URL", "expected a redis://"),
        ({"AMQP_URL": "redis://mq:5672"}, "AMQP_URL", "expected an amqp:// or amqps:// URL"),
        ({"KADAI_DRAIN_TIMEOUT": "soon"}, "KADAI_DRAIN_TIMEOUT", "expected a duration"),
        ({"KADAI_DRAIN_TIMEOUT": "-5s"}, "KADAI_DRAIN_TIMEOUT", "expected a duration"),
        ({"KADAI_RELOAD_INTERVAL": "0"}, "KADAI_RELOAD_INTERVAL", "must be above zero"),
        ({"KADAI_RELOAD_INTERVAL": "fast"}, "KADAI_RELOAD_INTERVAL", "expected a duration"),
    ],
    ids=["prod-no-secret", "prod-empty-secret", "prod-dev-secret", "prod-short-secret", "prod-31-chars", "bad-env",
         "bad-log-level", "unsupported-log-level", "redis-http", "redis-no-scheme", "amqp-scheme", "drain-word",
         "drain-negative", "reload-zero", "reload-word"],
)
def test_bad_variable_is_named(environ: dict[str, str], variable: str, reason: str) -> None:
    problems = problems_of(environ)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{variable}: ")
    assert reason in problems[0]


@pytest.mark.parametrize(
    "environ",
    [{"JWT_SECRET": "short"}, {"JWT_SECRET": DEV_JWT_SECRET}, {"KADAI_ENV": "production", "JWT_SECRET": "x" * 32}],
    ids=["dev-short-secret", "dev-dev-secret", "prod-32-chars"],
)
def test_accepted_secrets(environ: dict[str, str]) -> None:
    assert load_settings(environ).jwt_secret == environ["JWT_SECRET"]


def test_several_problems_are_reported_together() -> None:
    problems = problems_of(
        {
            "KADAI_ENV": "production",
            "REDIS_URL": "http://cache",
            "AMQP_URL": "http://mq",
            "LOG_LEVEL": "loud",
            "KADAI_DRAIN_TIMEOUT": "10x",
        }
    )
    assert [problem.split(":", 1)[0] for problem in problems] == [
        "JWT_SECRET",
        "REDIS_URL",
        "AMQP_URL",
        "LOG_LEVEL",
        "KADAI_DRAIN_TIMEOUT",
    ]


def test_bad_url_problem_masks_its_password() -> None:
    (problem,) = problems_of({"AMQP_URL": "http://u:topsecret@mq/"})
    assert "topsecret" not in problem
    assert "http://u:***@mq/" in problem


@pytest.mark.parametrize(
    ("environ", "variable"),
    [({"REDIS_URL": "redis://cache:99999/0"}, "REDIS_URL"), ({"AMQP_URL": "amqp://[::1"}, "AMQP_URL")],
    ids=["redis-port-out-of-range", "amqp-unparseable"],
)
def test_unparseable_url_is_a_config_error(environ: dict[str, str], variable: str) -> None:
    problems = problems_of(environ)
    assert problems[0].startswith(f"{variable}: ")


def secret_settings() -> Settings:
    return load_settings({"AMQP_URL": AMQP_WITH_PASSWORD, "JWT_SECRET": STRONG_SECRET})


def test_repr_hides_the_jwt_secret() -> None:
    assert STRONG_SECRET not in repr(secret_settings())


def test_repr_hides_url_passwords() -> None:
    text = repr(load_settings({"AMQP_URL": AMQP_WITH_PASSWORD, "REDIS_URL": "redis://:redispw@h:6379/0"}))
    assert "topsecret" not in text
    assert "redispw" not in text


def test_public_view_hides_secrets() -> None:
    view = secret_settings().public_view()
    assert STRONG_SECRET not in str(view)
    assert "topsecret" not in str(view)
    assert view == {
        "env": "development",
        "redisUrl": "redis://127.0.0.1:6379/0",
        "redisCluster": False,
        "amqpUrl": "amqp://u:***@h:5672/",
        "jwtSecret": "set",
        "jwt": {
            "algorithms": ["HS256"],
            "keySource": "secret",
            "publicKeyFile": None,
            "jwksUrl": None,
            "issuer": None,
            "audience": [],
            "leewaySeconds": 5.0,
        },
        "logLevel": "INFO",
        "registry": "registry.yaml",
        "eventLoop": "uvloop",
    }


def test_public_view_names_the_development_secret() -> None:
    assert Settings().public_view()["jwtSecret"] == "development default"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://u:topsecret@h:5672/", "amqp://u:***@h:5672/"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("amqp://user@h/", "amqp://user@h/"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("http://[::1", "<unparseable URL>"),
    ],
    ids=["user-and-password", "password-only", "default-amqp", "no-credentials", "user-only", "unix", "unparseable"],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_event_loop_is_uvloop_by_default_and_asyncio_on_request() -> None:
    assert load_settings({}).event_loop == "uvloop"  # uvloop is a dependency of the package
    assert load_settings({"KADAI_EVENT_LOOP": " AsyncIO "}).event_loop == "asyncio"
    assert load_settings({"KADAI_EVENT_LOOP": "uvloop"}).public_view()["eventLoop"] == "uvloop"


def test_event_loop_values_are_checked() -> None:
    assert problems_of({"KADAI_EVENT_LOOP": "tokio"}) == (
        "KADAI_EVENT_LOOP: expected uvloop or asyncio, got 'tokio'",
    )


def test_without_uvloop_the_default_is_asyncio_and_asking_for_it_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module, "uvloop_installed", lambda: False)
    monkeypatch.setattr(settings_module, "default_event_loop", lambda: "asyncio")
    assert load_settings({}).event_loop == "asyncio"
    assert problems_of({"KADAI_EVENT_LOOP": "uvloop"}) == (
        "KADAI_EVENT_LOOP: uvloop is not installed (pip install uvloop), or set asyncio",
    )
