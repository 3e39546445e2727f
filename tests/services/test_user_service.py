"""user-service through real HTTP: registration, login, refresh tokens, the profile, and its events."""
from __future__ import annotations

import time
import warnings
from typing import Any

import aiohttp
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from gateway.auth import TokenVerifier
from services.events import USER_CREATED, USER_UPDATED
from services.user import SERVICE
from services.user.config import UserConfig
from tests.services.conftest import MakeSettings, Serve
from tests.services.helpers import EventProbe, Served, bearer

PASSWORD = "correct horse battery"


async def call(
    service: Served, method: str, path: str, *, token: str | None = None, **options: Any
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(options.pop("headers", {}))
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, service.url + path, headers=headers, **options) as response,
    ):
        return response.status, await response.json()


async def register(service: Served, email: str = "ann@example.com", **fields: Any) -> dict[str, Any]:
    status, body = await call(
        service, "POST", "/auth/register", json={"email": email, "password": PASSWORD, "name": "Ann", **fields}
    )
    assert status == 201, body
    return body["data"]["user"]


async def login(service: Served, email: str = "ann@example.com", password: str = PASSWORD) -> dict[str, Any]:
    status, body = await call(service, "POST", "/auth/login", json={"email": email, "password": password})
    assert status == 200, body
    return body["data"]


async def outbox(service: Served) -> list[tuple[str, str]]:
    rows = await service.runtime.db.fetchall("SELECT type, body FROM kadai_outbox ORDER BY seq")
    return [(row["type"], row["body"].decode()) for row in rows]


@pytest.fixture
async def users(serve: Serve, make_settings: MakeSettings) -> Served:
    return await serve(SERVICE, make_settings())


@pytest.mark.rabbitmq
async def test_registering_creates_the_account_and_publishes_user_created(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str
) -> None:
    service = await serve(SERVICE, make_settings(amqp_url=rabbitmq_server))

    status, body = await call(
        service,
        "POST",
        "/auth/register",
        json={"email": " Ann@Example.com ", "password": PASSWORD, "name": "Ann", "role": "seller"},
    )

    assert status == 201 and body["message"] == "User registered"
    user = body["data"]["user"]
    assert set(user) == {"id", "email", "name", "role", "createdAt", "updatedAt"}
    assert (user["email"], user["role"]) == ("ann@example.com", "seller")
    [event] = await probe.wait_for(1)
    assert (event.type, event.source) == (USER_CREATED, "user-service")
    assert event.data == {
        "userId": user["id"],
        "email": "ann@example.com",
        "name": "Ann",
        "role": "seller",
        "createdAt": user["createdAt"],
    }
    assert PASSWORD not in probe.received[0].body.decode() and "scrypt" not in probe.received[0].body.decode()


async def test_a_taken_email_is_409_whatever_its_case(users: Served) -> None:
    await register(users, "bob@example.com")

    status, body = await call(
        users, "POST", "/auth/register", json={"email": "BOB@example.com", "password": PASSWORD, "name": "Bob"}
    )

    assert status == 409 and body["error"] == "This email is already registered"
    assert [kind for kind, _ in await outbox(users)] == [USER_CREATED]


async def test_invalid_registrations_are_422_with_the_failing_fields(users: Served) -> None:
    status, body = await call(
        users,
        "POST",
        "/auth/register",
        json={"email": "not-an-email", "password": "short", "name": " ", "role": "superuser"},
    )

    assert status == 422
    assert {item["field"] for item in body["details"]} == {"email", "password", "name", "role"}
    assert await outbox(users) == []


async def test_only_an_admin_creates_an_admin(users: Served) -> None:
    fields = {"email": "root@example.com", "password": PASSWORD, "name": "Root", "role": "admin"}

    anonymous = await call(users, "POST", "/auth/register", json=fields)
    as_customer = await call(
        users, "POST", "/auth/register", json=fields, headers=bearer(users.settings, "user_x", "customer")
    )
    as_admin = await call(
        users, "POST", "/auth/register", json=fields, headers=bearer(users.settings, "user_boss", "admin")
    )

    assert [anonymous[0], as_customer[0], as_admin[0]] == [403, 403, 201]
    assert as_admin[1]["data"]["user"]["role"] == "admin"


async def test_login_issues_a_token_the_platform_verifies(users: Served) -> None:
    user = await register(users)

    tokens = await login(users, "ANN@example.com")

    assert tokens["tokenType"] == "Bearer" and tokens["expiresIn"] == 3600 and tokens["user"] == user
    claims = await TokenVerifier(users.settings.platform).verify(tokens["accessToken"])
    assert (claims.sub, claims.email, claims.role) == (user["id"], "ann@example.com", "customer")
    assert tokens["refreshToken"].startswith("rt_")


@pytest.mark.parametrize(
    ("environ", "ttl"),
    [({}, 3600), ({"USER_ACCESS_TOKEN_TTL": "15m"}, 900)],
    ids=["default-ttl", "configured-ttl"],
)
async def test_the_login_token_is_issued_now_for_the_access_token_ttl(
    serve: Serve, make_settings: MakeSettings, environ: dict[str, str], ttl: int
) -> None:
    service = await serve(SERVICE, make_settings(environ=environ))
    await register(service)

    before = int(time.time())
    tokens = await login(service)
    after = int(time.time())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)  # the spec's development secret is short
        claims = jwt.decode(
            tokens["accessToken"],
            service.settings.platform.jwt_secret,
            algorithms=["HS256"],
            options={"require": ["sub", "email", "role", "iat", "exp"]},
        )
    assert service.runtime.config(UserConfig).access_token_ttl == ttl
    assert before <= claims["iat"] <= after
    assert claims["exp"] - claims["iat"] == ttl == tokens["expiresIn"]


