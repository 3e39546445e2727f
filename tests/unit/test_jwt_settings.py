"""Unit tests of the JWT_* environment variables: key source, allow-list, claims, production rules, masking."""
from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.errors import ConfigError
from gateway.config.settings import DEV_JWT_SECRET, Settings, load_settings
from tests.jwt_support import ec_key, private_pem, rsa_key, write_public_pem

STRONG = "prod-secret-0123456789-abcdefghijklmnop"


def problems_of(environ: dict[str, str]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    return caught.value.problems


@pytest.fixture
def rsa_pem(tmp_path: Path) -> str:
    return str(write_public_pem(tmp_path / "rsa.pem", rsa_key("a")))


def test_defaults_are_hs256_with_the_secret() -> None:
    settings = load_settings({})
    assert settings.jwt_algorithms == ("HS256",) and settings.jwt_key_source == "secret"
    assert (settings.jwt_issuer, settings.jwt_audience, settings.jwt_leeway) == (None, (), 5.0)
    assert (settings.jwt_cache_size, settings.jwt_jwks_ttl, settings.jwt_jwks_refresh_interval) == (10_000, 600.0, 10.0)


def test_every_variable_is_read() -> None:
    settings = load_settings(
        {
            "JWT_ALGORITHMS": "hs512",
            "JWT_SECRET": "s" * 64,
            "JWT_ISSUER": " https://id.kadai ",
            "JWT_AUDIENCE": "gateway, admin-ui ,",
            "JWT_LEEWAY": "30s",
            "JWT_CACHE_SIZE": "0",
        }
    )
    assert settings.jwt_algorithms == ("HS512",)
    assert settings.jwt_issuer == "https://id.kadai"
    assert settings.jwt_audience == ("gateway", "admin-ui")
    assert (settings.jwt_leeway, settings.jwt_cache_size) == (30.0, 0)


def test_public_key_file_defaults_to_the_algorithm_of_its_key(tmp_path: Path, rsa_pem: str) -> None:
    assert load_settings({"JWT_PUBLIC_KEY_FILE": rsa_pem}).jwt_algorithms == ("RS256",)
    ec_pem = write_public_pem(tmp_path / "ec.pem", ec_key("p384", "P-384"))
    settings = load_settings({"JWT_PUBLIC_KEY_FILE": str(ec_pem)})
    assert settings.jwt_algorithms == ("ES384",) and settings.jwt_key_source == "publicKeyFile"


def test_jwks_defaults_to_rs256() -> None:
    settings = load_settings({"JWT_JWKS_URL": "https://id.kadai/.well-known/jwks.json"})
    assert settings.jwt_algorithms == ("RS256",) and settings.jwt_key_source == "jwks"


def test_production_with_public_keys_needs_no_secret_and_never_gets_the_development_one(rsa_pem: str) -> None:
    for environ in ({"JWT_PUBLIC_KEY_FILE": rsa_pem}, {"JWT_JWKS_URL": "https://id.kadai/jwks"}):
        settings = load_settings({"KADAI_ENV": "production", **environ})
        assert settings.jwt_secret == ""
        assert settings.public_view()["jwtSecret"] == "not set"


def test_development_with_public_keys_keeps_the_development_secret_for_kadai_token(rsa_pem: str) -> None:
    assert load_settings({"JWT_PUBLIC_KEY_FILE": rsa_pem}).jwt_secret == DEV_JWT_SECRET


@pytest.mark.parametrize(
    ("environ", "variable", "reason"),
    [
        ({"JWT_ALGORITHMS": "none"}, "JWT_ALGORITHMS", "never accepted"),
        ({"JWT_ALGORITHMS": "HS256,NoNe"}, "JWT_ALGORITHMS", "never accepted"),
        ({"JWT_ALGORITHMS": "HS256,RS256", "JWT_PUBLIC_KEY_FILE": "{rsa}"}, "JWT_ALGORITHMS", "key confusion"),
        ({"JWT_ALGORITHMS": "XS1"}, "JWT_ALGORITHMS", "unsupported algorithm 'XS1'"),
        ({"JWT_ALGORITHMS": "HS256", "JWT_PUBLIC_KEY_FILE": "{rsa}"}, "JWT_ALGORITHMS", "verified with JWT_SECRET"),
        ({"JWT_ALGORITHMS": "RS256"}, "JWT_ALGORITHMS", "need JWT_PUBLIC_KEY_FILE or JWT_JWKS_URL"),
        ({"JWT_ALGORITHM": "RS256"}, "JWT_ALGORITHM", "the allow-list is JWT_ALGORITHMS"),
        ({"JWT_PUBLIC_KEY_FILE": "{rsa}", "JWT_JWKS_URL": "https://id/jwks"}, "JWT_JWKS_URL", "not both"),
        ({"JWT_PUBLIC_KEY_FILE": "{missing}"}, "JWT_PUBLIC_KEY_FILE", "cannot read"),
        ({"JWT_PUBLIC_KEY_FILE": "{private}"}, "JWT_PUBLIC_KEY_FILE", "holds a private key"),
        ({"JWT_PUBLIC_KEY_FILE": "{garbage}"}, "JWT_PUBLIC_KEY_FILE", "not a PEM public key"),
        ({"JWT_PUBLIC_KEY_FILE": "{small}"}, "JWT_PUBLIC_KEY_FILE", "at least 2048"),
        ({"JWT_PUBLIC_KEY_FILE": "{rsa}", "JWT_ALGORITHMS": "ES256"}, "JWT_PUBLIC_KEY_FILE", "none of the allowed"),
        ({"JWT_JWKS_URL": "ftp://id/jwks"}, "JWT_JWKS_URL", "expected a https:// or http:// URL"),
        ({"KADAI_ENV": "production", "JWT_JWKS_URL": "http://id/jwks"}, "JWT_JWKS_URL", "must be an https:// URL"),
        ({"KADAI_ENV": "production", "JWT_JWKS_URL": "https://id/jwks", "JWT_SECRET": DEV_JWT_SECRET},
         "JWT_SECRET", "development secret is refused"),
        ({"KADAI_ENV": "production", "JWT_ALGORITHMS": "HS512", "JWT_SECRET": "s" * 40}, "JWT_SECRET",
         "at least 64 characters"),
        ({"KADAI_ENV": "production", "JWT_ALGORITHMS": "HS256"}, "JWT_SECRET", "required when KADAI_ENV=production"),
        ({"JWT_LEEWAY": "10m"}, "JWT_LEEWAY", "at most 5m"),
        ({"JWT_LEEWAY": "a while"}, "JWT_LEEWAY", "expected a duration"),
        ({"JWT_CACHE_SIZE": "-1"}, "JWT_CACHE_SIZE", "expected a whole number"),
        ({"JWT_CACHE_SIZE": "lots"}, "JWT_CACHE_SIZE", "expected a whole number"),
        ({"JWT_JWKS_CACHE_TTL": "0"}, "JWT_JWKS_CACHE_TTL", "must be above zero"),
        ({"JWT_JWKS_REFRESH_INTERVAL": "0s"}, "JWT_JWKS_REFRESH_INTERVAL", "must be above zero"),
    ],
    ids=["none", "none-in-list", "mixed", "unknown", "hs-with-key-file", "rs-without-keys", "singular-name",
         "two-sources", "missing-file", "private-key", "not-pem", "small-rsa", "key-type-vs-alg", "jwks-scheme",
         "prod-jwks-http", "prod-dev-secret-with-jwks", "prod-hs512-short", "prod-hs-no-secret", "leeway-too-wide",
         "leeway-word", "cache-negative", "cache-word", "jwks-ttl-zero", "jwks-interval-zero"],
)
def test_bad_jwt_variable_is_named(
    tmp_path: Path, rsa_pem: str, environ: dict[str, str], variable: str, reason: str
) -> None:
    (tmp_path / "private.pem").write_bytes(private_pem(rsa_key("a")))
    (tmp_path / "garbage.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    write_public_pem(tmp_path / "small.pem", rsa_key("small", 1024))
    files = {"rsa": rsa_pem, "missing": str(tmp_path / "missing.pem"), "private": str(tmp_path / "private.pem"),
             "garbage": str(tmp_path / "garbage.pem"), "small": str(tmp_path / "small.pem")}
    problems = problems_of({key: value.format(**files) for key, value in environ.items()})
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{variable}: ")
    assert reason in problems[0]


def test_public_view_masks_the_jwks_url_and_never_shows_the_secret() -> None:
    settings = load_settings(
        {"JWT_JWKS_URL": "https://svc:pw@id.kadai/jwks?api_key=topsecret", "JWT_SECRET": STRONG,
         "JWT_AUDIENCE": "gateway"}
    )
    view = settings.public_view()
    text = str(view) + repr(settings)
    assert "topsecret" not in text and ":pw@" not in text and STRONG not in text
    assert view["jwt"] == {
        "algorithms": ["RS256"],
        "keySource": "jwks",
        "publicKeyFile": None,
        "jwksUrl": "https://svc:***@id.kadai/jwks",
        "issuer": None,
        "audience": ["gateway"],
        "leewaySeconds": 5.0,
    }


def test_settings_built_in_code_default_to_hs256() -> None:
    assert Settings().jwt_algorithms == ("HS256",) and Settings().jwt_key_source == "secret"
