"""The gateway in-process as `kadai gateway` serves it, for aiohttp's TestClient: its own HTTP server (or
aiohttp's, with settings.http_server = "aiohttp") and the direct dispatch, on a free loopback port."""
from __future__ import annotations

import socket
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.app import Gateway, create_app
from gateway.dispatch import direct_dispatch, use_direct_dispatch
from gateway.protocol import use_envelope_errors
from gateway.serving import HttpServer


class GatewayTestServer(TestServer):
    def __init__(self, gw: Gateway, **kwargs: Any) -> None:
        super().__init__(create_app(gw), host="127.0.0.1", **kwargs)
        self.gw = gw
        self.http: HttpServer | None = None

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self._loop = loop
        settings = self.gw.resources.settings
        self.runner = runner = await self._make_runner(
            handler_cancellation=True, auto_decompress=False, access_log=None, **kwargs
        )
        await runner.setup()
        sock = self.socket_factory(self.host, self.port or 0, socket.AF_INET)
        self.host, self.port = sock.getsockname()[:2]
        if settings.http_server == "kadai":
            self.http = HttpServer(direct_dispatch(runner, self.gw), header_timeout=settings.header_timeout)
            await self.http.listen(sock=sock)
        else:
            use_envelope_errors(runner, header_timeout=settings.header_timeout)
            use_direct_dispatch(runner, self.gw)
            await web.SockSite(runner, sock=sock).start()
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def close(self) -> None:
        if self.http is not None:
            http, self.http = self.http, None
            await http.shutdown(self.gw.resources.settings.drain_timeout)
        await super().close()
