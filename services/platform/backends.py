"""Which Redis and which event bus `kadai up` runs on: the servers of REDIS_URL / AMQP_URL when they answer a
short probe at start, else the embedded (in-process) stand-ins, each decided on its own and said out loud.

    REDIS_URL / AMQP_URL   development                               production
    memory://              embedded                                  refused (settings validation)
    a URL that answers     external                                  external
    a URL that does not    embedded, with the probe's error          external (reported unreachable):
                                                                     the limiter fails open, the outbox waits

"Does not answer" covers a refused or timed-out connection and a refused login alike: in each case the
platform could not use the server, and the start-up output says which it was.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import aio_pika
from yarl import URL

from gateway.config.settings import DEFAULT_AMQP_URL, DEFAULT_REDIS_URL, MEMORY_URL, mask_url
from gateway.redis_client import open_redis

PROBE_TIMEOUT = 1.0
"""Seconds one probe may take: a server on this machine or network answers in milliseconds."""
MANAGEMENT_PORT = 15672
"""RabbitMQ's management UI (the management plugin), on the broker's host."""

Mode = Literal["embedded", "external"]
Probe = Callable[[str, float], Awaitable[str | None]]
"""probe(url, timeout): None when the server is usable, else what went wrong (no secrets)."""


@dataclass(frozen=True, slots=True)
class Backend:
    """What one of REDIS_URL / AMQP_URL resolved to."""

    variable: str
    """REDIS_URL or AMQP_URL."""
    configured: str
    """The environment's value, or the default."""
    mode: Mode
    reason: str
    """Why this mode, in words for the start-up output and the health report."""
    reachable: bool | None = None
    """The probe's verdict; None when nothing was probed (memory://)."""

    @property
    def url(self) -> str:
        """The value the platform runs with: the server's URL, or memory://."""
        return MEMORY_URL if self.mode == "embedded" else self.configured

    @property
    def shown_url(self) -> str:
        return mask_url(self.configured)

    def describe(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "url": mask_url(self.url),
            "configured": self.shown_url,
            "reachableAtStart": self.reachable,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class Backends:
    redis: Backend
    amqp: Backend

    @property
    def mode(self) -> Literal["embedded", "external", "mixed"]:
        modes = {self.redis.mode, self.amqp.mode}
        return modes.pop() if len(modes) == 1 else "mixed"

    def overrides(self) -> dict[str, str]:
        """The environment the gateway and the services are configured from, on top of the process's own."""
        return {"REDIS_URL": self.redis.url, "AMQP_URL": self.amqp.url}


def decide(variable: str, configured: str, production: bool, problem: str | None) -> Backend:
    """The rule of the module docstring for one backend; `problem` is the probe's (None: it answered; a
    memory:// URL is not probed)."""
    if configured == MEMORY_URL:
        return Backend(variable, configured, "embedded", f"{variable}={MEMORY_URL}")
    if problem is None:
        return Backend(variable, configured, "external", "answered at start", reachable=True)
    if production:
        reason = f"did not answer at start ({problem}); used anyway"
        return Backend(variable, configured, "external", reason, reachable=False)
    reason = f"{variable} {mask_url(configured)} did not answer ({problem})"
    return Backend(variable, configured, "embedded", reason, reachable=False)


async def resolve(
    environ: Mapping[str, str],
    production: bool,
    *,
    timeout: float = PROBE_TIMEOUT,
    probe_redis_url: Probe | None = None,
    probe_amqp_url: Probe | None = None,
) -> Backends:
    """Probe both servers at once (skipping memory://) and decide each backend."""
    redis_url = environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    amqp_url = environ.get("AMQP_URL", "").strip() or DEFAULT_AMQP_URL
    probes = (probe_redis_url or probe_redis, probe_amqp_url or probe_amqp)

    async def run(probe: Probe, url: str) -> str | None:
        return None if url == MEMORY_URL else await probe(url, timeout)

    redis_problem, amqp_problem = await asyncio.gather(run(probes[0], redis_url), run(probes[1], amqp_url))
    return Backends(
        redis=decide("REDIS_URL", redis_url, production, redis_problem),
        amqp=decide("AMQP_URL", amqp_url, production, amqp_problem),
    )


def _problem(exc: BaseException, url: str, timeout: float) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"no answer within {timeout:g}s"
    text = str(exc).strip() or exc.__class__.__name__
    password = URL(url).password
    if password:
        text = text.replace(password, "***")
    return f"{exc.__class__.__name__}: {text}"


async def probe_redis(url: str, timeout: float) -> str | None:
    """PING through a client with the gateway's policy and timeouts of `timeout`."""
    client = open_redis(url, connect_timeout=timeout, socket_timeout=timeout, max_connections=1, pool_wait=timeout)
    try:
        async with asyncio.timeout(timeout * 2):
            await client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable", described in one line
        return _problem(exc, url, timeout)
    finally:
        await client.aclose()
    return None


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The AMQP libraries log a failed connection as an ERROR of their own; the probe reports it instead."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


async def probe_amqp(url: str, timeout: float) -> str | None:
    """Open and close one AMQP connection: the broker answers, and takes the URL's login and vhost."""
    # First the protocol header on a socket of our own: the AMQP client, cancelled while it waits on a
    # server that never answers, leaves its socket open.
    parsed = URL(url)
    plain = parsed.scheme == "amqp"  # amqps: TLS first, so only the connection itself is tried here
    first = b"\x01"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(parsed.host, parsed.port or (5672 if plain else 5671))
            try:
                if plain:
                    writer.write(b"AMQP\x00\x00\x09\x01")
                    first = await reader.read(1)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        return _problem(exc, url, timeout)
    if first != b"\x01":  # a broker answers the protocol header with a method frame
        return "not an AMQP 0-9-1 broker (it did not answer the protocol header)"
    with _quiet("aiormq", "aio_pika"):
        try:
            async with asyncio.timeout(timeout * 2):
                connection = await aio_pika.connect(url, timeout=timeout)
                await connection.close()
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable", described in one line
            return _problem(exc, url, timeout)
    return None


def management_url(amqp_url: str) -> str:
    """Where RabbitMQ's management UI is when the plugin is on: the broker's host, port 15672."""
    host = URL(amqp_url).host or "127.0.0.1"
    return f"http://{host}:{MANAGEMENT_PORT}"


async def port_answers(url: str, timeout: float = 0.3) -> bool:
    """Whether something accepts a TCP connection at the URL's host and port."""
    parsed = URL(url)
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
