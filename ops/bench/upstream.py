"""Benchmark upstream: answers any GET with the same small JSON body.

Deliberately minimal (no routing, no access log) so that it costs as little CPU as possible: the
benchmark measures the proxy in front of it, and the upstream must never be the bottleneck.
bench.py imports BODY from here, so nginx (preferred when installed) serves exactly the same bytes.

    python ops/bench/upstream.py --port 3001
"""
from __future__ import annotations

import argparse

from aiohttp import web

# About 100 bytes, the size of a typical small API answer. No single quotes: nginx quotes it with them.
BODY = '{"id":"usr_0001","name":"Ada Lovelace","email":"ada@example.com","role":"customer","active":true}'


def make_app() -> web.Application:
    body = BODY.encode()

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer, allow_head=False)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
