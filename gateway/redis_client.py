"""The process's one Redis client (rate limits, response cache), opened and closed with the application.

Client policy:
- explicit connect and socket timeouts, so no call can hang on a dead server;
- no automatic command retries: a retried EVALSHA whose first attempt ran would take tokens twice,
  and callers (the limiter's back-off) decide what a failure means;
- a BlockingConnectionPool: under load a call waits (boundedly) for a free connection instead of failing
  with "Too many connections", and the number of sockets to Redis stays bounded.

Opening connects nothing: a Redis that is down at start-up does not stop the gateway; its users see the
failure on their first call and apply their own policy. REDIS_URL=memory:// opens no client (development,
one process): the limiter keeps its buckets in memory and the response cache is off.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from gateway.config.settings import mask_url
from gateway.keys import GATEWAY_KEY
from gateway.logs import log_fields

log = logging.getLogger("gateway.redis")

CONNECT_TIMEOUT = 0.5
"""Seconds to open a connection (loopback or same-datacenter Redis answers in well under a millisecond)."""
SOCKET_TIMEOUT = 1.0
"""Seconds a command may wait for its reply; callers on the hot path set tighter deadlines of their own."""
MAX_CONNECTIONS = 64
"""Connections per process; more concurrent calls wait for one to be free."""
POOL_WAIT = 0.5
"""Seconds a call may wait for a free connection before it fails."""
CLIENT_NAME = "kadai-gateway"


def open_redis(
    url: str,
    *,
    cluster: bool = False,
    connect_timeout: float = CONNECT_TIMEOUT,
    socket_timeout: float = SOCKET_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    pool_wait: float = POOL_WAIT,
) -> Redis | RedisCluster:
    """A client for url with the policy above; it connects on first use. With `cluster`, url is one node
    of a Redis Cluster and each command goes to the node that owns its keys' slot (MOVED and ASK
    redirections followed: the command did not run where it was refused)."""
    if cluster:
        return RedisCluster.from_url(
            url,
            max_connections=max_connections,  # per node
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
            client_name=CLIENT_NAME,
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_wait,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
        client_name=CLIENT_NAME,
    )
    return Redis.from_pool(pool)


async def redis_client_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: open resources.redis for the application's lifetime, close it at shutdown."""
    resources = app[GATEWAY_KEY].resources
    settings = resources.settings
    if settings.embedded_redis:
        # No client at all: the limiter keeps its buckets in memory and the cache skips itself.
        log.info("no Redis (REDIS_URL=memory://): in-process rate limits, response cache off")
        yield
        return
    client = open_redis(settings.redis_url, cluster=settings.redis_cluster)
    if isinstance(client, RedisCluster):
        await _discover(client, settings.redis_url)
    resources.redis = client
    log.debug("Redis client ready", extra=log_fields(redisUrl=mask_url(settings.redis_url)))
    try:
        yield
    finally:
        resources.redis = None
        await client.aclose()


async def _discover(cluster: RedisCluster, url: str) -> None:
    """Learn the cluster's slots now rather than inside the first request's limiter deadline (a few ms),
    where the discovery would time out and the limiter fail open. A cluster that does not answer is
    left to the first call, like a single Redis that is down at start-up."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT * 4):
            await cluster.initialize()
    except (TimeoutError, RedisError, RedisClusterException, OSError) as exc:
        log.warning(
            "Redis Cluster not reachable at start-up; the first calls will try again",
            extra=log_fields(redisUrl=mask_url(url), error=str(exc)),
        )
