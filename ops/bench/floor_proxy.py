"""The floor: the least a Python reverse proxy can do per request on this machine, for reference only.

It parses requests with httptools in an asyncio protocol (on uvloop, as the gateway serves), sends each
one to the upstream through the gateway's own pool (gateway/upstream), reads the whole answer and writes
its status line, headers (minus Connection) and body back in one write. The same system calls as the
gateway, and next to no logic: no routing, no header hygiene, no timeouts of its own, no error handling,
no request bodies, no pipelining (a pipelined connection may get its answers out of order). Never run it
for real. The gateway's rows minus this row is what the gateway's own Python costs per request.

    python ops/bench/floor_proxy.py --port 4002 --upstream http://127.0.0.1:3001
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's gateway package
from gateway.upstream import UpstreamPool  # noqa: E402


class FloorProtocol(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, upstream: str) -> None:
        self.pool, self.upstream = pool, upstream
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() != b"host":
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii")
        url, headers = self.url.decode("latin-1"), self.headers
        self.url, self.headers = b"", []
        asyncio.get_running_loop().create_task(self.forward(method, url, headers))

    async def forward(self, method: str, url: str, headers: list[tuple[str, str]]) -> None:
        response = await self.pool.request(self.upstream, method, url, headers, None, connect_timeout=5.0,
                                           read_timeout=30.0, total_timeout=None)
        body = await response.read()
        response.release()
        lines = [f"HTTP/1.1 {response.status} {response.reason}"]
        lines += [f"{name}: {value}" for name, value in response.headers.items() if name.lower() != "connection"]
        if self.transport is not None:
            self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


async def serve(port: int, upstream: str) -> None:
    pool = UpstreamPool()
    server = await asyncio.get_running_loop().create_server(lambda: FloorProtocol(pool, upstream), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://host:port")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
