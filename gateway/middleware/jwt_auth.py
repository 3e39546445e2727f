"""JWT check: a route with `auth: true` needs a valid bearer token (and one of its roles, if it names any).

The verified identity goes upstream as X-User-ID and X-User-Role (the core already dropped client
copies) next to the original Authorization header, and sits on `exchange.user` for later middleware.
On `auth: false` routes a valid token still identifies the caller; a missing or bad one is ignored.
"""
from __future__ import annotations

import logging
from typing import Annotated, ClassVar

from pydantic import Field, StringConstraints

from gateway.auth.verifier import TokenRejected, TokenVerifier
from gateway.errors import Forbidden, InternalError, Unauthorized
from gateway.exchange import Exchange, Reply
from gateway.middleware.base import BuildContext, Handler, Middleware, MiddlewareConfig

NAME = "jwt"
PRIORITY = 8_000

REASONS = ("missing", "malformed", "expired", "signature", "claims", "unavailable", "role")

log = logging.getLogger("gateway.auth")

Role = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


class JwtConfig(MiddlewareConfig):
    roles: tuple[Role, ...] = Field(
        (),
        description="Roles allowed on the route (the token's `role` claim); empty admits any valid token. "
        "Not checked on auth: false routes.",
    )
    identify_optional: bool = Field(
        True,
        description="On auth: false routes, verify a token when one is sent and pass its identity on; "
        "a missing or invalid one is ignored there.",
    )
    realm: str = Field(
        "kadai", pattern=r"^[A-Za-z0-9 ._-]{1,64}$", description="realm of the WWW-Authenticate challenge."
    )


class JwtMiddleware(Middleware):
    NAME: ClassVar[str] = NAME
    PRIORITY: ClassVar[int] = PRIORITY
    Config: ClassVar[type[MiddlewareConfig]] = JwtConfig
    ENABLED_BY_DEFAULT: ClassVar[bool] = True
    EDGE: ClassVar[bool] = False

    def __init__(self, config: JwtConfig, context: BuildContext) -> None:  # type: ignore[override]
        super().__init__(config, context)
        self.resources = context.resources
        self.roles = frozenset(config.roles)
        self.identify_optional = config.identify_optional
        self.challenge = f'Bearer realm="{config.realm}"'
        counter = context.resources.metrics.auth_rejections
        self.rejections = {reason: counter.labels(context.service, reason) for reason in REASONS}

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Reply:
        route = exchange.route
        required = route is None or route.config.options.auth
        if not required and not self.identify_optional:
            return await call_next(exchange)
        values = exchange.request.headers.getall("Authorization", ())
        if not values:
            if required:
                raise self._reject(exchange, "missing", "Bearer token required", presented=False)
            return await call_next(exchange)
        try:
            token = _bearer_token(values)
            verifier = self._verifier()
            # A token seen before is a cache hit (nearly every request): no coroutine to run for it.
            claims = verifier.cached(token) or await verifier.verify_uncached(token)
        except TokenRejected as rejected:
            if required:
                raise self._reject(exchange, rejected.reason, rejected.message, presented=rejected.reason != "missing")
            return await call_next(exchange)
        if required and self.roles and claims.role not in self.roles:
            self.rejections["role"].inc()
            exchange.failure = "jwt: role"
            raise Forbidden(
                "Your role is not allowed on this route",
                headers={"WWW-Authenticate": f'{self.challenge}, error="insufficient_scope"'},
            )
        exchange.user = claims
        headers = exchange.upstream_headers
        if headers is not None:
            headers["X-User-ID"] = claims.sub
            if claims.role:
                headers["X-User-Role"] = claims.role
        return await call_next(exchange)

    def _verifier(self) -> TokenVerifier:
        verifier: TokenVerifier | None = self.resources.verifier
        if verifier is None:
            # The app's cleanup context creates it; without one nothing can be let through.
            log.error("jwt middleware has no token verifier: the gateway app did not start it")
            raise InternalError()
        return verifier

    def _reject(self, exchange: Exchange, reason: str, message: str, *, presented: bool) -> Unauthorized:
        counter = self.rejections.get(reason)
        if counter is None:  # a reason from a verifier other than ours
            counter = self.resources.metrics.auth_rejections.labels(self.context.service, reason)
        counter.inc()
        exchange.failure = f"jwt: {reason}"
        challenge = self.challenge
        if presented:
            # RFC 6750, 3.1: no error code when the request carried no bearer token at all.
            description = message.replace("\\", "").replace('"', "'")
            challenge += f', error="invalid_token", error_description="{description}"'
        return Unauthorized(message, headers={"WWW-Authenticate": challenge})


def _bearer_token(values: list[str]) -> str:
    """The token of the one Authorization header; TokenRejected for anything else."""
    if len(values) > 1:
        # Two credentials: which one a service reads is anyone's guess, so neither counts.
        raise TokenRejected("malformed", "Malformed Authorization header")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise TokenRejected("missing", "Bearer token required")
    token = token.strip(" ")
    if not token:
        raise TokenRejected("malformed", "Malformed Authorization header")
    return token
