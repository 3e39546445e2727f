"""user-service: registration, login with JWT and refresh tokens, the caller's profile.

    POST  /auth/register   public   201 {user}; 409 email taken; 422 invalid fields
    POST  /auth/login      public   {accessToken, refreshToken, tokenType, expiresIn, user}; 401 bad credentials
    POST  /auth/refresh    public   a new token pair; the refresh token sent is spent
    GET   /users/profile            the caller
    PATCH /users/profile            change name, email, password (email and password need currentPassword)
    GET   /users/{userId}  admin, service
    POST  /service-tokens  Basic <service>:<credential>   {accessToken, tokenType, expiresIn};
                           401 bad credentials; 503 when KADAI_SERVICE_SECRET is unset or nothing can sign

/service-tokens is for the services only: no gateway route reaches it (registry.yaml routes /api/v1/auth
and /api/v1/users here, to /auth/* and /users/*). Publishes user.created and user.updated through the outbox.
"""
from __future__ import annotations

import logging
from typing import Any

from gateway.logs import log_fields
from services.events import USER_CREATED, USER_UPDATED
from services.kit import (
    Call,
    Forbidden,
    NotFound,
    Ok,
    Routes,
    Row,
    Service,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
    error,
    ok,
    reply,
)
from services.kit.tokens import SigningUnavailable
from services.user import store
from services.user.config import UserConfig
from services.user.credentials import CHALLENGE, authenticated_service
from services.user.models import LoginIn, ProfilePatch, RefreshIn, RegisterIn, ServiceTokenOut, TokensOut, UserOut
from services.user.passwords import hash_password_async, needs_rehash, verify_password_async

log = logging.getLogger("services.user")

routes = Routes()


def _user_event(user: UserOut) -> dict[str, object]:
    """What other services learn about a user (never the password hash)."""
    return {"userId": user.id, "email": user.email, "name": user.name, "role": user.role}


@routes.post("/auth/register", public=True)
async def register(call: Call) -> Ok:
    body = await call.body(RegisterIn)
    if body.role == "admin":
        caller = call.optional_caller
        if caller is None or caller.role != "admin":
            raise Forbidden("Only an admin can create an admin account")
    config = call.config(UserConfig)
    password_hash = await hash_password_async(body.password, config.scrypt_cost)
    async with call.db.transaction() as tx:
        row = await store.insert_user(tx, body.email, body.name, body.role, password_hash)
        user = UserOut.from_row(row)
        tx.publish(USER_CREATED, {**_user_event(user), "createdAt": user.created_at})
    return ok({"user": user}, status=201, message="User registered")


async def _tokens(call: Call, user: Row, refresh_token: str) -> TokensOut:
    ttl = int(call.config(UserConfig).access_token_ttl)
    access = call.runtime.signer.user_token(user["id"], user["email"], user["role"], ttl)
    return TokensOut(
        access_token=access.token, refresh_token=refresh_token, expires_in=ttl, user=UserOut.from_row(user)
    )


@routes.post("/auth/login", public=True)
async def login(call: Call) -> TokensOut:
    body = await call.body(LoginIn)
    config = call.config(UserConfig)
    user = await store.user_by_email(call.db, body.email)
    stored = user["password_hash"] if user is not None else None
    if user is None or not await verify_password_async(body.password, stored, config.scrypt_cost):
        # One message for an unknown email and a wrong password: which emails exist stays private.
        raise Unauthorized("Invalid email or password")
    upgraded = None
    if needs_rehash(user["password_hash"], config.scrypt_cost):
        upgraded = await hash_password_async(body.password, config.scrypt_cost)
    async with call.db.transaction() as tx:
        if upgraded is not None:
            await store.set_password_hash(tx, user["id"], upgraded)
        refresh = await store.issue_refresh_token(tx, user["id"], config.refresh_token_ttl)
    return await _tokens(call, user, refresh)


@routes.post("/auth/refresh", public=True)
async def refresh(call: Call) -> TokensOut:
    body = await call.body(RefreshIn)
    config = call.config(UserConfig)
    async with call.db.transaction() as tx:
        # Committed whatever the outcome: a reused token's family must stay revoked.
        rotation = await store.rotate_refresh_token(tx, body.refresh_token, config.refresh_token_ttl)
    if rotation.outcome == "expired":
        raise Unauthorized("Refresh token expired")
    if rotation.outcome == "reused":
        raise Unauthorized("Refresh token already used; log in again")
    if rotation.user is None or rotation.token is None:
        raise Unauthorized("Invalid refresh token")
    return await _tokens(call, rotation.user, rotation.token)


