"""Buckets in Redis without redis-py on the hot path: the decisions of one event-loop tick leave as one write.

Each decision is still one atomic EVALSHA of token_bucket.lua (the script and the decisions of
RedisBackend), packed by hand from bytes precomputed per plan, pipelined on one connection and parsed by
hiredis.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from yarl import URL

from gateway.config.settings import mask_url
from gateway.ratelimit.buckets import Decision, LimiterBackend, Plan
from gateway.ratelimit.redis_backend import SCRIPT, SCRIPT_SHA
from gateway.ratelimit.resp import EvalshaPacker, Reply, RespConnection, pack
from gateway.redis_client import CLIENT_NAME, CONNECT_TIMEOUT

MAX_PENDING = 10_000
"""Replies outstanding on the connection before it is dropped (a stalled Redis must not grow memory)."""
STALL_TIMEOUT = 2.0
"""Seconds the oldest outstanding reply may wait before the connection is dropped."""
MAX_PLANS = 1024
"""Plans whose packed bytes are kept; registry reloads make new plans, so the cache starts over past this."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where and how to connect: host and port, or a unix socket path; db, and optional credentials."""

    host: str
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """redis://[[user]:password@]host[:port][/db] or unix://[[user]:password@]/path[?db=N]."""
        parsed = URL(url)
        if parsed.scheme == "rediss":
            raise ValueError("TLS (rediss://) is not supported by the batched rate-limit backend, use RedisBackend")
        if parsed.scheme not in ("redis", "unix"):
            raise ValueError(f"not a redis:// or unix:// URL: {mask_url(url)}")
        query = parsed.query
        db_text = query.get("db") or (parsed.path.strip("/") if parsed.scheme == "redis" else "") or "0"
        if not db_text.isdigit():
            raise ValueError(f"the Redis database must be a number, not {db_text!r}: {mask_url(url)}")
        username = parsed.user or query.get("username") or None
        password = parsed.password or query.get("password") or None
        if parsed.scheme == "unix":
            if not parsed.path or parsed.path == "/":
                raise ValueError(f"a unix:// Redis URL needs a socket path: {mask_url(url)}")
            return cls("", 0, parsed.path, int(db_text), username, password)
        return cls(parsed.host or "127.0.0.1", parsed.port or 6379, None, int(db_text), username, password)

    def handshake(self, client_name: str) -> list[tuple[str, bytes]]:
        """The commands sent on connect, each with the name it is reported under when refused."""
        commands = []
        if self.password is not None:
            auth = (self.username, self.password) if self.username else (self.password,)
            commands.append(("AUTH", pack(b"AUTH", *auth)))
        if self.db:
            commands.append(("SELECT", pack(b"SELECT", self.db)))
        commands.append(("CLIENT SETNAME", pack(b"CLIENT", b"SETNAME", client_name)))
        return commands


def to_decision(reply: list[int]) -> Decision:
    """The script's reply [allowed, tier (1-based), remaining or wait_ms, full_ms] as a Decision."""
    allowed, tier, amount, reset_ms = reply
    if allowed:
        return Decision(True, tier - 1, amount, reset_ms, 0)
    return Decision(False, tier - 1, 0, reset_ms, amount)


