"""Micro-benchmark of the upstream client alone: gateway.upstream.UpstreamPool vs aiohttp.ClientSession.

Starts ops/bench/upstream.py in a child process on a free loopback port (so the CPU measured here is the
client's only), then sends N small GETs through each client, first one at a time, then from C concurrent
workers, and prints requests/s and client CPU microseconds per request. Bounded: N requests per run.

    python ops/bench/pool_micro.py --requests 5000 --concurrency 32
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from anywhere: the repository root holds `gateway`

from gateway.proxy import open_upstream_session  # noqa: E402
from gateway.upstream import UpstreamPool  # noqa: E402

HEADERS = [("Accept", "application/json"), ("X-Request-Id", "bench-0001"), ("User-Agent", "pool-micro")]
Fetch = Callable[[], Awaitable[bytes]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_listening(port: int, limit: float = 10.0) -> None:
    async with asyncio.timeout(limit):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


async def measure(fetch: Fetch, requests: int, concurrency: int) -> tuple[float, float]:
    """requests/s and client CPU µs per request for ``requests`` fetches over ``concurrency`` workers."""
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await fetch()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return requests / wall, cpu / requests * 1e6


async def run(port: int, requests: int, concurrency: int) -> None:
    origin = f"http://127.0.0.1:{port}"
    pool = UpstreamPool()
    session = open_upstream_session()
    timeout = aiohttp.ClientTimeout(total=10.0, sock_connect=2.0, sock_read=5.0)
    url = f"{origin}/users/1"

    async def via_pool() -> bytes:
        response = await pool.request(
            origin, "GET", "/users/1", HEADERS, None, connect_timeout=2.0, read_timeout=5.0, total_timeout=10.0
        )
        body = await response.read()
        response.release()
        return body

    async def via_aiohttp() -> bytes:
        async with session.get(url, headers=HEADERS, timeout=timeout) as response:
            return await response.read()

    clients: dict[str, Fetch] = {"UpstreamPool": via_pool, "aiohttp.ClientSession": via_aiohttp}
    try:
        for fetch in clients.values():
            assert (await fetch()) == (await via_aiohttp())
            await measure(fetch, min(500, requests), concurrency)  # warm-up: connections, caches
        print(f"{'client':24} {'mode':16} {'req/s':>9} {'CPU us/req':>11}")
        for mode, workers in (("sequential", 1), (f"concurrent x{concurrency}", concurrency)):
            for name, fetch in clients.items():
                rate, cpu = await measure(fetch, requests, workers)
                print(f"{name:24} {mode:16} {rate:9.0f} {cpu:11.1f}")
    finally:
        await pool.close()
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per client and mode")
    parser.add_argument("--concurrency", type=int, default=32, help="workers in the concurrent mode")
    args = parser.parse_args()
    if not 1 <= args.requests <= 200_000 or not 1 <= args.concurrency <= 1000:
        parser.error("--requests must be 1..200000 and --concurrency 1..1000")
    port = free_port()
    upstream = subprocess.Popen([sys.executable, str(HERE / "upstream.py"), "--port", str(port)])
    try:
        asyncio.run(_main(port, args.requests, args.concurrency))
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)


async def _main(port: int, requests: int, concurrency: int) -> None:
    await wait_listening(port)
    await run(port, requests, concurrency)


if __name__ == "__main__":
    main()