async def _own_account(call: Call) -> Row:
    caller = call.caller
    if caller.is_service:
        raise Forbidden("A user token is required")
    user = await store.user_by_id(call.db, caller.id)
    if user is None:
        raise NotFound("No user for this token")
    return user


@routes.get("/users/profile")
async def get_profile(call: Call) -> Ok:
    return ok({"user": UserOut.from_row(await _own_account(call))})


@routes.patch("/users/profile")
async def update_profile(call: Call) -> Ok:
    body = await call.body(ProfilePatch)
    config = call.config(UserConfig)
    user = await _own_account(call)
    if body.needs_current_password:
        if body.current_password is None:
            raise ValidationFailed(
                details=[
                    {"field": "currentPassword", "message": "required to change email or password", "type": "missing"}
                ]
            )
        if not await verify_password_async(body.current_password, user["password_hash"], config.scrypt_cost):
            raise ValidationFailed(
                details=[{"field": "currentPassword", "message": "does not match", "type": "mismatch"}]
            )
    changes: dict[str, str] = {}
    if body.name is not None and body.name != user["name"]:
        changes["name"] = body.name
    if body.email is not None and body.email != user["email"]:
        changes["email"] = body.email
    if body.password is not None:
        changes["password_hash"] = await hash_password_async(body.password, config.scrypt_cost)
    if not changes:
        return ok({"user": UserOut.from_row(user)}, message="Nothing changed")
    async with call.db.transaction() as tx:
        row = await store.update_user(tx, user["id"], changes)
        if "password_hash" in changes:
            await store.revoke_refresh_tokens(tx, user["id"])  # other sessions end with the old password
        updated = UserOut.from_row(row)
        changed = sorted("password" if column == "password_hash" else column for column in changes)
        tx.publish(USER_UPDATED, {**_user_event(updated), "changed": changed, "updatedAt": updated.updated_at})
    return ok({"user": updated}, message="Profile updated")


@routes.get("/users/{user_id}", roles=("admin", "service"))
async def get_user(call: Call) -> Ok:
    user = await store.user_by_id(call.db, call.path("user_id"))
    if user is None:
        raise NotFound("No such user")
    return ok({"user": UserOut.from_row(user)})


@routes.post("/service-tokens", public=True)
async def issue_service_token(call: Call) -> Ok:
    """A service token for a service that cannot sign its own (client credentials)"""
    settings = call.runtime.settings
    if settings.service_secret is None:
        # Switched off, not broken: without the shared secret nobody could prove to be a service.
        raise ServiceUnavailable("This user-service issues no service tokens: KADAI_SERVICE_SECRET is not set")
    name = authenticated_service(call.request.headers.getall("Authorization", []), settings.service_secret)
    ttl = settings.service_token_ttl
    try:
        signed = call.runtime.signer.service_token(name, ttl)
    except SigningUnavailable:
        message = "This user-service cannot sign service tokens: JWT_PRIVATE_KEY_FILE is not set"
        raise ServiceUnavailable(message) from None
    log.info("service token issued", extra=log_fields(client=name, expiresIn=ttl))
    # RFC 6749 5.1: a token response is never cached.
    return ok(ServiceTokenOut(access_token=signed.token, expires_in=ttl), headers={"Cache-Control": "no-store"})


OPENAPI_PATHS: dict[str, dict[str, Any]] = {
    "/service-tokens": {
        "post": {
            "description": "For services, not reachable through the gateway. Send "
            "`Authorization: Basic base64(<service-name>:<credential>)` with a catalogue service's name and "
            "its credential (`kadai service-credential NAME`, derived from KADAI_SERVICE_SECRET); "
            'the token carries `sub: "service:<name>"`, `role: "service"` and lives '
            "KADAI_SERVICE_TOKEN_TTL seconds. A service that signs its own tokens never calls this.",
            "responses": {
                "200": reply("The service token.", ServiceTokenOut),
                "401": error(f"Missing or invalid service credentials (WWW-Authenticate: {CHALLENGE})."),
                "503": error("KADAI_SERVICE_SECRET is not set, or this user-service cannot sign."),
            },
        }
    }
}


SERVICE = Service(
    name="user-service",
    port=3001,
    routes=routes,
    migrations=store.MIGRATIONS,
    publishes=(USER_CREATED, USER_UPDATED),
    configs=(UserConfig,),
)
