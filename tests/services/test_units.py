"""Pure logic of the kit, the events and user-service: settings, topic matching, SQL scripts, events,
declarations, tokens, password hashes, the catalogue."""
from __future__ import annotations

import io
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth import Claims, TokenRejected, TokenVerifier
from gateway.config.errors import ConfigError
from services import catalog
from services.catalog import CATALOG
from services.commands import print_service_credential
from services.events.event import Event, MalformedEvent
from services.events.memory import topic_matches
from services.events.types import SPEC_TYPES, check_type
from services.kit import Migration, Routes, Service
from services.kit.db import check_migrations, split_statements
from services.kit.credential import CREDENTIAL_FORM, service_credential
from services.kit.identity import Caller
from services.kit.settings import MEMORY_BUS_URL, ServiceSettings, load_service_settings
from services.kit.tokens import SigningUnavailable, TokenSigner
from services.user.config import UserConfig
from services.user.passwords import hash_password, needs_rehash, verify_password

_TOPICS = [
    ("exact", "order.created", "order.created", True),
    ("other-type", "order.created", "order.status.updated", False),
    ("star-one-word", "order.*", "order.created", True),
    ("star-not-two", "order.*", "order.status.updated", False),
    ("hash-many", "order.#", "order.status.updated", True),
    ("hash-none", "order.#", "order", True),
    ("hash-all", "#", "product.stock.updated", True),
    ("hash-middle", "product.#.updated", "product.stock.updated", True),
    ("prefix-only", "order", "order.created", False),
]


