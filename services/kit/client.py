"""Calls to another service: a service token, the current request ID, explicit timeouts.

    reply = await call.services.get("user-service", f"/users/{seller_id}")
    seller = reply.data                     # the envelope's data; ServiceCallFailed (502) unless 2xx

The token names this service (sub "service:<name>", role "service"), lives KADAI_SERVICE_TOKEN_TTL
seconds and is reused until a quarter of its lifetime is left. A service that holds the platform key
signs it itself; one that cannot (public-key verification without JWT_PRIVATE_KEY_FILE) fetches it from
user-service, `POST {KADAI_TOKEN_URL}/service-tokens` with Basic <name>:<its credential>
(KADAI_SERVICE_CREDENTIAL, or derived from KADAI_SERVICE_SECRET: services/kit/credential.py), one fetch at
a time however many calls wait for it. Pass token=call.caller.token to act on the caller's behalf instead.
A transport failure raises BadGateway (502) or GatewayTimeout (504), which a handler may catch or let
become the caller's error envelope.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.logs import log_fields, new_request_id, request_id_var
from services.kit.errors import BadGateway, GatewayTimeout
from services.kit.settings import ServiceSettings
from services.kit.tokens import TokenSigner

log = logging.getLogger("services.client")

# A token is renewed once less than this share of its lifetime is left.
_RENEW_SHARE = 0.25
# A fetched token with less than this left is not used: the call it goes with may take that long.
_EXPIRY_MARGIN = 1.0
# After a failed renewal, the token in hand serves this long before the next attempt.
_RETRY_PAUSE = 1.0
TOKEN_PATH = "/service-tokens"
"""user-service's token endpoint, below KADAI_TOKEN_URL."""
_ISSUER = "user-service"


@dataclass(slots=True)
class _HeldToken:
    token: str
    expires_at: float
    renew_at: float

    def usable(self) -> bool:
        return time.time() < self.expires_at - _EXPIRY_MARGIN


class ServiceCallFailed(BadGateway):
    """The other service answered with an error status; details carry its status and error message."""


class ServiceTokenUnavailable(BadGateway):
    """user-service (KADAI_TOKEN_URL) issued no token to this service: it could not be reached, refused the
    credentials or answered something else; details carry its status, the log says why."""


@dataclass(frozen=True, slots=True)
class ServiceReply:
    status: int
    body: Any
    """The decoded JSON body (the envelope), or None when it was not JSON."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def data(self) -> Any:
        """The envelope's data; ServiceCallFailed when the status is not 2xx."""
        self.raise_for_status()
        return self.body.get("data") if isinstance(self.body, dict) else None

    def raise_for_status(self) -> None:
        if not self.ok:
            error = self.body.get("error") if isinstance(self.body, dict) else None
            raise ServiceCallFailed(
                "A service this request depends on failed", details={"status": self.status, "error": error}
            )