@pytest.mark.parametrize(
    ("email", "password"),
    [("ann@example.com", "wrong password"), ("nobody@example.com", PASSWORD)],
    ids=["wrong-password", "unknown-email"],
)
async def test_bad_credentials_are_one_401(users: Served, email: str, password: str) -> None:
    await register(users)

    status, body = await call(users, "POST", "/auth/login", json={"email": email, "password": password})

    assert (status, body["error"]) == (401, "Invalid email or password")


async def test_the_profile_is_the_callers_own(users: Served) -> None:
    user = await register(users)
    await register(users, "other@example.com")
    tokens = await login(users)

    status, body = await call(
        users, "GET", "/users/profile", token=tokens["accessToken"], headers={"X-User-ID": "user_other"}
    )
    anonymous, _ = await call(users, "GET", "/users/profile")
    as_service, _ = await call(
        users, "GET", "/users/profile", headers=bearer(users.settings, "service:order-service", "service")
    )

    assert status == 200 and body["data"]["user"] == user
    assert (anonymous, as_service) == (401, 403)


async def test_updating_the_profile_publishes_user_updated(users: Served) -> None:
    user = await register(users)
    token = (await login(users))["accessToken"]

    status, body = await call(users, "PATCH", "/users/profile", token=token, json={"name": "Ann Smith"})

    assert status == 200 and body["data"]["user"]["name"] == "Ann Smith"
    kind, payload = (await outbox(users))[-1]
    assert kind == USER_UPDATED and '"changed":["name"]' in payload and user["id"] in payload


async def test_email_and_password_changes_need_the_current_password(users: Served) -> None:
    await register(users)
    await register(users, "taken@example.com")
    tokens = await login(users)
    token = tokens["accessToken"]

    missing = await call(users, "PATCH", "/users/profile", token=token, json={"email": "new@example.com"})
    wrong = await call(
        users, "PATCH", "/users/profile", token=token, json={"email": "new@example.com", "currentPassword": "nope"}
    )
    taken = await call(
        users, "PATCH", "/users/profile", token=token, json={"email": "taken@example.com", "currentPassword": PASSWORD}
    )
    nothing = await call(users, "PATCH", "/users/profile", token=token, json={})
    changed = await call(
        users, "PATCH", "/users/profile", token=token, json={"password": "a brand new one", "currentPassword": PASSWORD}
    )

    assert (missing[0], missing[1]["details"][0]["field"]) == (422, "currentPassword")
    assert (wrong[0], wrong[1]["details"][0]["message"]) == (422, "does not match")
    assert taken[0] == 409
    assert nothing[0] == 422
    assert changed[0] == 200
    assert (await call(users, "POST", "/auth/login", json={"email": "ann@example.com", "password": PASSWORD}))[0] == 401
    await login(users, password="a brand new one")
    # Sessions opened with the old password end with it.
    assert (await call(users, "POST", "/auth/refresh", json={"refreshToken": tokens["refreshToken"]}))[0] == 401


async def test_refresh_tokens_rotate_and_a_reused_one_ends_the_session(users: Served) -> None:
    await register(users)
    first = await login(users)

    status, body = await call(users, "POST", "/auth/refresh", json={"refreshToken": first["refreshToken"]})
    second = body["data"]
    reused = await call(users, "POST", "/auth/refresh", json={"refreshToken": first["refreshToken"]})
    after_reuse = await call(users, "POST", "/auth/refresh", json={"refreshToken": second["refreshToken"]})
    unknown = await call(users, "POST", "/auth/refresh", json={"refreshToken": "rt_made_up"})

    assert status == 200 and second["refreshToken"] != first["refreshToken"] and second["accessToken"]
    assert (reused[0], reused[1]["error"]) == (401, "Refresh token already used; log in again")
    assert after_reuse[0] == 401  # the copy and the original are both revoked
    assert (unknown[0], unknown[1]["error"]) == (401, "Invalid refresh token")


async def test_other_services_and_admins_look_users_up(users: Served) -> None:
    user = await register(users)

    as_service = await call(
        users, "GET", f"/users/{user['id']}", headers=bearer(users.settings, "service:order-service", "service")
    )
    as_customer = await call(
        users, "GET", f"/users/{user['id']}", headers=bearer(users.settings, user["id"], "customer")
    )
    missing = await call(users, "GET", "/users/user_nobody", headers=bearer(users.settings, "user_boss", "admin"))

    assert as_service[0] == 200 and as_service[1]["data"]["user"] == user
    assert (as_customer[0], missing[0]) == (403, 404)


async def test_a_stronger_hash_setting_upgrades_stored_hashes_at_login(
    serve: Serve, make_settings: MakeSettings
) -> None:
    first = await serve(SERVICE, make_settings())
    user = await register(first)
    await first.stop()

    second = await serve(SERVICE, make_settings(environ={"USER_SCRYPT_COST": "11"}))
    await login(second)

    row = await second.runtime.db.fetchone("SELECT password_hash FROM users WHERE id = ?", (user["id"],))
    assert row is not None and row["password_hash"].startswith("scrypt$11$8$1$")
    await login(second)
