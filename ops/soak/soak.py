"""Soak the running platform (`ops/run`, `kadai up`) through its gateway: customers browse, log in and order,
a seller reads their orders and analytics, all within the rate limits, and every --burst-every seconds one
client fires an over-limit burst whose 429s are counted apart, as intended. At the end every order must have
reached its final status with its messages and analytics, checked through the gateway.

    ops/soak/run [--url http://127.0.0.1:4000] [--duration 600] [--customers 6] [--rate 3] [--json PATH]

Prints requests, statuses by kind, p50/p95/p99, the RSS of each platform process at start and end and its
trend once warm (MiB per minute after --warm-up), and the orders whose events went missing; exits 1 on any error other than the intended 429s or any missing event.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

import platform_procs as procs
import tally

PASSWORD = "kadai soak password"
STOCK = 1_000_000
PRICES = (2500, 1299, 4999)
DECLINED_PRICE = 1013
"""payment-service's simulator declines amounts whose cents end in 13: one unit of this product."""
DECLINED_SHARE = 0.1
ANONYMOUS_INTERVAL = 0.25
"""Registrations and logins share the gateway's per-address bucket (10/s): kept well below it."""
SELLER_INTERVAL = 1.0
PAGE_SIZE = 100
TOKEN_RENEW_MARGIN = 60.0
"""Seconds before its access token expires that a client refreshes it (POST /api/v1/auth/refresh)."""
ACTIONS = (("browse", 4), ("product", 3), ("order", 2), ("orders", 1), ("notifications", 1), ("login", 0.3))


class SetupFailed(Exception):
    pass


