"""`kadai demo`: the spec's order flow against a running platform, through the gateway only, one numbered
step per line. A step that fails prints the request and the response it got, and the command exits 1.

    seller registers, logs in, creates a product (stock 10) and one whose price the simulated card
    processor declines (cents ending in 13) -> customer registers, logs in, orders 2 of the first ->
    order paid -> stock 8 -> an SMS about the order recorded -> the seller's analytics show the revenue ->
    customer orders the declined product -> order payment_failed -> its stock back to 10 -> the seller
    brings the first product's stock below its low-stock threshold -> a low-stock SMS to the seller is
    recorded -> the product's analytics show both stock movements
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp

STOCK = 10
PRICE_CENTS = 2500
DECLINED_PRICE_CENTS = 1013
"""payment-service's simulator declines amounts whose cents end in 13 (services/payment/processor.py)."""
QUANTITY = 2
LOW_STOCK_MARGIN = 2
"""The stock update sets the level this many units below the product's lowStockThreshold (0 at least)."""
PASSWORD = "kadai demo password"
EVENT_TIMEOUT = 15.0
"""Longest wait for what events bring about (payment, stock, notification, analytics)."""
POLL_INTERVAL = 0.25
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=3)
RATE_LIMIT_RETRIES = 3
_WIDTH = 54


@dataclass(frozen=True, slots=True)
class Answer:
    method: str
    path: str
    status: int
    body: Any
    """The parsed JSON body (the envelope), or the text when it is not JSON."""

    @property
    def data(self) -> Any:
        return self.body.get("data") if isinstance(self.body, dict) else None

    def show(self) -> str:
        text = json.dumps(self.body, indent=2) if not isinstance(self.body, str) else self.body
        return f"{self.method} {self.path} -> {self.status}\n{text}"


