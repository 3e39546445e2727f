"""Response cache in Redis, and the spec's graceful degradation: a stale copy when the service fails.

GET responses of routes that enable `cache:` are kept for the route's `ttl`, shortened by the
upstream's `Cache-Control: max-age`/`s-maxage`; `no-store`, `no-cache`, `private`, `Set-Cookie` and
`Vary: *` keep a response out. The gateway is a shared cache, so a request made with a token is keyed
by the token's user: one user's answer never reaches another; the host and scheme the client used are
part of the key too. A client's `Cache-Control: no-cache` skips the lookup, `no-store` skips the cache
entirely.

When the upstream fails (502/503/504, its breaker is open, or it answers 500, 502, 503 or 504), an entry
up to `stale_if_error` past its freshness is served instead, with `Age` and `Warning: 110` (RFC 5861's
stale-if-error), unless it carried `must-revalidate`, `proxy-revalidate` or `s-maxage`. Redis trouble
never fails a request: the cache is skipped and the error counted.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import ClassVar

import orjson
from multidict import CIMultiDict
from pydantic import Field

from gateway.errors import BadGateway, GatewayTimeout, ServiceUnavailable
from gateway.exchange import Exchange, Reply
from gateway.middleware.base import BuildContext, Handler, Middleware, MiddlewareConfig
from gateway.resources import Resources
from gateway.units import ByteSize, Duration

NAME = "cache"
PRIORITY = 5_000

log = logging.getLogger("gateway.cache")

_UNCACHEABLE_DIRECTIVES = frozenset({"no-store", "no-cache", "private"})
_NO_STALE_DIRECTIVES = frozenset({"must-revalidate", "proxy-revalidate", "s-maxage"})
"""Response directives that forbid a shared cache to serve a stale answer, even on error (RFC 9111, 4.2.4)."""
_FAILURE_STATUSES = frozenset({500, 502, 503, 504})
_KEY_HEADERS = ("Accept", "Accept-Encoding")
"""Request headers that commonly change the representation; part of every key."""
_FORWARDED_KEY_HEADERS = ("X-Forwarded-Host", "X-Forwarded-Proto")
"""Headers the gateway sends upstream, derived from the client's Host: services build links from them, so
unkeyed they would let one client's Host reach everybody's cached answer (cache poisoning)."""
_KEYED = frozenset({"accept", "accept-encoding", "authorization"})
"""What a Vary header may name for a response to be kept (Authorization: keys carry the user)."""
_LENGTH_HEADERS = ("Content-Length", "Transfer-Encoding")


class CacheConfig(MiddlewareConfig):
    ttl: Duration = Field(30.0, gt=0, description="How long a response is served from the cache without asking the service.")
    stale_if_error: Duration = Field(
        300.0, ge=0, description="How long past its freshness an entry may still be served when the service fails."
    )
    max_body_size: ByteSize = Field(262_144, gt=0, description="Largest response body kept (bigger ones stream through).")
    statuses: tuple[int, ...] = Field((200, 203, 204, 300, 301, 404, 410), description="Upstream statuses kept.")
    timeout: Duration = Field(0.05, gt=0, description="Longest wait for Redis on a lookup or a store.")


class CacheBackoff:
    """Process-wide: after a Redis failure the cache stays out of the way for a while (doubling up to
    BACKOFF_MAX), so an outage does not add the cache's timeout to every cached request. Kept in
    resources.components as its own health report."""

    COMPONENT = "responseCache"
    BACKOFF = 1.0
    BACKOFF_MAX = 30.0

    def __init__(self) -> None:
        self.until = 0.0
        self.delay = 0.0
        self.last_error: str | None = None

    @classmethod
    def of(cls, resources: Resources) -> CacheBackoff:
        current = resources.components.get(cls.COMPONENT)
        if isinstance(current, cls):
            return current
        backoff = cls()
        resources.components[cls.COMPONENT] = backoff
        return backoff

    def open(self) -> bool:
        return time.monotonic() >= self.until

    def failed(self, error: str) -> None:
        first = self.delay == 0.0
        self.delay = min(self.BACKOFF_MAX, self.delay * 2 if self.delay else self.BACKOFF)
        self.until = time.monotonic() + self.delay
        self.last_error = error
        if first:
            log.warning("response cache: Redis failed (%s); skipping the cache for a while", error)

    def succeeded(self) -> None:
        if self.delay:
            log.info("response cache: Redis answers again")
        self.delay = 0.0
        self.until = 0.0
        self.last_error = None

    def __call__(self) -> dict[str, object]:
        return {
            "state": "ok" if self.delay == 0.0 else "backing-off",
            "retryInSeconds": round(max(0.0, self.until - time.monotonic()), 3),
            "lastError": self.last_error,
        }


class CacheMiddleware(Middleware):
    NAME: ClassVar[str] = NAME
    PRIORITY: ClassVar[int] = PRIORITY
    Config: ClassVar[type[MiddlewareConfig]] = CacheConfig

    def __init__(self, config: CacheConfig, context: BuildContext) -> None:
        super().__init__(config, context)
        self.resources = context.resources
        self.ttl = config.ttl
        self.stale_if_error = config.stale_if_error
        self.max_body_size = config.max_body_size
        self.statuses = frozenset(config.statuses)
        self.timeout = config.timeout
        self.key_prefix = f"kadai:cache:{context.service}:"
        lookups = context.resources.metrics.cache_lookups
        self.counted = {result: lookups.labels(context.service, result) for result in ("hit", "miss", "stale", "bypass", "error")}
        self.pending: set[asyncio.Task[None]] = set()
        self.backoff = CacheBackoff.of(context.resources)

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Reply:
        request = exchange.request
        redis = self.resources.redis
        if request.method != "GET" or redis is None:
            return await call_next(exchange)
        if not self.backoff.open():
            self.counted["bypass"].inc()
            return await call_next(exchange)
        client_directives = _directives(request.headers.get("Cache-Control", ""))
        if "no-store" in client_directives or (
            exchange.user is None and "Authorization" in request.headers  # a token nobody checked
        ):
            self.counted["bypass"].inc()
            return await call_next(exchange)
        key = self._key(exchange)
        entry: _Entry | None = None
        if "no-cache" not in client_directives:
            entry = await self._load(key)
            if entry is not None and entry.age() < entry.fresh_for:
                self.counted["hit"].inc()
                return entry.reply(exchange, "HIT")
        try:
            reply = await call_next(exchange)
        except (BadGateway, GatewayTimeout, ServiceUnavailable) as error:
            stale = self._stale(entry)
            if stale is None:
                raise
            exchange.failure = f"served stale: {error.message}"
            return stale
        if reply.upstream is not None and reply.status in _FAILURE_STATUSES:
            stale = self._stale(entry)
            if stale is not None:
                reply.upstream.close()
                exchange.release_instance()
                exchange.failure = f"served stale: upstream answered {reply.status}"
                return stale
        self.counted["miss"].inc()
        return await self._store(exchange, key, reply)

    def _key(self, exchange: Exchange) -> str:
        request = exchange.request
        parts = [exchange.upstream_path]
        parts.extend(request.headers.get(name, "") for name in _KEY_HEADERS)
        upstream = exchange.upstream_headers
        assert upstream is not None, "set for every routed request"
        parts.extend(upstream.get(name, "") for name in _FORWARDED_KEY_HEADERS)
        parts.append(exchange.user.sub if exchange.user is not None else "")
        digest = hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()
        return self.key_prefix + digest

    def _stale(self, entry: _Entry | None) -> Reply | None:
        if entry is None or entry.age() > entry.fresh_for + self.stale_if_error or entry.forbids_stale():
            return None
        self.counted["stale"].inc()
        return entry.reply(None, "STALE")

    async def _load(self, key: str) -> _Entry | None:
        try:
            raw = await asyncio.wait_for(self.resources.redis.get(key), self.timeout)  # type: ignore[union-attr]
        except Exception as exc:  # Redis down or slow: the request goes on without the cache
            self._redis_failed("lookup", exc)
            return None
        self.backoff.succeeded()
        return _Entry.decode(raw) if raw else None

    async def _store(self, exchange: Exchange, key: str, reply: Reply) -> Reply:
        upstream = reply.upstream
        if upstream is None or reply.status not in self.statuses or not self.backoff.open():
            return reply
        fresh_for = _freshness(reply.headers, self.ttl)
        length = upstream.content_length
        if fresh_for <= 0 or length is None or length > self.max_body_size:
            return reply
        try:
            body = await upstream.read()
        except Exception:
            return reply  # the writer reports the broken body as it would have without the cache
        finally:
            upstream.release()
        headers = CIMultiDict(reply.headers)
        for name in _LENGTH_HEADERS:
            headers.popall(name, None)
        cached = Reply(reply.status, headers, body)
        entry = _Entry(reply.status, list(headers.items()), body, time.time(), fresh_for)
        task = asyncio.create_task(self._save(key, entry))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        headers["X-Cache"] = "MISS"
        return cached

    async def _save(self, key: str, entry: _Entry) -> None:
        lifetime_ms = int((entry.fresh_for + self.stale_if_error) * 1000) + 1
        try:
            await asyncio.wait_for(
                self.resources.redis.set(key, entry.encode(), px=lifetime_ms), self.timeout  # type: ignore[union-attr]
            )
        except Exception as exc:
            self._redis_failed("store", exc)

    def _redis_failed(self, action: str, exc: BaseException) -> None:
        self.counted["error"].inc()
        self.backoff.failed(f"{action}: {exc.__class__.__name__}")
        log.debug("response cache %s skipped: %s", action, exc.__class__.__name__)


class _Entry:
    __slots__ = ("status", "headers", "body", "stored_at", "fresh_for")

    def __init__(
        self, status: int, headers: list[tuple[str, str]], body: bytes, stored_at: float, fresh_for: float
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.stored_at = stored_at
        self.fresh_for = fresh_for

    def age(self) -> float:
        return max(0.0, time.time() - self.stored_at)

    def forbids_stale(self) -> bool:
        """Whether the upstream said this answer must never be served stale, not even on error."""
        values = [value for name, value in self.headers if name.lower() == "cache-control"]
        return not _NO_STALE_DIRECTIVES.isdisjoint(_directives(",".join(values)))

    def reply(self, exchange: Exchange | None, outcome: str) -> Reply:
        headers = CIMultiDict(self.headers)
        headers["Age"] = str(int(self.age()))
        headers["X-Cache"] = outcome
        if outcome == "STALE":
            headers["Warning"] = '110 - "Response is Stale"'
        return Reply(self.status, headers, self.body)

    def encode(self) -> bytes:
        meta = orjson.dumps([self.status, self.headers, self.stored_at, self.fresh_for])
        return len(meta).to_bytes(4, "big") + meta + self.body

    @classmethod
    def decode(cls, raw: bytes) -> _Entry | None:
        try:
            size = int.from_bytes(raw[:4], "big")
            status, headers, stored_at, fresh_for = orjson.loads(raw[4 : 4 + size])
            return cls(int(status), [(str(k), str(v)) for k, v in headers], raw[4 + size :], float(stored_at), float(fresh_for))
        except (ValueError, TypeError, orjson.JSONDecodeError):
            return None  # an entry of another format: treated as absent and overwritten


def _directives(header: str) -> dict[str, str]:
    directives: dict[str, str] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name:
            directives[name.lower()] = value.strip().strip('"')
    return directives


def _freshness(headers: CIMultiDict[str], ttl: float) -> float:
    """Seconds the response may be served from the cache; 0 when it must not be kept."""
    if "Set-Cookie" in headers:
        return 0.0
    varies = {name.strip().lower() for value in headers.getall("Vary", []) for name in value.split(",")}
    if varies - _KEYED - {""}:
        return 0.0  # "*" or a header the key does not carry
    directives = _directives(",".join(headers.getall("Cache-Control", [])))
    if _UNCACHEABLE_DIRECTIVES & directives.keys():
        return 0.0
    for name in ("s-maxage", "max-age"):
        if name in directives:
            try:
                return min(ttl, max(0.0, float(int(directives[name]))))
            except ValueError:
                return 0.0
    return ttl