class ServiceClient:
    def __init__(self, service: str, settings: ServiceSettings, signer: TokenSigner) -> None:
        self.service = service
        self.settings = settings
        self.signer = signer
        self._session: aiohttp.ClientSession | None = None
        self._held: _HeldToken | None = None
        self._fetching = asyncio.Lock()
        self._failed: tuple[float, str, Any] | None = None
        """(until when, why) after a failed fetch: the calls that waited for it fail alike, not one by one."""

    async def open(self) -> None:
        # One pooled session per process; no cookies: every call carries its own credentials.
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), json_serialize=lambda value: orjson.dumps(value).decode()
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def fetches_tokens(self) -> bool:
        """This service cannot sign its service tokens and gets them from user-service (KADAI_TOKEN_URL)."""
        return self.signer.unavailable is not None and self.settings.fetches_tokens

    async def service_token(self) -> str:
        """This service's token: the one in hand until a quarter of its lifetime is left, then a new one,
        signed here or fetched from user-service. SigningUnavailable when it can do neither."""
        held = self._held
        if held is not None and time.time() < held.renew_at:
            return held.token
        if not self.fetches_tokens:
            ttl = self.settings.service_token_ttl
            signed = self.signer.service_token(self.service, ttl)
            return self._hold(signed.token, signed.expires_at, ttl)
        if held is not None and self._fetching.locked() and held.usable():
            return held.token  # another call is renewing it; this one is still good meanwhile
        async with self._fetching:
            held = self._held
            if held is not None and time.time() < held.renew_at:
                return held.token  # renewed while this call waited
            usable = held is not None and held.usable()
            if self._failed is not None and time.time() < self._failed[0] and not usable:
                raise ServiceTokenUnavailable(self._failed[1], details=self._failed[2])
            try:
                token, expires_at, lifetime = await self._fetch_token()
            except ServiceTokenUnavailable as exc:
                self._failed = (time.time() + _RETRY_PAUSE, exc.message, exc.details)
                if held is None or not held.usable():
                    raise
                # user-service is away for a moment: the token in hand still serves, renewal is retried.
                held.renew_at = min(time.time() + _RETRY_PAUSE, held.expires_at - _EXPIRY_MARGIN)
                return held.token
            self._failed = None
            return self._hold(token, expires_at, lifetime)

    def _hold(self, token: str, expires_at: float, lifetime: float) -> str:
        self._held = _HeldToken(token, expires_at, expires_at - lifetime * _RENEW_SHARE)
        return token

    async def _fetch_token(self) -> tuple[str, float, int]:
        """POST {KADAI_TOKEN_URL}/service-tokens with this service's credentials: (token, when it expires,
        its lifetime)."""
        credential = self.settings.credential_of(self.service)
        assert self.settings.token_url is not None and credential is not None
        total = self.settings.call_timeout
        # Built here: aiohttp 3.14 deprecates BasicAuth, and its replacement is not in older releases.
        credentials = base64.b64encode(f"{self.service}:{credential}".encode()).decode()
        sent_at = time.time()
        details: dict[str, object] = {"service": _ISSUER}
        try:
            url = self.settings.token_url + TOKEN_PATH
            status, body = await self._send("POST", url, f"Basic {credentials}", total)
        except TimeoutError:
            log.warning("user-service did not issue a service token in time", extra=log_fields(timeout=total))
            raise ServiceTokenUnavailable(f"{_ISSUER} did not issue a service token in time", details=details) from None
        except aiohttp.ClientError as exc:
            log.warning("user-service could not be reached for a service token", extra=log_fields(error=str(exc)))
            message = f"{_ISSUER} could not be reached for a service token"
            raise ServiceTokenUnavailable(message, details=details) from None
        details["status"] = status
        data = body.get("data") if isinstance(body, dict) else None
        if status == 200 and isinstance(data, dict):
            token, lifetime = data.get("accessToken"), data.get("expiresIn")
            if (
                isinstance(token, str)
                and token
                and data.get("tokenType") == "Bearer"
                and isinstance(lifetime, int)
                and not isinstance(lifetime, bool)
                and lifetime > 0
            ):
                log.debug("service token fetched from user-service", extra=log_fields(expiresIn=lifetime))
                # Timed from when the request left, a second early: the issuer's iat and exp are whole
                # seconds, so its exp can be up to a second before sent_at + lifetime.
                return token, sent_at + lifetime - 1, lifetime
        error = body.get("error") if isinstance(body, dict) else None
        log.warning(
            "user-service issued no service token"
            + (": check KADAI_SERVICE_CREDENTIAL or KADAI_SERVICE_SECRET" if status == 401 else ""),
            extra=log_fields(status=status, error=error),
        )
        raise ServiceTokenUnavailable(f"{_ISSUER} issued no service token", details=details)

    async def request(
        self,
        method: str,
        service: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
        token: str | None = None,
    ) -> ServiceReply:
        """Call `service` (a catalogue name) at path; any status comes back as a ServiceReply."""
        total = timeout or self.settings.call_timeout
        authorization = f"Bearer {token or await self.service_token()}"
        url = self.settings.service_url(service) + path
        try:
            status, body = await self._send(method, url, authorization, total, json=json, params=params)
        except TimeoutError:
            raise GatewayTimeout(f"{service} did not answer in time", details={"service": service}) from None
        except aiohttp.ClientError:
            raise BadGateway(f"{service} could not be reached", details={"service": service}) from None
        return ServiceReply(status, body)

    async def _send(
        self, method: str, url: str, authorization: str, total: float, **options: Any
    ) -> tuple[int, Any]:
        """One request with the platform's conventions (the current request ID, JSON, no redirects, a total
        timeout): (status, the JSON body or None). TimeoutError or aiohttp.ClientError when nothing answered."""
        if self._session is None:
            raise RuntimeError("the service client is not open")
        headers = {
            "Authorization": authorization,
            "X-Request-ID": request_id_var.get() or new_request_id(),
            "Accept": "application/json",
        }
        async with self._session.request(
            method,
            url,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=total, connect=min(total, 2.0)),
            allow_redirects=False,
            **options,
        ) as response:
            raw = await response.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        return response.status, body

    async def get(self, service: str, path: str, **options: Any) -> ServiceReply:
        return await self.request("GET", service, path, **options)

    async def post(self, service: str, path: str, **options: Any) -> ServiceReply:
        return await self.request("POST", service, path, **options)

    async def put(self, service: str, path: str, **options: Any) -> ServiceReply:
        return await self.request("PUT", service, path, **options)

    async def patch(self, service: str, path: str, **options: Any) -> ServiceReply:
        return await self.request("PATCH", service, path, **options)

    async def delete(self, service: str, path: str, **options: Any) -> ServiceReply:
        return await self.request("DELETE", service, path, **options)
