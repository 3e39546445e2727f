"""The baseline: the reverse proxy anyone would write in plain aiohttp, in about 60 lines.

No streaming, no header hygiene, no error envelope, no middleware: it reads the whole request, sends
it upstream over one shared ClientSession, reads the whole answer and returns it. The gateway's
benchmark figures are given as a ratio to this.

    python ops/bench/naive_proxy.py --port 4001 --upstream http://127.0.0.1:3001
"""
from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

from aiohttp import ClientSession, web

PREFIX = "/api/v1"


def make_app(upstream: str) -> web.Application:
    async def client_session(app: web.Application) -> AsyncIterator[None]:
        # One session (one connection pool) for the whole process, closed at shutdown.
        app["session"] = ClientSession()
        yield
        await app["session"].close()

    async def proxy(request: web.Request) -> web.Response:
        path = request.path
        if path.startswith(PREFIX):
            path = path[len(PREFIX):] or "/"
        headers = request.headers.copy()
        headers.popall("Host", None)  # the upstream's own Host is set by the client
        body = await request.read()
        async with request.app["session"].request(
            request.method,
            upstream + path,
            params=request.query,
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as reply:
            data = await reply.read()
            return web.Response(status=reply.status, body=data, content_type=reply.content_type)

    app = web.Application()
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:3001")
    args = parser.parse_args()
    web.run_app(make_app(args.upstream.rstrip("/")), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
