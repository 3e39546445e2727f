"""The gateway in-process as `kadai gateway` serves it, for aiohttp's TestClient: aiohttp's server with the
gateway's connection handler (envelope errors, header deadline) and the direct dispatch past the
Application, on a free loopback port."""
from __future__ import annotations

import socket
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.app import Gateway, create_app
from gateway.dispatch import use_direct_dispatch
from gateway.protocol import use_envelope_errors


class GatewayTestServer(TestServer):
    def __init__(self, gw: Gateway, **kwargs: Any) -> None:
        super().__init__(create_app(gw), host="127.0.0.1", **kwargs)
        self.gw = gw

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self._loop = loop
        # The runner serve() builds (gateway/server.py), adjusted the same way after setup.
        self.runner = runner = await self._make_runner(
            handler_cancellation=True, auto_decompress=False, access_log=None, **kwargs
        )
        await runner.setup()
        use_envelope_errors(runner, header_timeout=self.gw.resources.settings.header_timeout)
        use_direct_dispatch(runner, self.gw)
        sock = self.socket_factory(self.host, self.port or 0, socket.AF_INET)
        self.host, self.port = sock.getsockname()[:2]
        await web.SockSite(runner, sock=sock).start()
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")
