"""`kadai-healthcheck`: the container probe of the image (Dockerfile HEALTHCHECK).

Exit 0 when $KADAI_HEALTHCHECK_URL answers 2xx within 3 seconds, 1 otherwise, saying why on stderr
(`docker inspect` shows it). It takes no proxy from the environment (HTTP_PROXY must not send a loopback
probe elsewhere), and a refused connection, a timeout or any answer outside 2xx (health answers 503 while
draining) all mean unhealthy. Standard library only: it runs every few seconds, so it starts fast.
"""
from __future__ import annotations

import os
import sys
import urllib.request

DEFAULT_URL = "http://127.0.0.1:4000/api/v1/health"


def main() -> int:
    url = os.environ.get("KADAI_HEALTHCHECK_URL") or DEFAULT_URL
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        opener.open(url, timeout=3).close()
    except Exception as exc:  # HTTPError (any answer outside 2xx), URLError, timeouts: all mean unhealthy
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
