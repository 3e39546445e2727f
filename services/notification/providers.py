"""Who delivers an SMS: a small Protocol and its two implementations.

- LogProvider (NOTIFY_PROVIDER=log, the default): the message is already recorded in the service's
  database; the provider logs it, the address masked, and reports it delivered.
- HttpProvider (NOTIFY_PROVIDER=http): POSTs {notificationId, channel, to, message, template} as JSON to
  NOTIFY_HTTP_URL with an Idempotency-Key header (the notification ID: a message sent again after a
  crash can be recognised), and a bearer token when NOTIFY_HTTP_TOKEN is set. 2xx is delivered; 408,
  429, 5xx and transport failures are worth another attempt; any other status refuses the message for good.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson

from gateway.logs import log_fields
from services.notification.config import NotifyConfig

log = logging.getLogger("services.notification")

_RETRYABLE_STATUSES = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class SmsMessage:
    notification_id: str
    to: str
    """The address: a phone number, else an email address or a user ID (see services/notification/service.py)."""
    body: str
    template: str


class SendFailed(Exception):
    """The provider did not take the message. permanent: no later attempt can succeed."""

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class SmsProvider(Protocol):
    name: str

    async def send(self, message: SmsMessage) -> str | None:
        """Deliver message; return the provider's message ID if it gives one. SendFailed otherwise."""

    async def close(self) -> None:
        """Release what the provider holds (connections)."""


def mask_address(address: str) -> str:
    """An address as logs may show it: a phone number keeps its first three and last two characters,
    an email its first letter and domain; anything else (a user ID) is not personal and stays."""
    if address.startswith("+") and address[1:].isdigit():
        return address[:3] + "*" * max(len(address) - 5, 1) + address[-2:]
    local, at, domain = address.partition("@")
    if at:
        return local[:1] + "***@" + domain
    return address


class LogProvider:
    name = "log"

    async def send(self, message: SmsMessage) -> str | None:
        log.info(
            "sms sent (log provider)",
            extra=log_fields(
                notificationId=message.notification_id,
                to=mask_address(message.to),
                template=message.template,
                text=message.body,
            ),
        )
        return None

    async def close(self) -> None:
        return None


class HttpProvider:
    name = "http"

    def __init__(self, url: str, *, token: str | None, timeout: float) -> None:
        self.url = url
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 2.0))
        # No cookies: every post carries its own credentials.
        self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())

    async def send(self, message: SmsMessage) -> str | None:
        headers = {"Content-Type": "application/json", "Idempotency-Key": message.notification_id}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        payload = {
            "notificationId": message.notification_id,
            "channel": "sms",
            "to": message.to,
            "message": message.body,
            "template": message.template,
        }
        try:
            async with self._session.post(
                self.url, data=orjson.dumps(payload), headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                raw = await response.read()
        except TimeoutError:
            raise SendFailed("the SMS endpoint did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise SendFailed(f"the SMS endpoint could not be reached ({type(exc).__name__})") from None
        if 200 <= response.status < 300:
            return _message_id(raw)
        permanent = response.status < 500 and response.status not in _RETRYABLE_STATUSES
        raise SendFailed(f"the SMS endpoint answered {response.status}", permanent=permanent)

    async def close(self) -> None:
        await self._session.close()


def _message_id(raw: bytes) -> str | None:
    """The provider's ID of the message, when it answers with a JSON object holding one."""
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    if isinstance(body, dict):
        for key in ("messageId", "id"):
            if isinstance(body.get(key), str | int):
                return str(body[key])
    return None


def make_provider(config: NotifyConfig) -> SmsProvider:
    if config.provider == "http":
        assert config.http_url is not None  # NotifyConfig requires it with provider http
        token = config.http_token.get_secret_value() if config.http_token else None
        return HttpProvider(config.http_url, token=token, timeout=config.http_timeout)
    return LogProvider()
