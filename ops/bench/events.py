"""The event path's benchmark (README.md, "Benchmark", "Events"): events per second through one outbox
relay into RabbitMQ with publisher confirms, and the order flow's latency from POST /orders to paid.

    relay   N events committed to a service's outbox (a temporary database), then ONE OutboxRelay over a
            RabbitBus drains them: events/s from the relay's start until every row is marked sent; every
            event must then sit exactly once in a queue bound to the bench's own exchange.
    orders  `kadai up` on free loopback ports (temporary data, an events prefix of its own, a registry
            with rate limits no bench client reaches): a seller, customers and a product, then orders
            placed one at a time and then several at once, each timed from POST /orders until the order
            is paid.

Everything is declared under a fresh events prefix and deleted at the end, also on errors and Ctrl-C.
Run it through ops/bench/events. Never part of the test suite.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import yaml
from aio_pika.abc import AbstractIncomingMessage
from yarl import URL

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the repository's packages

from gateway.config.settings import DEFAULT_AMQP_URL, DEFAULT_REDIS_URL, Settings  # noqa: E402
from services.catalog import CATALOG  # noqa: E402
from services.events import ORDER_CREATED, ORDER_STATUS_UPDATED, PAYMENT_PROCESSED  # noqa: E402
from services.events.bus import Topology  # noqa: E402
from services.events.outbox import OutboxRelay  # noqa: E402
from services.events.rabbit import RabbitBus  # noqa: E402
from services.kit.db import Database  # noqa: E402
from services.kit.metrics import ServiceMetrics  # noqa: E402
from services.kit.settings import ServiceSettings  # noqa: E402

from procs import free_port, stop  # noqa: E402

EVENT_TYPE = "bench.thing.created"
SERVICE = "bench-service"
COMMIT_SIZE = 1000
"""Events per transaction when the outbox is filled (the fill is not measured)."""
PASSWORD = "kadai bench password"
PRICE_CENTS = 2500
"""payment-service's simulator declines amounts whose cents end in 13: this one it accepts."""
HIGH_LIMIT = 1_000_000_000


