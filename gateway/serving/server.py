"""The gateway's HTTP/1.1 server: its listening sockets, its connections, and a drain at shutdown.

The Application still runs the gateway's lifecycle (its cleanup contexts open and close Redis, the
upstream pool, the health poller) through an AppRunner; this server only takes aiohttp's place at the
socket. Requests reach `handler` as aiohttp web.Requests, and its responses are aiohttp's.
"""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.config.settings import DEFAULT_HEADER_TIMEOUT
from gateway.serving.connection import HttpConnection

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

KEEPALIVE_TIMEOUT = 3630.0
"""Seconds an idle kept-alive connection stays open: aiohttp's default, longer than the hour load
balancers keep pooled connections."""


class HttpServer:
    def __init__(
        self,
        handler: Handler,
        *,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        client_max_size: int = 1024**2,
    ) -> None:
        if header_timeout <= 0:
            raise ValueError("header_timeout must be above zero")
        self.handler = handler
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.client_max_size = client_max_size
        self.loop = asyncio.get_running_loop()
        self.connections: set[HttpConnection] = set()
        self.closing = False
        self._listeners: list[asyncio.Server] = []

    def __call__(self) -> HttpConnection:
        return HttpConnection(self)

    async def listen(
        self, host: str | None = None, port: int | None = None, *, sock: socket.socket | None = None,
        reuse_port: bool = False, backlog: int = 1024,
    ) -> asyncio.Server:
        if sock is not None:
            listener = await self.loop.create_server(self, sock=sock, backlog=backlog)
        else:
            listener = await self.loop.create_server(
                self, host, port, reuse_port=reuse_port or None, backlog=backlog
            )
        self._listeners.append(listener)
        return listener

    @property
    def port(self) -> int:
        return int(self._listeners[0].sockets[0].getsockname()[1])

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting; let the requests under way finish within timeout (then cancel them); close."""
        self.closing = True
        for listener in self._listeners:
            listener.close()
        for connection in list(self.connections):
            connection.shutdown()  # idle ones close now, busy ones after their response
        deadline = self.loop.time() + timeout
        while any(connection.busy for connection in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        cancelled = [task for connection in list(self.connections) if (task := connection.cancel()) is not None]
        if cancelled:  # they unwind: their finish hooks run, the gauges come down
            await asyncio.wait(cancelled, timeout=1.0)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()
