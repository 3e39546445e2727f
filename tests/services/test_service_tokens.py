"""Service tokens from user-service (POST /service-tokens, client credentials: a service's credential
derived from KADAI_SERVICE_SECRET, or that secret) and the kit's client fetching them when its service
cannot sign: real apps and a real `kadai service` process on loopback, real RSA keys and tokens."""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth import TokenVerifier
from gateway.config.loader import load_registry
from services.kit import ServiceSettings, load_service_settings
from services.kit.credential import service_credential
from services.kit.tokens import SigningUnavailable
from services.user import SERVICE as USER_SERVICE
from tests.integration.helpers import TIMESTAMP
from tests.process.helpers import clean_env, json_lines, run_kadai, start_kadai_service, wait_until
from tests.services import demo
from tests.services.conftest import MakeSettings, Serve
from tests.services.helpers import Served, bearer
from tests.support import REPO, free_port

SECRET = "test-service-secret-0123456789abcdef-XYZ"
CHALLENGE = 'Basic realm="kadai-services"'
ERROR_KEYS = {"success", "error", "statusCode", "timestamp", "requestId"}
TOKEN_ROUTE = {"method": "POST", "route": "/service-tokens", "status_class": "2xx"}


@dataclasses.dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


@pytest.fixture(scope="module")
def rsa_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    """The platform's RSA key pair: user-service signs with the private half, everyone verifies with the
    public half."""
    folder = tmp_path_factory.mktemp("keys")
    key = rsa.generate_private_key(65537, 2048)
    private, public = folder / "private.pem", folder / "public.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return KeyPair(private, public)


def from_env(make_settings: MakeSettings, folder: str = "", **environ: str) -> ServiceSettings:
    """Settings read from environment variables as `kadai service` reads them, on the test's data dir (a
    folder of it when given), in-process bus and short delays."""
    loaded = load_service_settings(environ)
    return make_settings(
        data_dir=make_settings().data_dir / folder,
        platform=dataclasses.replace(loaded.platform, drain_timeout=2.0),
        private_key_pem=loaded.private_key_pem,
        key_id=loaded.key_id,
        service_secret=loaded.service_secret,
        service_credential=loaded.service_credential,
        token_url=loaded.token_url,
        service_token_ttl=loaded.service_token_ttl,
        service_urls=loaded.service_urls,
        environ=environ,
    )


def basic(name: str, secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()}


async def fetch(method: str, url: str, **options: Any) -> tuple[int, Any, CIMultiDictProxy[str]]:
    """(status, decoded JSON body, headers) of one request."""
    async with aiohttp.ClientSession() as session, session.request(method, url, **options) as response:
        return response.status, await response.json(), response.headers


def assert_error(body: dict[str, Any], status: int, headers: CIMultiDictProxy[str]) -> None:
    assert set(body) >= ERROR_KEYS, body
    assert (body["success"], body["statusCode"]) == (False, status)
    assert TIMESTAMP.match(str(body["timestamp"])) and body["requestId"] == headers["X-Request-ID"]


def assert_nothing_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """None of the secrets (the shared secret, tokens) is in any log record, message or fields."""
    for record in caplog.records:
        logged = record.getMessage() + repr(getattr(record, "fields", None)) + repr(record.exc_info)
        for secret in secrets:
            assert secret not in logged, record


async def issue(users: Served, name: str = "order-service", secret: str = SECRET) -> dict[str, Any]:
    status, body, headers = await fetch("POST", users.url + "/service-tokens", headers=basic(name, secret))
    assert status == 200, body
    assert headers["Cache-Control"] == "no-store"
    return body


@dataclasses.dataclass
class PublicKeyPlatform:
    """Tokens verified with the platform's public key: only user-service holds the private key."""

    users: Served
    callee: Served
    """product-service: answers /whoami with the caller it verified."""
    caller: Served
    """order-service: no private key; fetches its service token from user-service."""

    def fetches(self) -> float:
        return self.users.metric("kadai_service_requests_total", **TOKEN_ROUTE)

    async def ask(self, request_id: str = "chain-1") -> tuple[int, Any, CIMultiDictProxy[str]]:
        """A user's request to order-service, which calls product-service with its service token."""
        headers = {**bearer(self.users.settings), "X-Request-ID": request_id}
        return await fetch("GET", self.caller.url + "/ask/product-service", headers=headers)


