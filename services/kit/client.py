"""Calls to another service: a service token, the current request ID, explicit timeouts.

    reply = await call.services.get("user-service", f"/users/{seller_id}")
    seller = reply.data                     # the envelope's data; ServiceCallFailed (502) unless 2xx

The token names this service (sub "service:<name>", role "service"), lives KADAI_SERVICE_TOKEN_TTL
seconds and is reused until shortly before it expires. Pass token=call.caller.token to act on the
caller's behalf instead. A transport failure raises BadGateway (502) or GatewayTimeout (504), which a
handler may catch or let become the caller's error envelope.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from gateway.logs import request_id_var
from services.kit.errors import BadGateway, GatewayTimeout
from services.kit.settings import ServiceSettings
from services.kit.tokens import SignedToken, TokenSigner

# A token is renewed once less than this share of its lifetime is left.
_RENEW_SHARE = 0.25


class ServiceCallFailed(BadGateway):
    """The other service answered with an error status; details carry its status and error message."""


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
        self._token: SignedToken | None = None

    async def open(self) -> None:
        # One pooled session per process; no cookies: every call carries its own credentials.
        self._session = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), json_serialize=lambda value: orjson.dumps(value).decode()
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def service_token(self) -> str:
        token, ttl = self._token, self.settings.service_token_ttl
        if token is None or token.expires_at - time.time() < ttl * _RENEW_SHARE:
            token = self._token = self.signer.service_token(self.service, ttl)
        return token.token

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
        if self._session is None:
            raise RuntimeError("the service client is not open")
        total = timeout or self.settings.call_timeout
        headers = {
            "Authorization": f"Bearer {token or self.service_token()}",
            "X-Request-ID": request_id_var.get() or "req_" + os.urandom(12).hex(),
            "Accept": "application/json",
        }
        url = self.settings.service_url(service) + path
        try:
            async with self._session.request(
                method,
                url,
                json=json,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=total, connect=min(total, 2.0)),
                allow_redirects=False,
            ) as response:
                raw = await response.read()
        except TimeoutError:
            raise GatewayTimeout(f"{service} did not answer in time", details={"service": service}) from None
        except aiohttp.ClientError:
            raise BadGateway(f"{service} could not be reached", details={"service": service}) from None
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        return ServiceReply(response.status, body)

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