class Pacer:
    """At most one request per `interval` for the client that owns it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            if self._next > now:
                await asyncio.sleep(self._next - now)
            self._next = max(now, self._next) + self.interval


@dataclass
class User:
    email: str
    pacer: Pacer
    id: str = ""
    token: str = ""
    refresh_token: str = ""
    renew_at: float = float("inf")
    """time.monotonic() after which the access token is renewed, a minute before it expires."""


@dataclass
class Api:
    session: aiohttp.ClientSession
    base: str
    counts: tally.Tally
    anonymous: Pacer = field(default_factory=lambda: Pacer(ANONYMOUS_INTERVAL))

    async def call(self, kind: str, method: str, path: str, user: User | None = None,
                   body: Any = None, paced: bool = True) -> tuple[int | None, Any]:
        """(status, data of the envelope); status None when nothing answered. Every call is counted."""
        if user is not None and user.token and time.monotonic() >= user.renew_at:
            await self.refresh(user)  # as a real client does: a run longer than a token's life goes on
        if paced:
            await (user.pacer if user and user.token else self.anonymous).wait()
        headers = {"Authorization": f"Bearer {user.token}"} if user and user.token else {}
        started = time.perf_counter()
        try:
            async with self.session.request(method, self.base + path, json=body, headers=headers) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.counts.record(kind, type(exc).__name__, None)
            return None, None
        self.counts.record(kind, status, time.perf_counter() - started)
        try:
            envelope = json.loads(raw)
        except ValueError:
            return status, None
        return status, envelope.get("data") if isinstance(envelope, dict) else None

    def hold(self, user: User, data: dict[str, Any]) -> None:
        """Keep the tokens of a login or refresh answer."""
        user.token, user.refresh_token = data["accessToken"], data["refreshToken"]
        lifetime = float(data["expiresIn"])
        user.renew_at = time.monotonic() + max(lifetime - TOKEN_RENEW_MARGIN, lifetime / 2)

    async def refresh(self, user: User) -> None:
        user.renew_at = float("inf")  # one renewal at a time
        status, data = await self.call("refresh", "POST", "/api/v1/auth/refresh",
                                       body={"refreshToken": user.refresh_token}, paced=False)
        if status == 200 and data:
            self.hold(user, data)
        else:
            user.renew_at = time.monotonic() + 5.0  # tried again soon; until then the old token serves

    async def expect(self, status: int, method: str, path: str, user: User | None = None, body: Any = None) -> Any:
        got, data = await self.call("setup", method, path, user, body)
        if got != status or data is None:
            raise SetupFailed(f"{method} {path}: {got}, expected {status}")
        return data

    async def pages(self, path: str, key: str, user: User) -> list[dict[str, Any]]:
        """Every item of a paginated list (the final checks)."""
        items: list[dict[str, Any]] = []
        for page in range(1, 10_000):
            sep = "&" if "?" in path else "?"
            status, data = await self.call("check", "GET", f"{path}{sep}page={page}&pageSize={PAGE_SIZE}", user)
            if status != 200 or not isinstance(data, dict):
                raise SetupFailed(f"GET {path} page {page}: {status}")
            batch = data.get(key) or []
            items.extend(batch)
            if len(batch) < PAGE_SIZE:
                break
        return items


@dataclass
class Shop:
    api: Api
    rate: float
    tag: str = field(default_factory=lambda: os.urandom(4).hex())
    seller: User | None = None
    customers: list[User] = field(default_factory=list)
    burster: User | None = None
    products: list[dict[str, Any]] = field(default_factory=list)
    declined: dict[str, Any] = field(default_factory=dict)
    orders: list[tally.Order] = field(default_factory=list)

    async def user(self, role: str, name: str, interval: float) -> User:
        user = User(f"soak-{name}-{self.tag}@example.com", Pacer(interval))
        body = {"email": user.email, "password": PASSWORD, "name": f"Soak {name}", "role": role}
        user.id = (await self.api.expect(201, "POST", "/api/v1/auth/register", body=body))["user"]["id"]
        await self.login(user, "setup")
        return user

    async def login(self, user: User, kind: str) -> None:
        body = {"email": user.email, "password": PASSWORD}
        status, data = await self.api.call(kind, "POST", "/api/v1/auth/login", body=body)
        if status == 200 and data:
            self.api.hold(user, data)
        elif kind == "setup":
            raise SetupFailed(f"login of {user.email}: {status}")

    async def open(self, customers: int) -> None:
        self.seller = await self.user("seller", "seller", SELLER_INTERVAL / 4)
        for price in PRICES:
            body = {"name": f"Soak {price}", "priceCents": price, "stock": STOCK}
            self.products.append((await self.api.expect(201, "POST", "/api/v1/products", self.seller, body))["product"])
        body = {"name": "Soak declined", "priceCents": DECLINED_PRICE, "stock": STOCK}
        self.declined = (await self.api.expect(201, "POST", "/api/v1/products", self.seller, body))["product"]
        for number in range(customers):
            self.customers.append(await self.user("customer", f"customer{number}", 1 / self.rate))
        self.burster = await self.user("customer", "burst", 0.0)

    async def order(self, user: User, rng: random.Random) -> None:
        declined = rng.random() < DECLINED_SHARE
        product = self.declined if declined else rng.choice(self.products)
        quantity = 1 if declined else rng.randint(1, 3)
        body = {"items": [{"productId": product["id"], "quantity": quantity}]}
        status, data = await self.api.call("order", "POST", "/api/v1/orders", user, body)
        if status == 201 and data:
            placed = data["order"]
            self.orders.append(tally.Order(placed["id"], user.id, quantity, placed["amountCents"], declined))

    async def customer(self, user: User, deadline: float, rng: random.Random) -> None:
        names, weights = zip(*ACTIONS)
        while time.monotonic() < deadline:
            action = rng.choices(names, weights)[0]
            product = rng.choice(self.products)["id"]
            if action == "order":
                await self.order(user, rng)
            elif action == "login":
                await self.login(user, "login")
            else:
                path = {"browse": "/api/v1/products?page=1&pageSize=20", "product": f"/api/v1/products/{product}",
                        "orders": "/api/v1/orders?pageSize=20", "notifications": "/api/v1/notifications"}[action]
                await self.api.call("read", "GET", path, user)

    async def seller_reads(self, deadline: float) -> None:
        assert self.seller is not None
        paths = (f"/api/v1/analytics/sellers/{self.seller.id}", f"/api/v1/orders?sellerId={self.seller.id}",
                 f"/api/v1/products/{self.products[0]['id']}")
        number = 0
        while time.monotonic() < deadline:
            await self.api.call("seller", "GET", paths[number % len(paths)], self.seller)
            number += 1
            await asyncio.sleep(SELLER_INTERVAL)

    async def bursts(self, deadline: float, every: float, size: int) -> None:
        """Every `every` seconds, `size` requests at once from one client: past its 10-per-second burst."""
        due = time.monotonic() + every / 2
        while due < deadline:
            await asyncio.sleep(due - time.monotonic())
            await asyncio.gather(*(self.api.call("burst", "GET", "/api/v1/products", self.burster, paced=False)
                                   for _ in range(size)))
            due += every

    async def observe(self) -> tally.Observed:
        assert self.seller is not None
        seen = tally.Observed()
        for user in self.customers:
            for order in await self.api.pages("/api/v1/orders", "orders", user):
                seen.statuses[order["id"]] = order["status"]
        for recipient, users in (("buyer", self.customers), ("seller", [self.seller])):
            messages = seen.messages.setdefault(recipient, {})
            for user in users:
                for item in await self.api.pages("/api/v1/notifications", "items", user):
                    if item.get("orderId"):
                        messages[item["id"]] = (item["orderId"], item["template"], item["status"])
        status, data = await self.api.call("check", "GET", f"/api/v1/analytics/sellers/{self.seller.id}", self.seller)
        seen.analytics = data if status == 200 and isinstance(data, dict) else {}
        return seen


async def platform_ports(api: Api) -> set[int]:
    """The gateway's port and every instance port of its registry."""
    ports = {URL(api.base).port or 80}
    async with api.session.get(api.base + "/api/v1/gateway/services") as response:
        body = await response.json()
    for service in body["data"]:
        for instance in service.get("instances", []):
            url = instance.get("url") if isinstance(instance, dict) else instance
            if url and URL(url).host in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
                ports.add(URL(url).port or 80)
    return ports