async def public_key_platform(
    serve: Serve, make_settings: MakeSettings, keys: KeyPair, *, token_ttl: int | None = None, **caller_env: str
) -> PublicKeyPlatform:
    verify = {"JWT_PUBLIC_KEY_FILE": str(keys.public)}
    users_settings = from_env(
        make_settings, **verify, JWT_PRIVATE_KEY_FILE=str(keys.private), KADAI_SERVICE_SECRET=SECRET
    )
    if token_ttl is not None:
        # Below KADAI_SERVICE_TOKEN_TTL's floor of 5 s so that a renewal comes within a second or two.
        users_settings = dataclasses.replace(users_settings, service_token_ttl=token_ttl)
    users = await serve(USER_SERVICE, users_settings)
    callee = await serve(demo.publisher("product-service"), from_env(make_settings, **verify))
    environ = {
        **verify,
        "KADAI_TOKEN_URL": users.url + "/",
        "KADAI_SERVICE_SECRET": SECRET,
        "PRODUCT_SERVICE_URL": callee.url,
        **caller_env,
    }
    caller = await serve(demo.publisher("order-service"), from_env(make_settings, **environ))
    return PublicKeyPlatform(users, callee, caller)


def test_no_route_of_the_shipped_registry_reaches_the_token_endpoint() -> None:
    registry = load_registry(REPO / "registry.yaml")
    reached = []
    for route in registry.routes:
        if route.service != "user-service":
            continue
        strip = route.options.strip_prefix
        # What the gateway forwards under this route: the prefix and below, with strip_prefix removed.
        below = route.prefix[len(strip) :] if strip and route.prefix.startswith(strip) else route.prefix
        reached.append(below)
        assert not ("/service-tokens" == below or "/service-tokens".startswith(below.rstrip("/") + "/")), route
    assert sorted(reached) == ["/auth", "/users"]


async def test_user_service_issues_a_service_token_the_platform_verifier_accepts(
    serve: Serve, make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "services.user")
    settings = from_env(make_settings, KADAI_SERVICE_SECRET=SECRET, KADAI_SERVICE_TOKEN_TTL="90s")
    users = await serve(USER_SERVICE, settings)

    body = await issue(users, "payment-service")

    assert set(body) == {"success", "data", "timestamp", "requestId"} and body["success"] is True
    data = body["data"]
    assert set(data) == {"accessToken", "tokenType", "expiresIn"}
    assert (data["tokenType"], data["expiresIn"]) == ("Bearer", 90)
    claims = await TokenVerifier(settings.platform).verify(data["accessToken"])
    assert (claims.sub, claims.role) == ("service:payment-service", "service")
    raw = jwt.decode(data["accessToken"], options={"verify_signature": False})
    assert raw["exp"] - raw["iat"] == 90
    [issued] = [record for record in caplog.records if record.getMessage() == "service token issued"]
    assert issued.fields == {"client": "payment-service", "expiresIn": 90}  # type: ignore[attr-defined]
    assert_nothing_logged(caplog, SECRET, data["accessToken"])