@pytest.mark.parametrize(
    ("pattern", "key", "expected"), [case[1:] for case in _TOPICS], ids=[case[0] for case in _TOPICS]
)
def test_topic_matching_follows_amqp(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


def test_sql_scripts_split_on_complete_statements_only() -> None:
    script = """
        CREATE TABLE a (x TEXT DEFAULT 'semi;colon');
        CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET x = 'y;'; DELETE FROM a WHERE x = ';'; END;
        ;
    """
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")
    with pytest.raises(ValueError, match="incomplete SQL statement"):
        split_statements("CREATE TRIGGER u AFTER INSERT ON a BEGIN DELETE FROM a;")


def test_migration_versions_must_count_from_one() -> None:
    check_migrations([Migration(1, "a", "SELECT 1"), Migration(2, "b", "SELECT 2")])
    with pytest.raises(ValueError, match="has version 3, expected 2"):
        check_migrations([Migration(1, "a", "SELECT 1"), Migration(3, "c", "SELECT 3")])


def test_events_travel_as_camel_case_json_and_refuse_garbage() -> None:
    event = Event.create("order.created", "order-service", {"orderId": "o1"}, request_id="req_1")
    wire = event.to_json()
    assert b'"requestId":"req_1"' in wire and b'"source":"order-service"' in wire
    assert Event.from_json(wire) == event
    for body in (b"not json", b"[]", b'{"id": "x"}', b"\xff"):
        with pytest.raises(MalformedEvent):
            Event.from_json(body)


def test_event_types_are_dotted_lowercase_words() -> None:
    for event_type in SPEC_TYPES:
        assert check_type(event_type) == event_type
    for bad in ("order", "Order.Created", "order.*", "order.#", "order..created", "order created"):
        with pytest.raises(ValueError, match="invalid event type"):
            check_type(bad)


def test_defaults_need_no_environment() -> None:
    settings = load_service_settings({})
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert (settings.data_dir, settings.events_prefix, settings.max_attempts) == (Path("var"), "kadai", 5)
    assert settings.service_url("order-service") == "http://127.0.0.1:3003"
    assert load_service_settings({"AMQP_URL": MEMORY_BUS_URL}).memory_bus


_BAD_ENV = [
    ("amqp-scheme", {"AMQP_URL": "http://broker"}, "AMQP_URL: expected an amqp://, amqps:// or memory:// URL"),
    ("prefix", {"KADAI_EVENTS_PREFIX": "has space"}, "KADAI_EVENTS_PREFIX:"),
    ("attempts-word", {"KADAI_EVENTS_MAX_ATTEMPTS": "many"}, "KADAI_EVENTS_MAX_ATTEMPTS: expected a whole number"),
    ("attempts-zero", {"KADAI_EVENTS_MAX_ATTEMPTS": "0"}, "KADAI_EVENTS_MAX_ATTEMPTS: must be at least 1"),
    ("delay", {"KADAI_EVENTS_RETRY_DELAY": "soon"}, "KADAI_EVENTS_RETRY_DELAY: expected a duration"),
    (
        "service-url",
        {"ORDER_SERVICE_URL": "ftp://orders"},
        "ORDER_SERVICE_URL: expected an http:// or https:// base URL",
    ),
    (
        "key-file",
        {"JWT_PRIVATE_KEY_FILE": "/nonexistent/key.pem"},
        "JWT_PRIVATE_KEY_FILE: cannot read /nonexistent/key.pem",
    ),
    ("platform", {"LOG_LEVEL": "LOUD"}, "LOG_LEVEL: expected one of"),
    (
        "production-broker",
        {"KADAI_ENV": "production", "JWT_SECRET": "x" * 40},
        "AMQP_URL: required when KADAI_ENV=production",
    ),
    (
        "production-memory",
        {"KADAI_ENV": "production", "JWT_SECRET": "x" * 40, "AMQP_URL": "memory://"},
        "AMQP_URL: memory:// (the in-process bus) is for development",
    ),
    ("production-secret", {"KADAI_ENV": "production", "AMQP_URL": "amqp://b/"}, "JWT_SECRET: required"),
    (
        "production-spec-broker-credentials",
        {"KADAI_ENV": "production", "JWT_SECRET": "x" * 40, "AMQP_URL": "amqp://kadai:kadai123@broker:5672/"},
        "AMQP_URL: its credentials are the development ones",
    ),
    (
        "production-guest-broker",
        {"KADAI_ENV": "production", "JWT_SECRET": "x" * 40, "AMQP_URL": "amqp://guest:guest@broker:5672/"},
        "AMQP_URL: its credentials are the development ones",
    ),
    (
        "production-service-secret",
        {"KADAI_ENV": "production", "JWT_SECRET": "x" * 40, "AMQP_URL": "amqp://b/", "KADAI_SERVICE_SECRET": "s" * 31},
        "KADAI_SERVICE_SECRET: use at least 32 characters in production",
    ),
    (
        "token-url-scheme",
        {"KADAI_TOKEN_URL": "ftp://users", "KADAI_SERVICE_SECRET": "s" * 40},
        "KADAI_TOKEN_URL: expected an http:// or https:// base URL",
    ),
    (
        "token-url-without-secret",
        {"KADAI_TOKEN_URL": "http://users:3001"},
        "KADAI_TOKEN_URL: set KADAI_SERVICE_CREDENTIAL (or KADAI_SERVICE_SECRET) too",
    ),
    (
        "credential-form",
        {"KADAI_SERVICE_CREDENTIAL": "not-a-derived-credential"},
        "KADAI_SERVICE_CREDENTIAL: expected the 64 hex digits `kadai service-credential NAME` prints",
    ),
]


@pytest.mark.parametrize(("environ", "problem"), [case[1:] for case in _BAD_ENV], ids=[case[0] for case in _BAD_ENV])
def test_bad_settings_name_their_variable(environ: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_service_settings(environ)
    assert any(line.startswith(problem) for line in caught.value.problems), caught.value.problems


def test_settings_never_show_secrets() -> None:
    settings = load_service_settings({"AMQP_URL": "amqp://kadai:kadai123@broker:5672/", "JWT_SECRET": "s" * 40})
    shown = repr(settings)
    assert "kadai123" not in shown and "s" * 40 not in shown and "***" in shown


def test_service_credentials_are_read_and_the_secret_is_never_shown() -> None:
    secret = "service-secret-" + "q" * 17  # 32 characters: the production minimum
    production = {"KADAI_ENV": "production", "JWT_SECRET": "x" * 40, "AMQP_URL": "amqp://b/"}
    settings = load_service_settings(
        {**production, "KADAI_SERVICE_SECRET": secret, "KADAI_TOKEN_URL": " http://users.internal:3001/ "}
    )
    assert (settings.service_secret, settings.token_url) == (secret, "http://users.internal:3001")
    assert secret not in repr(settings) and secret not in str(settings.public_view())
    assert settings.public_view()["serviceSecret"] == "set"
    assert settings.public_view()["tokenUrl"] == "http://users.internal:3001"
    unset = load_service_settings({"KADAI_SERVICE_SECRET": ""})
    assert (unset.service_secret, unset.token_url, unset.public_view()["serviceSecret"]) == (None, None, "not set")
    # Development takes a short secret; the refusal in production never repeats it.
    assert load_service_settings({"KADAI_SERVICE_SECRET": "dev"}).service_secret == "dev"
    with pytest.raises(ConfigError) as caught:
        load_service_settings({**production, "KADAI_SERVICE_SECRET": "tiny-secret-value"})
    assert "tiny-secret-value" not in str(caught.value)


def test_a_service_credential_is_read_never_shown_and_sent_in_place_of_the_secret() -> None:
    credential = service_credential("the-platform-secret", "order-service")
    settings = load_service_settings(
        {"KADAI_SERVICE_CREDENTIAL": f" {credential} ", "KADAI_TOKEN_URL": "http://users.internal:3001"}
    )
    assert (settings.service_credential, settings.service_secret) == (credential, None)
    assert settings.fetches_tokens
    assert credential not in repr(settings) and credential not in str(settings.public_view())
    assert settings.public_view()["serviceCredential"] == "set"
    assert settings.credential_of("order-service") == credential
    # Given the secret instead, a service sends its own credential derived from it, never the secret.
    shared = load_service_settings({"KADAI_SERVICE_SECRET": "the-platform-secret"})
    assert shared.credential_of("order-service") == credential
    assert shared.credential_of("payment-service") not in (credential, "the-platform-secret")
    assert not shared.fetches_tokens  # no KADAI_TOKEN_URL
    assert load_service_settings({}).credential_of("order-service") is None


def test_a_credential_belongs_to_one_service_and_one_secret() -> None:
    # Fixed: credentials handed out to deployments must not change with a release. The value is what
    # `printf 'kadai-service-credential:order-service' | openssl dgst -sha256 -hmac <secret>` prints.
    assert service_credential("s" * 32, "order-service") == (
        "7d224db45fd124b2c0346148148e2ac5f6893036c36218cd1ae01d2699e9334e"
    )
    credentials = {service_credential(secret, name) for secret in ("s" * 32, "t" * 32) for name in CATALOG}
    assert len(credentials) == 2 * len(CATALOG)
    assert all(CREDENTIAL_FORM.match(credential) for credential in credentials)


def test_the_credential_command_prints_a_service_s_credential_from_the_secret() -> None:
    out = io.StringIO()
    assert print_service_credential("order", {"KADAI_SERVICE_SECRET": "s" * 32}, out) == 0
    assert out.getvalue() == service_credential("s" * 32, "order-service") + "\n"
    assert print_service_credential("order-service", {}, io.StringIO()) == 2
    assert print_service_credential("billing-service", {"KADAI_SERVICE_SECRET": "s" * 32}, io.StringIO()) == 2


def test_other_services_can_be_pointed_elsewhere() -> None:
    settings = load_service_settings({"USER_SERVICE_URL": "http://users.internal:8080/"})
    assert settings.service_url("user-service") == "http://users.internal:8080"
    with pytest.raises(LookupError):
        settings.service_url("billing-service")


def test_a_service_config_names_its_variables() -> None:
    assert UserConfig.from_env({"USER_ACCESS_TOKEN_TTL": "15m"}).access_token_ttl == 900
    with pytest.raises(ConfigError) as caught:
        UserConfig.from_env({"USER_ACCESS_TOKEN_TTL": "forever", "USER_SCRYPT_COST": "40"})
    assert [problem.split(":")[0] for problem in caught.value.problems] == ["USER_ACCESS_TOKEN_TTL", "USER_SCRYPT_COST"]
    assert set(UserConfig.variables()) == {"USER_ACCESS_TOKEN_TTL", "USER_REFRESH_TOKEN_TTL", "USER_SCRYPT_COST"}


def test_declarations_are_checked_when_made() -> None:
    routes = Routes()
    with pytest.raises(ValueError, match="service name"):
        Service(name="Bad Name", port=1, routes=routes)
    with pytest.raises(ValueError, match="invalid event type"):
        Service(name="x-service", port=1, routes=routes, publishes=["order.*"])
    with pytest.raises(ValueError, match="expected 1"):
        Service(name="x-service", port=1, routes=routes, migrations=[Migration(2, "b", "SELECT 1")])
    with pytest.raises(ValueError, match="cannot require roles"):
        routes.get("/x", public=True, roles=["admin"])
    with pytest.raises(ValueError, match="cannot be /health"):
        routes.get("/health")


async def test_signed_tokens_verify_with_the_platform_verifier() -> None:
    settings = ServiceSettings()
    signer = TokenSigner(settings)
    verifier = TokenVerifier(settings.platform)

    user = await verifier.verify(signer.user_token("user_1", "a@b.io", "seller", 60).token)
    service = await verifier.verify(signer.service_token("order-service", 60).token)

    assert (user.sub, user.role, user.email) == ("user_1", "seller", "a@b.io")
    assert (service.sub, service.role) == ("service:order-service", "service")
    with pytest.raises(ValueError):
        signer.user_token("service:order-service", "x@y.io", "customer", 60)
    with pytest.raises(ValueError):
        signer.user_token("user_1", "x@y.io", "service", 60)


def _write_pair(tmp_path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    private, public = tmp_path / "private.pem", tmp_path / "public.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


_KEYS = [("rsa", "RS256"), ("p256", "ES256"), ("p384", "ES384")]


@pytest.mark.parametrize("algorithm", [case[1] for case in _KEYS], ids=[case[0] for case in _KEYS])
async def test_on_a_public_key_setup_tokens_are_signed_with_the_private_key(tmp_path: Path, algorithm: str) -> None:
    curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1()}.get(algorithm)
    key = ec.generate_private_key(curve) if curve else rsa.generate_private_key(65537, 2048)
    private, public = _write_pair(tmp_path, key)
    settings = load_service_settings(
        {
            "JWT_PRIVATE_KEY_FILE": str(private),
            "JWT_KEY_ID": "k1",
            "JWT_PUBLIC_KEY_FILE": str(public),
            "JWT_ISSUER": "kadai",
            "JWT_AUDIENCE": "kadai-api",
        }
    )

    token = TokenSigner(settings).service_token("user-service", 60).token

    assert jwt.get_unverified_header(token) == {"alg": algorithm, "kid": "k1", "typ": "JWT"}
    claims = jwt.decode(token, key.public_key(), algorithms=[algorithm], audience="kadai-api", issuer="kadai")
    assert claims["sub"] == "service:user-service"
    assert (await TokenVerifier(settings.platform).verify(token)).sub == "service:user-service"


def test_without_a_usable_key_signing_is_refused_with_the_reason(tmp_path: Path) -> None:
    _private, public = _write_pair(tmp_path, rsa.generate_private_key(65537, 2048))
    signer = TokenSigner(load_service_settings({"JWT_PUBLIC_KEY_FILE": str(public)}))

    with pytest.raises(SigningUnavailable, match="set JWT_PRIVATE_KEY_FILE"):
        signer.service_token("user-service", 60)


def test_an_unusable_private_key_is_refused(tmp_path: Path) -> None:
    weak, _ = _write_pair(tmp_path, rsa.generate_private_key(65537, 1024))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    (tmp_path / "other").mkdir()
    strong, _ = _write_pair(tmp_path / "other", rsa.generate_private_key(65537, 2048))
    cases = (
        ({"JWT_PRIVATE_KEY_FILE": str(weak)}, "at least 2048 bits"),
        ({"JWT_PRIVATE_KEY_FILE": str(garbage)}, "is not an unencrypted PEM private key"),
        ({"JWT_PRIVATE_KEY_FILE": str(strong)}, "the key signs RS256, which the platform does not verify"),
    )
    for environ, problem in cases:
        with pytest.raises(ConfigError, match=problem):
            load_service_settings(environ)


_CLAIMS = [
    ("user", Claims("user_1", "customer", 0), True),
    ("service", Claims("service:order-service", "service", 0), True),
    ("service-role-user-subject", Claims("user_1", "service", 0), False),
    ("user-role-service-subject", Claims("service:x", "admin", 0), False),
]


@pytest.mark.parametrize(("claims", "accepted"), [case[1:] for case in _CLAIMS], ids=[case[0] for case in _CLAIMS])
def test_callers_are_users_or_services_never_a_mix(claims: Claims, accepted: bool) -> None:
    if accepted:
        caller = Caller.from_claims(claims, "token")
        assert caller.is_service is (claims.role == "service")
        assert caller.service == ("order-service" if caller.is_service else None)
    else:
        with pytest.raises(TokenRejected):
            Caller.from_claims(claims, "token")


def test_password_hashes_carry_their_parameters_and_verify_in_constant_time() -> None:
    stored = hash_password("s3cret pass", cost=10)
    scheme, cost, r, p, _salt, _key = stored.split("$")
    assert (scheme, cost, r, p) == ("scrypt", "10", "8", "1")
    assert verify_password("s3cret pass", stored)
    assert not verify_password("s3cret pasS", stored)
    assert hash_password("s3cret pass", cost=10) != stored  # a fresh salt each time
    assert not verify_password("anything", "garbage") and not verify_password("anything", "md5$x$y$z$a$b")
    assert needs_rehash(stored, 11) and not needs_rehash(stored, 10) and needs_rehash("garbage", 10)


def test_a_catalogued_service_without_a_module_is_not_implemented_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        catalog.CATALOG, "future-service", catalog.CatalogEntry("future-service", "services.future", 3999)
    )
    with pytest.raises(catalog.UnknownService, match="future-service is not implemented yet"):
        catalog.load("future")


def test_the_catalogue_knows_every_service_and_its_port() -> None:
    assert {name: entry.port for name, entry in catalog.CATALOG.items()} == {
        "user-service": 3001,
        "product-service": 3002,
        "order-service": 3003,
        "payment-service": 3004,
        "notification-service": 3005,
        "broadcast-service": 3006,
        "analytics-service": 3007,
        "ai-service": 8000,
    }
    assert catalog.entry("user") is catalog.CATALOG["user-service"]
    assert catalog.load("user-service").name == "user-service"
    with pytest.raises(catalog.UnknownService, match="unknown service 'billing'"):
        catalog.entry("billing")