async def sample_memory(memory: tally.Memory, started: float, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        memory.add(time.monotonic() - started, procs.rss(memory.names))


async def settle(check: Callable[[], Awaitable[list[str]]], timeout: float) -> list[str]:
    """Check until nothing is missing or timeout seconds passed; the last problems."""
    deadline = time.monotonic() + timeout
    while True:
        problems = await check()
        if not problems or time.monotonic() >= deadline:
            return problems
        await asyncio.sleep(3)


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    counts = tally.Tally()
    timeout = aiohttp.ClientTimeout(total=30, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        api = Api(session, args.url.rstrip("/"), counts)
        memory = tally.Memory()
        try:
            for pid, ports in procs.listeners(await platform_ports(api)).items():
                memory.names[pid] = procs.describe(pid, ports)
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
            raise SetupFailed(f"no platform answers at {args.url}: {exc!r}") from None
        if not memory.names:
            print("no platform process found listening on this machine: memory is not measured", file=sys.stderr)
        started = time.monotonic()
        memory.add(0.0, procs.rss(memory.names))
        shop = Shop(api, args.rate)
        await shop.open(args.customers)
        load_started = time.monotonic()
        deadline = load_started + args.duration
        rng = random.Random(args.seed)
        watching = [asyncio.create_task(sample_memory(memory, started, args.sample_every)),
                    asyncio.create_task(report_progress(counts, shop, deadline))]
        await asyncio.gather(
            *(shop.customer(user, deadline, random.Random(rng.random())) for user in shop.customers),
            shop.seller_reads(deadline),
            shop.bursts(deadline, args.burst_every, args.burst_size),
        )
        load_seconds = time.monotonic() - load_started
        for task in watching:
            task.cancel()
        await asyncio.wait(watching)
        memory.add(time.monotonic() - started, procs.rss(memory.names))
        currency = shop.products[0]["currency"]
        problems = await settle(lambda: observe_problems(shop, currency), args.settle)
    warm_up = args.warm_up if args.warm_up is not None else min(300.0, args.duration / 5)
    return tally.report(counts, memory, problems, load_seconds, len(shop.orders), warm_up)


async def observe_problems(shop: Shop, currency: str) -> list[str]:
    try:
        return tally.event_problems(shop.orders, await shop.observe(), currency)
    except SetupFailed as exc:
        return [f"could not read the results: {exc}"]


async def report_progress(counts: tally.Tally, shop: Shop, deadline: float) -> None:
    while True:
        await asyncio.sleep(30)
        left = max(0.0, deadline - time.monotonic())
        print(f"soak: {counts.requests(tally.LOAD_KINDS)} requests, {len(shop.orders)} orders, "
              f"{sum(counts.errors().values())} unintended errors, {left:.0f} s left", file=sys.stderr, flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ops/soak/run", description=__doc__.split("\n\n")[0])
    options = [
        ("--url", str, "http://127.0.0.1:4000", "the gateway"),
        ("--duration", float, 600, "seconds of load"),
        ("--customers", int, 6, "customers placing orders"),
        ("--rate", float, 3.0, "requests per second per customer"),
        ("--burst-every", float, 60, "seconds between over-limit bursts"),
        ("--burst-size", int, 25, "requests in a burst"),
        ("--settle", float, 120, "longest wait at the end for the orders' events"),
        ("--sample-every", float, 10, "seconds between RSS samples"),
        ("--seed", int, 7, "seed of the traffic mix"),
    ]
    for flag, kind, default, meaning in options:
        parser.add_argument(flag, type=kind, default=default, help=f"{meaning} (default %(default)s)")
    parser.add_argument("--warm-up", type=float, default=None,
                        help="seconds of start-up (caches filling) left out of the memory trend "
                             "(default: a fifth of --duration, at most 300)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.customers < 1 or not 0 < args.rate <= 8:
        parser.error("--duration must be positive, --customers at least 1, --rate in (0, 8] (the limit is 10/s)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        figures = asyncio.run(soak(args))
    except SetupFailed as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    print(tally.render(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return tally.exit_code(figures)


if __name__ == "__main__":
    sys.exit(main())