async def test_a_service_s_own_credential_gets_a_token_in_its_name(
    serve: Serve, make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = from_env(make_settings, KADAI_SERVICE_SECRET=SECRET)
    users = await serve(USER_SERVICE, settings)
    credential = service_credential(SECRET, "payment-service")

    body = await issue(users, "payment-service", credential)

    claims = await TokenVerifier(settings.platform).verify(body["data"]["accessToken"])
    assert (claims.sub, claims.role) == ("service:payment-service", "service")
    assert_nothing_logged(caplog, SECRET, credential, body["data"]["accessToken"])


def _basic_raw(text: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(text).decode()}


_REFUSED = [
    ("missing", {}, "Missing service credentials: send Authorization: Basic <service-name>:<credential>"),
    ("wrong-secret", basic("order-service", SECRET + "x"), "Invalid service credentials"),
    (
        "another-service-s-credential",
        basic("order-service", service_credential(SECRET, "payment-service")),
        "Invalid service credentials",
    ),
    (
        "credential-of-another-secret",
        basic("order-service", service_credential(SECRET + "x", "order-service")),
        "Invalid service credentials",
    ),
    ("empty-secret", basic("order-service", ""), "Invalid service credentials"),
    ("unknown-service", basic("billing-service"), "Invalid service credentials"),
    ("short-name", basic("order"), "Invalid service credentials"),
    ("no-colon", _basic_raw(b"order-service"), "Invalid service credentials"),
    ("bearer", {"Authorization": "Bearer abc.def.ghi"}, "Expected Authorization: Basic <service-name>:<credential>"),
    ("not-base64", {"Authorization": "Basic %%%"}, "Expected Authorization: Basic <service-name>:<credential>"),
    ("not-utf8", _basic_raw(b"order-service:\xff"), "Expected Authorization: Basic <service-name>:<credential>"),
    (
        "two-headers",
        CIMultiDict([*basic("order-service").items(), *basic("order-service").items()]),
        "Several Authorization headers",
    ),
]


@pytest.mark.parametrize(("headers", "message"), [case[1:] for case in _REFUSED], ids=[case[0] for case in _REFUSED])
async def test_bad_credentials_are_a_401_envelope_with_the_basic_challenge(
    serve: Serve, make_settings: MakeSettings, headers: Mapping[str, str], message: str
) -> None:
    users = await serve(USER_SERVICE, from_env(make_settings, KADAI_SERVICE_SECRET=SECRET))

    status, body, reply_headers = await fetch("POST", users.url + "/service-tokens", headers=headers)

    assert status == 401
    assert_error(body, 401, reply_headers)
    assert body["error"] == message
    assert reply_headers["WWW-Authenticate"] == CHALLENGE
    assert SECRET not in str(body)


async def test_without_the_service_secret_or_a_signing_key_nothing_is_issued(
    serve: Serve, make_settings: MakeSettings, rsa_keys: KeyPair
) -> None:
    switched_off = await serve(USER_SERVICE, from_env(make_settings))
    cannot_sign = await serve(
        USER_SERVICE,
        from_env(make_settings, "other", JWT_PUBLIC_KEY_FILE=str(rsa_keys.public), KADAI_SERVICE_SECRET=SECRET),
    )

    for users, message in (
        (switched_off, "This user-service issues no service tokens: KADAI_SERVICE_SECRET is not set"),
        (cannot_sign, "This user-service cannot sign service tokens: JWT_PRIVATE_KEY_FILE is not set"),
    ):
        status, body, headers = await fetch("POST", users.url + "/service-tokens", headers=basic("order-service"))
        assert status == 503
        assert_error(body, 503, headers)
        assert body["error"] == message


OWN_CREDENTIAL = {"KADAI_SERVICE_SECRET": "", "KADAI_SERVICE_CREDENTIAL": service_credential(SECRET, "order-service")}
"""order-service given its own credential and not the platform secret."""


@pytest.mark.parametrize("proof", [{}, OWN_CREDENTIAL], ids=["derived-from-the-secret", "own-credential-alone"])
async def test_a_service_without_the_private_key_calls_another_with_a_token_from_user_service(
    serve: Serve, make_settings: MakeSettings, rsa_keys: KeyPair, caplog: pytest.LogCaptureFixture,
    proof: dict[str, str],
) -> None:
    platform = await public_key_platform(serve, make_settings, rsa_keys, **proof)
    assert platform.caller.runtime.signer.unavailable is not None  # it really cannot sign
    assert (platform.caller.settings.service_secret is None) is bool(proof)

    first = await platform.ask("chain-1")
    second = await platform.ask("chain-2")

    for (status, body, _), request_id in ((first, "chain-1"), (second, "chain-2")):
        assert status == 200, body
        assert body["data"]["answer"] == {
            "id": "service:order-service",
            "role": "service",
            "service": "order-service",
            "requestId": request_id,
        }
    assert platform.fetches() == 1  # the second call reused the token
    token = await platform.caller.runtime.client.service_token()
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    public_key: Any = serialization.load_pem_public_key(rsa_keys.public.read_bytes())
    assert jwt.decode(token, public_key, algorithms=["RS256"])["sub"] == "service:order-service"
    assert_nothing_logged(caplog, SECRET, service_credential(SECRET, "order-service"), token)


async def test_the_fetched_token_is_renewed_before_it_expires(
    serve: Serve, make_settings: MakeSettings, rsa_keys: KeyPair
) -> None:
    platform = await public_key_platform(serve, make_settings, rsa_keys, token_ttl=3)
    client = platform.caller.runtime.client

    assert (await platform.ask())[0] == 200
    first = await client.service_token()
    issued = jwt.decode(first, options={"verify_signature": False})
    assert issued["exp"] - issued["iat"] == 3
    assert platform.fetches() == 1
    # The client counts the token as expiring 2 s after it asked (the issuer's whole seconds cost one) and
    # renews it once a quarter of its 3 s is left: 1.25 s after it asked.
    await asyncio.sleep(1.4)
    status, body, _ = await platform.ask()
    second = await client.service_token()

    assert status == 200, body
    assert platform.fetches() == 2
    assert second != first
    renewed = jwt.decode(second, options={"verify_signature": False})
    assert renewed["iat"] > issued["iat"] and renewed["exp"] > issued["exp"]


async def test_concurrent_callers_cause_one_fetch(serve: Serve, make_settings: MakeSettings, rsa_keys: KeyPair) -> None:
    # Renewed 2 s after it was fetched (4 s, less the issuer's whole second, less a quarter of 4 s).
    platform = await public_key_platform(serve, make_settings, rsa_keys, token_ttl=4)
    client = platform.caller.runtime.client

    first_wave = await asyncio.gather(*(platform.ask(f"first-{index}") for index in range(20)))
    tokens = await asyncio.gather(*(client.service_token() for _ in range(20)))
    assert [result[0] for result in first_wave] == [200] * 20
    assert platform.fetches() == 1 and len(set(tokens)) == 1

    await asyncio.sleep(2.1)  # past the renewal point
    renewals = await asyncio.gather(*(client.service_token() for _ in range(20)))
    second_wave = await asyncio.gather(*(platform.ask(f"second-{index}") for index in range(20)))

    assert [result[0] for result in second_wave] == [200] * 20
    assert platform.fetches() == 2 and len(set(renewals)) == 1 and renewals[0] != tokens[0]


async def test_while_user_service_is_away_the_token_in_hand_serves_until_it_expires(
    serve: Serve, make_settings: MakeSettings, rsa_keys: KeyPair
) -> None:
    platform = await public_key_platform(serve, make_settings, rsa_keys, token_ttl=6)
    before = time.time()
    assert (await platform.ask())[0] == 200
    after = time.time()  # the token was asked for in between
    assert after - before < 0.4, "the first call took too long for the timings below"
    await platform.users.stop()

    # The client counts the 6 s token as expiring 5 s after it asked (the issuer's iat is a whole second),
    # renews it from 3.5 s on (a quarter of 6 s left) and uses it until 1 s before it expires: 4 s.
    await asyncio.sleep(after + 3.55 - time.time())
    status, body, _ = await platform.ask()
    assert status == 200, body  # the renewal failed; the token in hand served
    await asyncio.sleep(after + 4.05 - time.time())
    status, body, headers = await platform.ask()

    assert status == 502
    assert_error(body, 502, headers)
    assert body["details"] == {"service": "user-service"}
    assert platform.fetches() == 1


async def test_a_service_that_holds_the_platform_key_signs_its_own_tokens(
    serve: Serve, make_settings: MakeSettings, rsa_keys: KeyPair
) -> None:
    platform = await public_key_platform(serve, make_settings, rsa_keys, JWT_PRIVATE_KEY_FILE=str(rsa_keys.private))

    status, body, _ = await platform.ask()

    assert status == 200, body
    assert body["data"]["answer"]["id"] == "service:order-service"
    assert platform.fetches() == 0  # no round trip


_WRONG_SECRET = "another-secret-of-forty-characters-xxxxx"
_SECRETS = (_WRONG_SECRET,)
_ISSUER_FAILURES = [
    ("wrong-secret", {"KADAI_SERVICE_SECRET": _WRONG_SECRET}, 401),
    (
        "another-service-s-credential",
        {"KADAI_SERVICE_SECRET": "", "KADAI_SERVICE_CREDENTIAL": service_credential(SECRET, "payment-service")},
        401,
    ),
    ("issuer-down", {"KADAI_TOKEN_URL": "http://127.0.0.1:{dead_port}"}, None),
]


@pytest.mark.parametrize(
    ("caller_env", "issuer_status"),
    [case[1:] for case in _ISSUER_FAILURES],
    ids=[case[0] for case in _ISSUER_FAILURES],
)
async def test_when_user_service_issues_no_token_the_call_is_a_502_naming_it(
    serve: Serve,
    make_settings: MakeSettings,
    rsa_keys: KeyPair,
    caplog: pytest.LogCaptureFixture,
    caller_env: dict[str, str],
    issuer_status: int | None,
) -> None:
    environ = {key: value.format(dead_port=free_port()) for key, value in caller_env.items()}
    platform = await public_key_platform(serve, make_settings, rsa_keys, **environ)

    status, body, headers = await platform.ask()

    assert status == 502
    assert_error(body, 502, headers)
    assert body["details"] == {"service": "user-service", **({"status": issuer_status} if issuer_status else {})}
    warnings = [record.getMessage() for record in caplog.records if record.name == "services.client"]
    expected = "user-service issued no service token: check KADAI_SERVICE_CREDENTIAL or KADAI_SERVICE_SECRET"
    assert warnings == [expected if issuer_status else "user-service could not be reached for a service token"]
    assert_nothing_logged(caplog, SECRET, *_SECRETS, *(value for value in environ.values() if len(value) == 64))


async def test_without_a_key_or_a_token_url_the_call_fails_with_the_reason(
    serve: Serve, make_settings: MakeSettings, rsa_keys: KeyPair, caplog: pytest.LogCaptureFixture
) -> None:
    settings = from_env(make_settings, JWT_PUBLIC_KEY_FILE=str(rsa_keys.public))
    caller = await serve(demo.publisher("order-service"), settings)
    user = from_env(make_settings, JWT_PUBLIC_KEY_FILE=str(rsa_keys.public), JWT_PRIVATE_KEY_FILE=str(rsa_keys.private))

    status, body, headers = await fetch("GET", caller.url + "/ask/product-service", headers=bearer(user))

    assert status == 500
    assert_error(body, 500, headers)
    [logged] = [record for record in caplog.records if record.name == "services.http"]
    assert logged.exc_info is not None and isinstance(logged.exc_info[1], SigningUnavailable)
    assert "KADAI_TOKEN_URL and KADAI_SERVICE_CREDENTIAL" in str(logged.exc_info[1])
    with pytest.raises(SigningUnavailable, match="set JWT_PRIVATE_KEY_FILE to sign them, or KADAI_TOKEN_URL"):
        await caller.runtime.client.service_token()


@pytest.fixture
def user_service_process(tmp_path: Path, rsa_keys: KeyPair) -> Iterator[tuple[str, Path]]:
    """`kadai service user` as an operator runs it on a public-key platform: (base URL, its log file)."""
    port = free_port()
    env = clean_env(
        AMQP_URL="memory://",
        KADAI_DATA_DIR=str(tmp_path / "process-data"),
        USER_SCRYPT_COST="10",
        PYTHONUNBUFFERED="1",
        JWT_PUBLIC_KEY_FILE=str(rsa_keys.public),
        JWT_PRIVATE_KEY_FILE=str(rsa_keys.private),
        KADAI_SERVICE_SECRET=SECRET,
    )
    env.pop("KADAI_TOKEN_URL", None)
    log_path = tmp_path / "user-service.log"
    process = start_kadai_service("user", port, env, log_path)
    try:
        yield f"http://127.0.0.1:{port}", log_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
async def running_user_service(user_service_process: tuple[str, Path]) -> AsyncIterator[tuple[str, Path]]:
    url, log_path = user_service_process

    async def healthy() -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(url + "/health") as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    await wait_until(healthy, 15, f"user-service to answer; its log:\n{log_path.read_text()}")
    yield url, log_path


async def test_a_user_service_process_issues_tokens_and_logs_only_the_service_name(
    serve: Serve, make_settings: MakeSettings, rsa_keys: KeyPair, running_user_service: tuple[str, Path]
) -> None:
    url, log_path = running_user_service
    # As an operator hands order-service its own credential: printed from the secret user-service has.
    printed = run_kadai(["service-credential", "order"], env=clean_env(KADAI_SERVICE_SECRET=SECRET))
    assert printed.returncode == 0, printed.stderr
    credential = printed.stdout.strip()
    verify = {"JWT_PUBLIC_KEY_FILE": str(rsa_keys.public)}
    callee = await serve(demo.publisher("product-service"), from_env(make_settings, **verify))
    caller_settings = from_env(
        make_settings,
        **verify,
        KADAI_TOKEN_URL=url,
        KADAI_SERVICE_CREDENTIAL=credential,
        PRODUCT_SERVICE_URL=callee.url,
    )
    assert caller_settings.service_secret is None
    caller = await serve(demo.publisher("order-service"), caller_settings)
    signer_settings = from_env(make_settings, **verify, JWT_PRIVATE_KEY_FILE=str(rsa_keys.private))

    status, body, _ = await fetch("GET", caller.url + "/ask/product-service", headers=bearer(signer_settings))

    assert status == 200, body
    assert body["data"]["answer"]["id"] == "service:order-service"
    token = await caller.runtime.client.service_token()
    await wait_until(lambda: "service token issued" in log_path.read_text(), 5, "the issue to be logged")
    text = log_path.read_text()
    [issued] = [line for line in json_lines(text) if line["message"] == "service token issued"]
    assert (issued["service"], issued["client"], issued["expiresIn"]) == ("user-service", "order-service", 60)
    [started] = [line for line in json_lines(text) if "settings" in line]
    assert started["settings"]["serviceSecret"] == "set"
    assert SECRET not in text and credential not in text and token not in text