class BatchedRedisBackend(LimiterBackend):
    """Shared buckets on one pipelined connection of its own, opened on first use and again after a failure.

    A failed connection fails the calls waiting on it (their commands may have run, so they are not resent);
    the next call reconnects, one attempt shared by all concurrent callers.
    """

    kind: ClassVar[str] = "redis"

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        client_name: str = CLIENT_NAME,
        max_pending: int = MAX_PENDING,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self.address = RedisAddress.from_url(url)
        self.where = mask_url(url)
        self.connect_timeout = connect_timeout
        self.max_pending = max_pending
        self.stall_timeout = stall_timeout
        self.script_loads = 0
        """Times the script was (re)loaded into Redis: once at first use, again after a NOSCRIPT."""
        self.connection: RespConnection | None = None
        self._handshake = self.address.handshake(client_name)
        self._packers: dict[Plan, EvalshaPacker] = {}
        self._connecting: asyncio.Task[RespConnection] | None = None
        self._loading: asyncio.Task[None] | None = None
        self._load_command = pack(b"SCRIPT", b"LOAD", SCRIPT)

    deadline_aware: ClassVar[bool] = True
    """acquire() takes the call's timeout itself (the limiter then adds no asyncio.timeout of its own)."""

    async def acquire(self, plan: Plan, client: str, timeout: float | None = None) -> Decision:
        packer = self._packers.get(plan)
        if packer is None:
            packer = self._packer(plan)
        command = packer.command(client)
        connection = self.connection
        if connection is None or connection.closed or timeout is None:
            if timeout is None:
                return await self._acquire(command)
            # Connecting (or anything else off the fast path) counts against the same timeout.
            async with asyncio.timeout(timeout):
                return await self._acquire(command)
        reply = await connection.call(command, timeout)
        if type(reply) is list:
            return to_decision(reply)
        async with asyncio.timeout(timeout):
            return await self._after(reply, command)

    async def _acquire(self, command: bytes) -> Decision:
        reply = await (await self._connect()).call(command)
        if type(reply) is list:
            return to_decision(reply)
        return await self._after(reply, command)

    async def _after(self, reply: Reply, command: bytes) -> Decision:
        """A reply that is not a decision: NOSCRIPT is answered by loading the script and asking again."""
        if not (isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")):
            raise _unexpected(reply)
        # The script cache is empty (first use, restart, SCRIPT FLUSH, failover). NOSCRIPT means the script
        # did not run, so sending the command again cannot consume twice.
        await self._load()
        reply = await (await self._connect()).call(command)
        if type(reply) is list:
            return to_decision(reply)
        raise _unexpected(reply)

    async def close(self) -> None:
        """Close the connection; calls still waiting fail with ConnectionError. A later call reconnects."""
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        connection, self.connection = self.connection, None
        if connection is not None and not connection.closed:
            connection.drop("the rate-limit backend was closed")
            await connection.lost

    def _packer(self, plan: Plan) -> EvalshaPacker:
        if len(self._packers) >= MAX_PLANS:
            self._packers.clear()
        packer = EvalshaPacker(SCRIPT_SHA, plan.key_heads, "}", plan.script_args)
        self._packers[plan] = packer
        return packer

    async def _connect(self) -> RespConnection:
        """The open connection, or one new connection shared by every caller that asks while it opens."""
        connection = self.connection
        if connection is not None and not connection.closed:
            return connection
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.create_task(self._open())
            connecting.add_done_callback(self._opened)
        try:
            return await asyncio.shield(connecting)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if connecting.cancelled() and task is not None and not task.cancelling():
                raise RedisConnectionError("the rate-limit backend was closed while connecting") from None
            raise

    def _opened(self, task: asyncio.Task[RespConnection]) -> None:
        opened = not task.cancelled() and task.exception() is None
        if self._connecting is not task:  # close() gave up on this attempt
            if opened:
                task.result().drop("the rate-limit backend was closed")
            return
        self._connecting = None
        if opened:
            self.connection = task.result()

    async def _open(self) -> RespConnection:
        loop = asyncio.get_running_loop()
        address = self.address
        connection: RespConnection | None = None

        def protocol() -> RespConnection:
            return RespConnection(max_pending=self.max_pending, stall_timeout=self.stall_timeout)

        try:
            async with asyncio.timeout(self.connect_timeout):
                if address.path is not None:
                    _, connection = await loop.create_unix_connection(protocol, address.path)
                else:
                    _, connection = await loop.create_connection(protocol, address.host, address.port)
                replies = await asyncio.gather(*(connection.call(command) for _, command in self._handshake))
        except BaseException as exc:
            if connection is not None:
                connection.drop("connecting failed")
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"connecting to Redis at {self.where} took over {self.connect_timeout} s") from exc
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"cannot connect to Redis at {self.where}: {exc}") from exc
            raise
        assert connection is not None
        for (name, _), reply in zip(self._handshake, replies):
            if isinstance(reply, ResponseError):
                connection.drop(f"Redis refused {name}")
                if name == "AUTH":
                    raise AuthenticationError(f"Redis at {self.where} refused the URL's credentials: {reply}")
                raise RedisConnectionError(f"Redis at {self.where} refused {name} on connect: {reply}")
        return connection

    async def _load(self) -> None:
        """Load the script once for every call that got NOSCRIPT from the same batch.

        Replies come in order, so every NOSCRIPT of the commands written before the SCRIPT LOAD reaches its
        caller before the load's own reply: those callers find this load still running and wait for it."""
        loading = self._loading
        if loading is None or loading.done():
            loading = self._loading = asyncio.create_task(self._load_script())
        await asyncio.shield(loading)

    async def _load_script(self) -> None:
        sha = await (await self._connect()).call(self._load_command)
        if not isinstance(sha, bytes):
            raise _unexpected(sha)
        self.script_loads += 1
        if sha.decode() != SCRIPT_SHA:
            raise RuntimeError(f"Redis hashed the rate-limit script as {sha.decode()}, expected {SCRIPT_SHA}")


def _unexpected(reply: Reply) -> ResponseError:
    if isinstance(reply, ResponseError):
        return reply
    return ResponseError(f"unexpected reply from Redis to the rate-limit script: {reply!r}")
