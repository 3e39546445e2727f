"""Rate-limit decisions per second against one Redis: RedisBackend (redis-py) vs. BatchedRedisBackend.

N concurrent acquirers call backend.acquire for D seconds per round, the backends in interleaved rounds.
Prints decisions/s, this process's CPU per decision, and the Redis server's CPU per decision (INFO cpu
before and after, so other clients of that Redis count too: use an otherwise idle one). Buckets are
named per run and deleted at the end. Not a test; run from the repository root:

    .venv/bin/python ops/bench/redis_decisions.py --url redis://127.0.0.1:6379/0 -n 64 -d 5
"""
from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from redis.asyncio import Redis  # noqa: E402

from gateway.ratelimit import LimiterBackend, Plan, RedisBackend, Tier  # noqa: E402
from gateway.ratelimit.redis_batch import BatchedRedisBackend  # noqa: E402
from gateway.redis_client import open_redis  # noqa: E402


@dataclass
class Round:
    backend: str
    decisions: int
    errors: int
    seconds: float
    client_cpu: float
    server_cpu: float

    def row(self) -> str:
        per = max(self.decisions, 1)
        return (f"{self.backend:<8} {self.decisions:>9} {self.decisions / self.seconds:>12.0f} "
                f"{self.client_cpu / per * 1e6:>14.1f} {self.server_cpu / per * 1e6:>14.1f} {self.errors:>7}")


HEADER = f"{'backend':<8} {'decisions':>9} {'decisions/s':>12} {'client us/dec':>14} {'redis us/dec':>14} {'errors':>7}"


async def server_cpu(admin: Redis) -> float:
    info = await admin.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def measure(name: str, backend: LimiterBackend, plan: Plan, admin: Redis, concurrency: int, seconds: float) -> Round:
    decisions = errors = 0
    deadline = 0.0

    async def acquirer(client: str) -> None:
        nonlocal decisions, errors
        while time.monotonic() < deadline:
            try:
                await backend.acquire(plan, client)
                decisions += 1
            except Exception:  # counted: a failing backend must show, not stop the run
                errors += 1

    await backend.acquire(plan, "warm-up")  # connect and load the script outside the measurement
    cpu_server = await server_cpu(admin)
    cpu_client, started = time.process_time(), time.monotonic()
    deadline = started + seconds
    await asyncio.gather(*(acquirer(f"bench:{n}") for n in range(concurrency)))
    elapsed, cpu_client = time.monotonic() - started, time.process_time() - cpu_client
    return Round(name, decisions, errors, elapsed, cpu_client, await server_cpu(admin) - cpu_server)


async def main(args: argparse.Namespace) -> None:
    tag = secrets.token_hex(4)
    # Two tiers, as on a typical route; limits high enough that most decisions are allowed (both write).
    plan = Plan([Tier(f"bench_burst_{tag}", 1_000_000, 1000), Tier(f"bench_hour_{tag}", 10**9, 3_600_000)])
    admin = Redis.from_url(args.url)
    redis = open_redis(args.url, max_connections=args.concurrency)
    backends: dict[str, LimiterBackend] = {
        "redis-py": RedisBackend(lambda: redis),
        "batched": BatchedRedisBackend(args.url),
    }
    print(f"{args.concurrency} acquirers, {args.duration:g} s per round, {args.rounds} rounds, {args.url}")
    print(HEADER)
    try:
        for _ in range(args.rounds):
            for name, backend in backends.items():
                print((await measure(name, backend, plan, admin, args.concurrency, args.duration)).row(), flush=True)
    finally:
        batched = backends["batched"]
        assert isinstance(batched, BatchedRedisBackend)
        await batched.close()
        await redis.aclose()
        keys = [key async for key in admin.scan_iter(match=f"kadai:ratelimit:bench_*_{tag}.*", count=1000)]
        if keys:
            await admin.delete(*keys)
        await admin.aclose()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0", help="Redis URL (default: local db 0)")
    parser.add_argument("-n", "--concurrency", type=int, default=64, help="concurrent acquirers (default 64)")
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="seconds per round (default 5)")
    parser.add_argument("-r", "--rounds", type=int, default=2, help="rounds per backend, interleaved (default 2)")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