class StepFailed(Exception):
    def __init__(self, reason: str, answer: Answer | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.answer = answer


class Client:
    """Calls through the gateway, with the spec's envelope checked and 429s waited out."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base.rstrip("/")

    async def call(
        self, method: str, path: str, *, token: str | None = None, body: Mapping[str, Any] | None = None
    ) -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for _attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                async with self.session.request(method, self.base + path, json=body, headers=headers) as response:
                    text = await response.text()
                    retry_after = response.headers.get("Retry-After", "1")
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise StepFailed(f"{method} {path}: {exc.__class__.__name__}: {exc or 'no answer'}") from None
            try:
                parsed: Any = json.loads(text)
            except ValueError:
                parsed = text
            answer = Answer(method, path, status, parsed)
            if status != 429:
                return answer
            # Rate limited: the demo's own pace is far below the limits, but other clients may share them.
            await asyncio.sleep(min(float(retry_after) if retry_after.isdigit() else 1.0, 5.0))
        return answer

    async def expect(
        self, status: int, method: str, path: str, *, token: str | None = None, body: Mapping[str, Any] | None = None
    ) -> Any:
        """The reply's data, when the status is `status` and the body a success envelope."""
        answer = await self.call(method, path, token=token, body=body)
        if answer.status != status or not isinstance(answer.body, dict) or answer.body.get("success") is not True:
            raise StepFailed(f"expected {status} with a success envelope", answer)
        return answer.data


async def poll(
    check: Callable[[], Awaitable[tuple[bool, Answer | None, str]]], timeout: float = EVENT_TIMEOUT
) -> tuple[Answer | None, float]:
    """Repeat check() until it says done; StepFailed with the last answer after timeout seconds."""
    started = time.monotonic()
    while True:
        done, answer, waiting_for = await check()
        waited = time.monotonic() - started
        if done:
            return answer, waited
        if waited >= timeout:
            raise StepFailed(f"still {waiting_for} after {timeout:g}s", answer)
        await asyncio.sleep(POLL_INTERVAL)


def money(cents: int, currency: str) -> str:
    return f"{cents / 100:.2f} {currency}"


class Demo:
    def __init__(self, client: Client, out: TextIO) -> None:
        self.client = client
        self.out = out
        self.number = 0
        self.tag = os.urandom(4).hex()
        """Makes the emails of this run unique, so the demo runs again and again on the same data."""

    async def step(self, title: str, work: Callable[[], Awaitable[str]]) -> None:
        self.number += 1
        label = f"{self.number:>3}. {title} "
        print(label.ljust(_WIDTH, "."), end=" ", file=self.out, flush=True)
        try:
            result = await work()
        except StepFailed as exc:
            print(f"FAILED: {exc.reason}", file=self.out, flush=True)
            if exc.answer is not None:
                print(_indent(exc.answer.show()), file=self.out, flush=True)
            raise
        print(f"ok  {result}", file=self.out, flush=True)

    async def run(self) -> None:
        api = self.client
        state: dict[str, Any] = {}

        async def health() -> str:
            data = await api.expect(200, "GET", "/api/v1/health")
            return f"gateway {data.get('status')}"

        async def register(role: str) -> str:
            email = f"demo-{role}-{self.tag}@example.com"
            body = {"email": email, "password": PASSWORD, "name": f"Demo {role.title()}", "role": role}
            data = await api.expect(201, "POST", "/api/v1/auth/register", body=body)
            state[f"{role}_email"] = email
            state[f"{role}_id"] = data["user"]["id"]
            return f"{email} ({data['user']['id']})"

        async def login(role: str) -> str:
            body = {"email": state[f"{role}_email"], "password": PASSWORD}
            data = await api.expect(200, "POST", "/api/v1/auth/login", body=body)
            state[f"{role}_token"] = data["accessToken"]
            return f"a {data['user']['role']} token, valid {data['expiresIn']}s"

        async def create_product(key: str, name: str, price_cents: int) -> str:
            body = {"name": name, "priceCents": price_cents, "stock": STOCK}
            data = await api.expect(201, "POST", "/api/v1/products", token=state["seller_token"], body=body)
            product = data["product"]
            state[key] = product
            price = money(product["priceCents"], product["currency"])
            return f"{product['id']} {name!r} at {price}, stock {product['stock']}"

        async def order(key: str, product: str, quantity: int) -> str:
            body = {"items": [{"productId": state[product]["id"], "quantity": quantity}]}
            data = await api.expect(201, "POST", "/api/v1/orders", token=state["customer_token"], body=body)
            placed = data["order"]
            state[key] = placed
            return f"{placed['id']} {placed['status']}, {money(placed['amountCents'], placed['currency'])}"

        def order_status(key: str, wanted: str) -> Callable[[], Awaitable[str]]:
            async def wait() -> str:
                placed = state[key]
                path = f"/api/v1/orders/{placed['id']}"

                async def check() -> tuple[bool, Answer | None, str]:
                    answer = await api.call("GET", path, token=state["customer_token"])
                    status = (answer.data or {}).get("order", {}).get("status") if answer.status == 200 else None
                    if status is not None and status != "pending" and status != wanted:
                        raise StepFailed(f"the order ended {status}, not {wanted}", answer)
                    return status == wanted, answer, f"{status or 'unreadable'}"

                answer, waited = await poll(check)
                assert answer is not None
                reason = answer.data["order"].get("statusReason")
                return f"{wanted} after {waited:.1f}s" + (f" ({reason})" if reason else "")

            return wait

        def stock_is(product: str, wanted: int, what: str) -> Callable[[], Awaitable[str]]:
            async def wait() -> str:
                path = f"/api/v1/products/{state[product]['id']}"

                async def check() -> tuple[bool, Answer | None, str]:
                    answer = await api.call("GET", path, token=state["customer_token"])
                    stock = (answer.data or {}).get("product", {}).get("stock") if answer.status == 200 else None
                    return stock == wanted, answer, f"at {stock}, not {wanted}"

                await poll(check)
                return f"{STOCK} -> {wanted} ({what})" if wanted != STOCK else f"back to {STOCK} ({what})"

            return wait

        async def notified() -> str:
            placed = state["paid_order"]
            path = f"/api/v1/notifications?orderId={placed['id']}"

            async def check() -> tuple[bool, Answer | None, str]:
                answer = await api.call("GET", path, token=state["customer_token"])
                items = (answer.data or {}).get("items", []) if answer.status == 200 else []
                sms = [item for item in items if item.get("channel") == "sms"]
                state["sms"] = sms
                return bool(sms), answer, "no SMS to the customer about the order"

            await poll(check)
            shown = ", ".join(f"{item['template']} ({item['status']})" for item in state["sms"])
            return f"to {state['sms'][0]['to']}: {shown}"

        async def revenue() -> str:
            placed = state["paid_order"]
            path = f"/api/v1/analytics/sellers/{state['seller_id']}"
            currency, amount = placed["currency"], placed["amountCents"]

            async def check() -> tuple[bool, Answer | None, str]:
                answer = await api.call("GET", path, token=state["seller_token"])
                earned = (answer.data or {}).get("revenueCents", {}).get(currency) if answer.status == 200 else None
                return earned == amount, answer, f"revenue {earned}, not {amount}"

            answer, _ = await poll(check)
            assert answer is not None
            data = answer.data
            return f"{money(amount, currency)} from {data['paidOrders']} paid order, {data['unitsSold']} units sold"

        async def low_stock() -> str:
            lamp = state["product"]
            level = max(lamp["lowStockThreshold"] - LOW_STOCK_MARGIN, 0)
            path = f"/api/v1/products/{lamp['id']}/stock"
            answer = await api.call("PATCH", path, token=state["seller_token"], body={"stock": level})
            product = (answer.data or {}).get("product") or {}
            if answer.status != 200 or (product.get("stock"), product.get("lowStock")) != (level, True):
                raise StepFailed(f"expected 200 with stock {level} and lowStock true", answer)
            state["low_stock"] = level
            return f"{STOCK - QUANTITY} -> {level} (PATCH /api/v1/products/{{id}}/stock), lowStock true"

        async def low_stock_notified() -> str:
            lamp = state["product"]
            path = "/api/v1/notifications?template=stock.low"

            async def check() -> tuple[bool, Answer | None, str]:
                answer = await api.call("GET", path, token=state["seller_token"])
                items = (answer.data or {}).get("items", []) if answer.status == 200 else []
                sms = [item for item in items if item.get("productId") == lamp["id"] and item.get("channel") == "sms"]
                state["low_sms"] = sms
                return bool(sms), answer, "no low-stock SMS to the seller"

            await poll(check)
            sms = state["low_sms"][0]
            return f"to {sms['to']}: {sms['message']!r} ({sms['status']})"

        async def stock_movements() -> str:
            lamp = state["product"]
            path = f"/api/v1/analytics/products/{lamp['id']}"
            level = state["low_stock"]

            async def check() -> tuple[bool, Answer | None, str]:
                answer = await api.call("GET", path, token=state["seller_token"])
                data = (answer.data or {}) if answer.status == 200 else {}
                moved = data.get("stockMovements", {}).get("count")
                seen = (moved, data.get("currentStock"), data.get("lowStock"))
                return seen == (2, level, True), answer, f"movements {moved}, stock {data.get('currentStock')}"

            answer, _ = await poll(check)
            assert answer is not None
            moves = answer.data["stockMovements"]
            return (
                f"{moves['count']} movements ({moves['unitsOut']} units out, {moves['unitsIn']} in), "
                f"stock {answer.data['currentStock']}, low"
            )

        await self.step("the gateway answers (GET /api/v1/health)", health)
        await self.step("register a seller", lambda: register("seller"))
        await self.step("log in as the seller", lambda: login("seller"))
        await self.step(f"create a product, stock {STOCK}", lambda: create_product("product", "Demo lamp", PRICE_CENTS))
        await self.step(
            "create a product the card processor declines",
            lambda: create_product("declined_product", "Demo vase", DECLINED_PRICE_CENTS),
        )
        await self.step("register a customer", lambda: register("customer"))
        await self.step("log in as the customer", lambda: login("customer"))
        await self.step(f"order {QUANTITY} lamps", lambda: order("paid_order", "product", QUANTITY))
        await self.step("the order is paid", order_status("paid_order", "paid"))
        await self.step("the stock went down", stock_is("product", STOCK - QUANTITY, "reserved for the order"))
        await self.step("an SMS notification was recorded", notified)
        await self.step("the seller's analytics show the revenue", revenue)
        await self.step("order the vase (declined card)", lambda: order("failed_order", "declined_product", 1))
        await self.step("the payment fails", order_status("failed_order", "payment_failed"))
        await self.step("the stock is released", stock_is("declined_product", STOCK, "released"))
        threshold = state["product"]["lowStockThreshold"]
        await self.step(f"lower the lamp's stock (low at or below {threshold})", low_stock)
        await self.step("the seller got a low-stock SMS", low_stock_notified)
        await self.step("the lamp's analytics show the stock movements", stock_movements)


def _indent(text: str) -> str:
    return "\n".join("       " + line for line in text.splitlines())


async def drive(url: str, out: TextIO) -> int:
    """Every step against the gateway at url, printed to out: 0 when all passed, 1 at the first that did not."""
    started = time.monotonic()
    print(f"kadai demo: the order flow through {url}", file=out, flush=True)
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        demo = Demo(Client(session, url), out)
        try:
            await demo.run()
        except StepFailed:
            print(f"demo FAILED at step {demo.number}", file=out, flush=True)
            return 1
    print(f"demo OK: {demo.number} steps in {time.monotonic() - started:.1f}s", file=out, flush=True)
    return 0


def run(url: str, out: TextIO | None = None) -> int:
    """`kadai demo`."""
    return asyncio.run(drive(url, out or sys.stdout))
