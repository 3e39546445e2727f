"""Public keys from a JWKS URL, fetched with aiohttp, cached, and refreshed at a bounded rate.

A token naming an unknown `kid` triggers a refresh (the issuer may have rotated its keys), but at most
one fetch per `min_interval`, shared by every request waiting for it: random kids cannot turn the
gateway into a flood against the identity provider. Keys older than `ttl` are refreshed in the
background while the old ones keep verifying.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

import aiohttp
import orjson

from gateway.auth.keys import KeyProblem, VerificationKey, key_from_jwk
from gateway.config.settings import public_url
from gateway.envelope import utc_timestamp
from gateway.logs import log_fields

log = logging.getLogger("gateway.auth")

MAX_JWKS_BYTES = 512 * 1024
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5.0, sock_connect=2.0)


class KeysUnavailable(Exception):
    """No key set could be fetched yet, so no token can be verified."""


class JwksKeys:
    """The key set behind one JWKS URL."""

    def __init__(
        self,
        url: str,
        algorithms: Iterable[str],
        *,
        ttl: float,
        min_interval: float,
        on_rotation: Callable[[], None] = lambda: None,
    ) -> None:
        self.url = url
        self.algorithms = tuple(algorithms)
        self.ttl = ttl
        self.min_interval = min_interval
        self.on_rotation = on_rotation
        """Called when a refresh drops a key (its kid gone, or naming another key): verdicts cached under the
        old keys must go."""
        self.keys: dict[str, VerificationKey] = {}
        self.unnamed: tuple[VerificationKey, ...] = ()
        """Keys without a kid; used only for tokens without one, and only when the set has a single key."""
        self.fetched_at: float | None = None
        """time.monotonic() of the last successful fetch."""
        self.fetched_wall: float | None = None
        self.attempted_at: float | None = None
        self.last_error: str | None = None
        self.fetches = 0
        self._session: aiohttp.ClientSession | None = None
        self._refresh: asyncio.Task[None] | None = None

    @property
    def count(self) -> int:
        return len(self.keys) + len(self.unnamed)

    async def start(self) -> None:
        """Fetch once; a failure is recorded (and logged), not raised: the next token retries."""
        await self._refresh_now()

    async def close(self) -> None:
        task, self._refresh = self._refresh, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def key_for(self, kid: str | None) -> VerificationKey | None:
        """The key a token names; None when the set (refreshed if allowed) does not have it.
        Raises KeysUnavailable when no key set was ever fetched."""
        if self.fetched_at is None:
            await self._refresh_now()
            if self.fetched_at is None:
                raise KeysUnavailable(self.last_error or "no key set fetched")
        elif time.monotonic() - self.fetched_at > self.ttl and self._may_fetch():
            self._start_refresh()
        key = self._lookup(kid)
        if key is None and kid is not None and self._may_fetch():
            await self._refresh_now()
            key = self._lookup(kid)
        return key

    def _lookup(self, kid: str | None) -> VerificationKey | None:
        if kid is not None:
            return self.keys.get(kid)
        if self.count == 1:
            return next(iter(self.keys.values()), None) or self.unnamed[0]
        return None

    def _may_fetch(self) -> bool:
        running = self._refresh is not None and not self._refresh.done()
        return running or self.attempted_at is None or time.monotonic() - self.attempted_at >= self.min_interval

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._fetch(), name="jwks-refresh")
        return self._refresh

    async def _refresh_now(self) -> None:
        """Join the running fetch or start one; a caller that goes away does not cancel it for the others."""
        if not self._may_fetch():
            return
        await asyncio.shield(self._start_refresh())

    async def _fetch(self) -> None:
        self.attempted_at = time.monotonic()
        self.fetches += 1
        try:
            named, unnamed, skipped = await self._download()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure keeps the previous keys; it is reported, never raised
            self.last_error = _describe_failure(exc)
            log.warning("JWKS fetch failed", extra=log_fields(jwksUrl=public_url(self.url), error=self.last_error))
            return
        # A kid now naming another key (or gone) drops its old key just as surely as a removed kid.
        dropped = [kid for kid, key in self.keys.items() if named.get(kid) != key]
        rotated = bool(dropped) or any(key not in unnamed for key in self.unnamed)
        self.keys, self.unnamed = named, unnamed
        self.fetched_at, self.fetched_wall = time.monotonic(), time.time()
        self.last_error = None
        if skipped:
            log.info("JWKS keys skipped", extra=log_fields(jwksUrl=public_url(self.url), skipped=skipped))
        if rotated:
            self.on_rotation()

    async def _download(self) -> tuple[dict[str, VerificationKey], tuple[VerificationKey, ...], list[str]]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=FETCH_TIMEOUT, cookie_jar=aiohttp.DummyCookieJar())
        request = self._session.get(self.url, allow_redirects=False, headers={"Accept": "application/json"})
        async with request as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            if (response.content_length or 0) > MAX_JWKS_BYTES:
                raise ValueError("key set too large")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("key set too large")
        document = orjson.loads(body)
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError("not a JWKS document (no 'keys' list)")
        named: dict[str, VerificationKey] = {}
        unnamed: list[VerificationKey] = []
        skipped: list[str] = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                skipped.append(f"keys[{index}]: not an object")
                continue
            try:
                key = key_from_jwk(entry, self.algorithms)
            except KeyProblem as exc:
                skipped.append(f"keys[{index}]: {exc}")
                continue
            if key.kid is None:
                unnamed.append(key)
            elif key.kid in named:
                skipped.append(f"keys[{index}]: duplicate kid")
            else:
                named[key.kid] = key
        if not named and not unnamed:
            raise ValueError("no usable key in the set" + (f" ({'; '.join(skipped[:3])})" if skipped else ""))
        return named, tuple(unnamed), skipped

    def describe(self) -> dict[str, object]:
        age = round(time.monotonic() - self.fetched_at, 3) if self.fetched_at is not None else None
        return {
            "url": public_url(self.url),
            "keys": self.count,
            "kids": sorted(self.keys),
            "lastRefresh": utc_timestamp(self.fetched_wall) if self.fetched_wall is not None else None,
            "ageSeconds": age,
            "fetches": self.fetches,
            "lastError": self.last_error,
            "ttlSeconds": self.ttl,
            "minRefreshIntervalSeconds": self.min_interval,
        }


def _describe_failure(exc: Exception) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error.__class__.__name__}"
    if isinstance(exc, orjson.JSONDecodeError):
        return "not JSON"
    if isinstance(exc, aiohttp.ClientError):
        # Their text can carry the full URL, query included.
        return exc.__class__.__name__
    if isinstance(exc, ValueError):
        return str(exc) or exc.__class__.__name__
    return exc.__class__.__name__