def percentile(samples: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (share 0.99 for p99) of samples, which must not be empty."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(round(len(ordered) * share, 6)))  # round: 300 * 0.99 must be rank 297
    return ordered[rank - 1]


def process_cpu() -> float:
    """CPU seconds (user + system, all threads) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def broker_cpu_seconds() -> float:
    """CPU seconds of the local RabbitMQ (beam.smp) so far; NaN when it is not a readable local process."""
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "beam.smp":
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return float("nan")


def new_prefix() -> str:
    return "bench-" + os.urandom(5).hex()


# -- relay throughput ------------------------------------------------------------------------------------


async def fill_outbox(db: Database, count: int) -> None:
    written = 0
    while written < count:
        async with db.transaction() as tx:
            for number in range(written, min(count, written + COMMIT_SIZE)):
                tx.publish(EVENT_TYPE, {"number": number, "name": f"thing {number}", "tags": ["bench", "outbox"]})
        written = min(count, written + COMMIT_SIZE)


async def queue_ids(channel: aio_pika.abc.AbstractChannel, queue_name: str, expected: int) -> list[str]:
    """The message IDs in a queue, consumed until `expected` (the broker's count) arrived or nothing came
    for 2 s."""
    queue = await channel.declare_queue(queue_name, passive=True)
    ids: list[str] = []
    done = asyncio.Event()

    async def keep(message: AbstractIncomingMessage) -> None:
        ids.append(message.message_id or "")
        if len(ids) >= expected:
            done.set()

    await channel.set_qos(prefetch_count=2000)
    tag = await queue.consume(keep, no_ack=True)
    while not done.is_set():
        seen = len(ids)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await done.wait()
        if len(ids) == seen:
            break
    await queue.cancel(tag)
    return ids


async def relay_round(amqp_url: str, count: int, poll: float) -> dict[str, Any]:
    """One relay drain of `count` events under a fresh prefix; everything it declared is deleted after."""
    prefix = new_prefix()
    topology = Topology(prefix, SERVICE)
    count_queue = f"{prefix}.bench.count"
    with tempfile.TemporaryDirectory(prefix="kadai-bench-events-") as tmp:
        settings = ServiceSettings(
            platform=Settings(), data_dir=Path(tmp), amqp_url=amqp_url, events_prefix=prefix, declare_consumers=False
        )
        db = Database(settings.database_path(SERVICE), SERVICE, {EVENT_TYPE})
        await db.open()
        admin = await aio_pika.connect(URL(amqp_url).update_query(name=f"kadai bench events {prefix}"), timeout=5)
        bus = RabbitBus(SERVICE, settings, consumers={})
        relay: OutboxRelay | None = None
        try:
            channel = await admin.channel()
            exchange = await channel.declare_exchange(topology.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(count_queue, durable=True)
            await queue.bind(exchange, routing_key="#")
            await fill_outbox(db, count)
            expected = {row["event_id"] for row in await db.fetchall("SELECT event_id FROM kadai_outbox")}
            await bus.start(None)
            async with asyncio.timeout(10):
                while not bus.connected:
                    await asyncio.sleep(0.01)
            relay = OutboxRelay(db, bus, ServiceMetrics(SERVICE), poll_interval=1.0, retention=86400.0)
            cpu, broker_cpu, started = process_cpu(), broker_cpu_seconds(), time.perf_counter()
            await relay.start()
            while (await relay.pending())[0]:
                await asyncio.sleep(poll)
            seconds = time.perf_counter() - started
            cpu, broker_cpu = process_cpu() - cpu, broker_cpu_seconds() - broker_cpu
            await relay.stop(flush_timeout=5.0)
            relay = None
            declared = await channel.declare_queue(count_queue, passive=True)
            in_queue = int(declared.declaration_result.message_count or 0)
            ids = await queue_ids(channel, count_queue, in_queue)
            unique = set(ids)
            return {
                "events": count,
                "seconds": round(seconds, 4),
                "events_per_s": round(count / seconds, 1),
                "cpu_us_per_event": round(cpu / count * 1e6, 1),
                "broker_cpu_us_per_event": None if math.isnan(broker_cpu) else round(broker_cpu / count * 1e6, 1),
                "in_queue": in_queue,
                "received": len(ids),
                "duplicates": len(ids) - len(unique),
                "missing": len(expected - unique),
                "unknown": len(unique - expected),
            }
        finally:
            if relay is not None:
                await relay.stop(flush_timeout=1.0)
            await bus.close()
            await db.close()
            await delete_names(admin, queues=[count_queue], exchanges=[topology.exchange])
            await admin.close()


async def delete_names(
    connection: aio_pika.abc.AbstractConnection, queues: Iterable[str], exchanges: Iterable[str]
) -> None:
    for kind, name in [("queue", name) for name in queues] + [("exchange", name) for name in exchanges]:
        channel = await connection.channel()  # a failed delete closes its channel
        with contextlib.suppress(Exception):
            await (channel.queue_delete(name) if kind == "queue" else channel.exchange_delete(name))
        if not channel.is_closed:
            await channel.close()


async def relay_bench(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for number in range(1, args.rounds + 1):
        run = await relay_round(args.amqp_url, args.events, poll=0.005)
        runs.append(run)
        print(f"relay round {number}: {run['events_per_s']:,.0f} events/s ({run['events']:,} in "
              f"{run['seconds']:.2f} s); queue {run['in_queue']:,}, duplicates {run['duplicates']}, "
              f"missing {run['missing']}", file=sys.stderr)
    rates = [run["events_per_s"] for run in runs]
    exact = all(run["received"] == run["events"] and not run["duplicates"] and not run["missing"]
                and not run["unknown"] and run["in_queue"] == run["events"] for run in runs)
    return {"events_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
            "exactly_once": exact, "runs": runs}


# -- order to paid ---------------------------------------------------------------------------------------


def bench_registry(source: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """registry.yaml's services and routes on free loopback ports, every rate-limit tier raised out of
    reach (the bench measures the event path, not the limiter). Returns (registry, port by service)."""
    registry = json.loads(json.dumps(source))  # a deep copy of plain YAML data
    ports: dict[str, int] = {}
    for name, spec in registry["services"].items():
        ports[name] = free_port()
        spec["instances"] = [f"http://127.0.0.1:{ports[name]}"]
    tiers = [registry.get("defaults", {}).get("rate_limit") or {}]
    for spec in registry["services"].values():
        tiers += [route.get("rate_limit") or {} for route in spec.get("routes", [])]
    for tier_set in tiers:
        for tier in tier_set.values():
            tier["limit"] = HIGH_LIMIT
    return registry, ports


class Platform:
    """`kadai up` in a process group of its own, on a temporary data directory and a fresh events prefix."""

    def __init__(self, tmp: Path, amqp_url: str, redis_url: str) -> None:
        registry, self.ports = bench_registry(yaml.safe_load((ROOT / "registry.yaml").read_text()))
        self.registry_path = tmp / "registry.yaml"
        self.registry_path.write_text(yaml.safe_dump(registry, sort_keys=False))
        self.port = free_port()
        self.prefix = new_prefix()
        self.log = tmp / "platform.log"
        self.env = {
            **os.environ,
            "KADAI_DATA_DIR": str(tmp / "data"),
            "KADAI_EVENTS_PREFIX": self.prefix,
            "AMQP_URL": amqp_url,
            "REDIS_URL": redis_url,
            "JWT_SECRET": os.urandom(32).hex(),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "gateway", "up", "--registry", str(self.registry_path),
               "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def failed(self, why: str) -> SystemExit:
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        return SystemExit(f"bench: {why}\n--- kadai up (last lines) ---\n{tail}")

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = 60.0) -> None:
        """Until every service of the order flow answers /health with status ok on the real broker."""
        deadline = time.monotonic() + timeout
        for name in ("user-service", "product-service", "order-service", "payment-service"):
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    raise self.failed("kadai up exited at start-up")
                report: dict[str, Any] = {}
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with session.get(f"http://127.0.0.1:{self.ports[name]}/health") as response:
                        report = (await response.json()).get("data") or {}
                bus = (report.get("checks") or {}).get("bus") or {}
                if report.get("status") == "ok" and bus.get("kind") == "rabbitmq":
                    break
                if bus.get("kind") == "memory":
                    raise self.failed(f"{name} runs on the in-process bus: RabbitMQ did not answer at start")
                if time.monotonic() > deadline:
                    raise self.failed(f"{name} not healthy on RabbitMQ within {timeout:.0f} s: {report}")
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


class Watch:
    """A queue of the bench's own on the platform's exchange: when each order's events reached the broker."""

    TYPES = (ORDER_CREATED, PAYMENT_PROCESSED, ORDER_STATUS_UPDATED)

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], float] = {}
        """(order ID, "order.created" | "payment.processed" | "paid" | "payment_failed" ...) -> when."""
        self._waiters: dict[tuple[str, str], asyncio.Future[float]] = {}

    async def open(self, connection: aio_pika.abc.AbstractConnection, prefix: str) -> None:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(Topology(prefix, "-").exchange, aio_pika.ExchangeType.TOPIC,
                                                  durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for event_type in self.TYPES:
            await queue.bind(exchange, routing_key=event_type)
        await queue.consume(self._on_message, no_ack=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        now = time.perf_counter()
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            data = json.loads(message.body)["data"]
            step = data["status"] if message.type == ORDER_STATUS_UPDATED else message.type
            key = (data["orderId"], step)
            self.seen.setdefault(key, now)
            waiter = self._waiters.pop(key, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(now)

    async def wait(self, order_id: str, step: str, timeout: float) -> float:
        if (order_id, step) in self.seen:
            return self.seen[(order_id, step)]
        waiter = self._waiters[(order_id, step)] = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(timeout):
            return await waiter


class Shop:
    """The bench's users and product, and the orders it places through the gateway."""

    def __init__(self, session: aiohttp.ClientSession, base: str, watch: Watch, poll: float | None) -> None:
        self.session, self.base, self.watch, self.poll = session, base, watch, poll
        self.tag = os.urandom(4).hex()
        self.product_id = ""
        self.placed: list[dict[str, Any]] = []
        self.stale_reads = 0
        """GET /orders/{id} answers 404 for an order already placed (polling only)."""

    async def call(self, method: str, path: str, token: str | None = None, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, self.base + path, json=body, headers=headers) as response:
            envelope = await response.json(content_type=None) or {}
            return response.status, envelope.get("data") if response.status < 400 else envelope.get("error")

    async def expect(self, status: int, method: str, path: str, token: str | None = None, body: Any = None) -> Any:
        got, data = await self.call(method, path, token, body)
        if got != status:
            raise SystemExit(f"bench: {method} {path} answered {got}, expected {status}: {data}")
        return data

    async def user(self, role: str, name: str) -> str:
        email = f"bench-{name}-{self.tag}@example.com"
        body = {"email": email, "password": PASSWORD, "name": f"Bench {name}", "role": role}
        await self.expect(201, "POST", "/api/v1/auth/register", body=body)
        login = await self.expect(200, "POST", "/api/v1/auth/login", body={"email": email, "password": PASSWORD})
        return str(login["accessToken"])

    async def open(self, customers: int, stock: int) -> list[str]:
        seller = await self.user("seller", "seller")
        body = {"name": f"Bench {self.tag}", "priceCents": PRICE_CENTS, "stock": stock}
        self.product_id = (await self.expect(201, "POST", "/api/v1/products", seller, body))["product"]["id"]
        return [await self.user("customer", f"customer{number}") for number in range(customers)]

    async def order(self, token: str, timeout: float = 15.0) -> dict[str, Any]:
        """Place one order and wait until it is paid; its timings are seconds from just before POST /orders."""
        body = {"items": [{"productId": self.product_id, "quantity": 1}]}
        started = time.perf_counter()
        order_id = (await self.expect(201, "POST", "/api/v1/orders", token, body))["order"]["id"]
        answered = time.perf_counter()
        try:
            if self.poll is None:
                paid = await self.watch.wait(order_id, "paid", timeout)
            else:
                paid = await self.poll_until_paid(order_id, token, started + timeout)
        except TimeoutError:
            raise SystemExit(f"bench: order {order_id} was not paid within {timeout:.0f} s") from None
        placed = {"order": order_id, "total": paid - started, "post": answered - started}
        for step in (ORDER_CREATED, PAYMENT_PROCESSED, "paid"):
            if (order_id, step) in self.watch.seen:
                placed[step] = self.watch.seen[(order_id, step)] - started
        self.placed.append(placed)
        return placed

    async def poll_until_paid(self, order_id: str, token: str, deadline: float) -> float:
        assert self.poll is not None
        while time.perf_counter() < deadline:
            status, data = await self.call("GET", f"/api/v1/orders/{order_id}", token)
            if status == 200 and data["order"]["status"] == "paid":
                return time.perf_counter()
            if status == 404:
                # A placed order read as missing: a read that saw the database as it was before the order
                # committed. Counted and shown, and the order is polled on.
                self.stale_reads += 1
            elif status != 200 or data["order"]["status"] != "pending":
                raise SystemExit(f"bench: order {order_id} is {status} {data}, not on its way to paid")
            await asyncio.sleep(self.poll)
        raise TimeoutError

    async def all_paid(self, tokens: Sequence[str]) -> int:
        """Orders of the bench's customers that GET /orders shows as paid."""
        paid = 0
        for token in tokens:
            page = 1
            while True:
                data = await self.expect(200, "GET", f"/api/v1/orders?status=paid&page={page}&pageSize=100", token)
                paid += len(data["orders"])
                if len(data["orders"]) < 100:
                    break
                page += 1
        return paid


HOPS = (
    ("total", None, "total"),
    ("post", None, "post"),
    ("to_order_created", None, ORDER_CREATED),
    ("created_to_payment", ORDER_CREATED, PAYMENT_PROCESSED),
    ("payment_to_paid_event", PAYMENT_PROCESSED, "paid"),
)
"""(name, from, to) of each figure: from None is the start of POST /orders."""


def summary(placed: Sequence[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """p50/p90/p99/max of order-to-paid and of each hop, in ms."""
    result: dict[str, Any] = {"orders": len(placed), "orders_per_s": round(len(placed) / seconds, 1)}
    for name, begin, end in HOPS:
        values = [(order[end] - (order[begin] if begin else 0.0)) * 1000
                  for order in placed if end in order and (begin is None or begin in order)]
        if values:
            result[name] = {key: round(percentile(values, share), 2)
                            for key, share in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))}
    return result


async def orders_bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kadai-bench-orders-") as tmp:
        platform = Platform(Path(tmp), args.amqp_url, args.redis_url)
        watch_url = URL(args.amqp_url).update_query(name=f"kadai bench watch {platform.prefix}")
        connection = await aio_pika.connect(watch_url, timeout=5)
        try:
            timeout = aiohttp.ClientTimeout(total=15, connect=2)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                platform.start()
                await platform.wait_ready(session)
                print(f"platform up: gateway {platform.url}, events prefix {platform.prefix}", file=sys.stderr)
                watch = Watch()
                await watch.open(connection, platform.prefix)
                shop = Shop(session, platform.url, watch, None if args.watch == "event" else args.poll_ms / 1000)
                total_orders = args.warmup + args.orders + args.concurrent_orders
                customers = await shop.open(max(1, args.concurrency), stock=total_orders * 2 + 100)
                for _ in range(args.warmup):
                    await shop.order(customers[0])
                shop.placed.clear()
                started = time.perf_counter()
                for _ in range(args.orders):
                    await shop.order(customers[0])
                sequential = summary(shop.placed, time.perf_counter() - started)
                shop.placed.clear()
                concurrent: dict[str, Any] = {}
                if args.concurrent_orders and args.concurrency > 1:
                    remaining = [args.concurrent_orders]

                    async def lane(token: str) -> None:
                        while remaining[0] > 0:
                            remaining[0] -= 1
                            await shop.order(token)

                    started = time.perf_counter()
                    await asyncio.gather(*(lane(token) for token in customers[: args.concurrency]))
                    concurrent = summary(shop.placed, time.perf_counter() - started)
                paid = await shop.all_paid(customers)
        finally:
            platform.stop()
            await delete_names(
                connection,
                queues=[name for service in CATALOG for name in Topology(platform.prefix, service).queues],
                exchanges=[Topology(platform.prefix, "-").exchange],
            )
            await connection.close()
    expected = args.warmup + args.orders + (args.concurrent_orders if args.concurrency > 1 else 0)
    return {"watch": args.watch, "sequential": sequential, "concurrent": concurrent,
            "concurrency": args.concurrency, "paid": paid, "placed": expected, "stale_reads": shop.stale_reads}


# -- report ----------------------------------------------------------------------------------------------

RELAY_TARGET = 5000.0
"""Issue #6: events per second from one relay."""
PAID_P99_TARGET_MS = 250.0
"""Issue #6: POST /orders to paid, p99."""


def relay_text(relay: dict[str, Any]) -> list[str]:
    rate = relay["events_per_s"]
    runs = relay["runs"]
    cpu = statistics.median(run["cpu_us_per_event"] for run in runs)
    broker = [run["broker_cpu_us_per_event"] for run in runs if run["broker_cpu_us_per_event"] is not None]
    lines = [
        f"relay: {runs[0]['events']:,} events, {len(runs)} round(s), publisher confirms, persistent messages",
        f"  events/s median {rate['median']:,.0f} (min {rate['min']:,.0f}, max {rate['max']:,.0f}); "
        f"relay process CPU {cpu:.0f} us/event"
        + (f", broker CPU {statistics.median(broker):.0f} us/event" if broker else ""),
        f"  every event in the bound queue exactly once: {'yes' if relay['exactly_once'] else 'NO'}",
        f"  target >= {RELAY_TARGET:,.0f} events/s: {'met' if rate['median'] >= RELAY_TARGET else 'NOT met'}",
    ]
    return lines


def orders_text(orders: dict[str, Any]) -> list[str]:
    lines = [f"order to paid ({'order.status.updated event' if orders['watch'] == 'event' else 'polling GET'}), ms:",
             f"  {'phase':<22} {'orders':>6} {'orders/s':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}"]
    for phase, name in ((orders["sequential"], "one at a time"),
                        (orders["concurrent"], f"{orders['concurrency']} at once")):
        if not phase:
            continue
        total = phase["total"]
        lines.append(f"  {name:<22} {phase['orders']:>6} {phase['orders_per_s']:>8.1f} {total['p50']:>8.1f} "
                     f"{total['p90']:>8.1f} {total['p99']:>8.1f} {total['max']:>8.1f}")
        for hop, label in (("post", "POST /orders answered"), ("to_order_created", "order.created at broker"),
                           ("created_to_payment", "-> payment.processed"), ("payment_to_paid_event", "-> paid event")):
            if hop in phase:
                value = phase[hop]
                lines.append(f"    {label:<22} {'':>15} {value['p50']:>8.1f} {value['p90']:>8.1f} "
                             f"{value['p99']:>8.1f} {value['max']:>8.1f}")
    lines.append(f"  orders paid (GET /orders): {orders['paid']} of {orders['placed']}")
    if orders["stale_reads"]:
        lines.append(f"  (!) GET /orders/{{id}} answered 404 for an order already placed: "
                     f"{orders['stale_reads']} time(s)")
    p99 = orders["sequential"]["total"]["p99"]
    verdict = "met" if p99 <= PAID_P99_TARGET_MS else "NOT met"
    lines.append(f"  target p99 <= {PAID_P99_TARGET_MS:.0f} ms (one at a time): {verdict}")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The event path's benchmark; see README.md, \"Benchmark\".")
    parser.add_argument("--only", choices=("relay", "orders"), help="run one part (default both)")
    parser.add_argument("--events", type=int, default=20_000, help="events in the outbox per relay round (20000)")
    parser.add_argument("--rounds", type=int, default=3, help="relay rounds (default 3)")
    parser.add_argument("--orders", type=int, default=300, help="orders placed one at a time (default 300)")
    parser.add_argument("--concurrency", type=int, default=8, help="orders in flight in the second phase (8; 1: none)")
    parser.add_argument("--concurrent-orders", type=int, default=300, help="orders of the second phase (300)")
    parser.add_argument("--warmup", type=int, default=20, help="orders placed before measuring (20)")
    parser.add_argument("--watch", choices=("event", "poll"), default="event",
                        help="paid when order.status.updated says so (default), or when GET /orders/{id} does")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="GET interval with --watch poll (5 ms)")
    parser.add_argument("--amqp-url", default=os.environ.get("AMQP_URL") or DEFAULT_AMQP_URL)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)
    parser.add_argument("--json", type=Path, default=ROOT / ".bench" / "events.json", help="results file")
    args = parser.parse_args(argv)
    if min(args.events, args.rounds, args.orders, args.concurrency, args.poll_ms) <= 0 or min(
            args.warmup, args.concurrent_orders) < 0:
        parser.error("counts and intervals must be positive")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    if args.only in (None, "relay"):
        results["relay"] = await relay_bench(args)
    if args.only in (None, "orders"):
        results["orders"] = await orders_bench(args)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the platform is stopped and the bench's names deleted.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: sys.exit(128 + signum))
    results = asyncio.run(run(args))
    lines: list[str] = []
    if "relay" in results:
        lines += relay_text(results["relay"])
    if "orders" in results:
        lines += orders_text(results["orders"])
    print("\n".join(lines))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
                if key not in ("amqp_url", "redis_url")}
    args.json.write_text(json.dumps({"mode": "events", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     "cores": os.cpu_count(), "settings": settings, **results}, indent=2) + "\n")
    print(f"results written to {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
