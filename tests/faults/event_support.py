"""Helpers of the event fault tests: a shop that places orders through the gateway of a `kadai up` process,
and a ledger read from the services' SQLite files that says whether every committed event reached every
consumer once and had its effects once."""
from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import orjson

from services import catalog
from services.events import ORDER_STATUS_UPDATED
from services.events.bus import Topology
from services.platform.demo import Client

PASSWORD = "event faults password"
PRICE_CENTS = 2500
DECLINED_PRICE_CENTS = 1013
"""payment-service's simulator declines amounts whose cents end in 13 (one unit of this product)."""
STOCK = 1_000_000
"""High enough that no order runs out and no low-stock message joins the count."""
DECLINE_EVERY = 5

PAID_MESSAGES = frozenset({"order.confirmation", "order.new", "payment.receipt", "order.paid"})
DECLINED_MESSAGES = frozenset({"order.confirmation", "order.new", "payment.failed"})
"""Templates notification-service records once for each order, to its buyer and to its seller."""


@dataclass(frozen=True, slots=True)
class Placed:
    order_id: str
    buyer: str
    quantity: int
    declined: bool

    @property
    def final_status(self) -> str:
        return "payment_failed" if self.declined else "paid"


@dataclass
class Shop:
    """One seller with two products (one the card processor declines) and a few buyers, all registered
    through the gateway; place() orders in turn as each buyer."""

    client: Client
    tag: str
    seller_token: str = ""
    products: dict[str, str] = field(default_factory=dict)
    buyers: list[tuple[str, str]] = field(default_factory=list)
    """(user ID, token) of each buyer."""
    placed: list[Placed] = field(default_factory=list)
    _numbers: int = 0

    async def open(self, buyers: int) -> Shop:
        _seller, self.seller_token = await self._user("seller")
        for key, price in (("paid", PRICE_CENTS), ("declined", DECLINED_PRICE_CENTS)):
            body = {"name": f"Fault {key}", "priceCents": price, "stock": STOCK}
            data = await self.client.expect(201, "POST", "/api/v1/products", token=self.seller_token, body=body)
            self.products[key] = data["product"]["id"]
        for number in range(buyers):
            self.buyers.append(await self._user("customer", number))
        return self

    async def _user(self, role: str, number: int = 0) -> tuple[str, str]:
        email = f"faults-{role}-{number}-{self.tag}@example.com"
        body = {"email": email, "password": PASSWORD, "name": f"Fault {role} {number}", "role": role}
        created = await self.client.expect(201, "POST", "/api/v1/auth/register", body=body)
        login = await self.client.expect(200, "POST", "/api/v1/auth/login", body={"email": email, "password": PASSWORD})
        return created["user"]["id"], login["accessToken"]

    async def place(self) -> Placed:
        number, self._numbers = self._numbers, self._numbers + 1  # taken before the await: place() runs concurrently
        declined = number % DECLINE_EVERY == DECLINE_EVERY - 1
        quantity = 1 if declined else 1 + number % 3
        buyer, token = self.buyers[number % len(self.buyers)]
        body = {"items": [{"productId": self.products["declined" if declined else "paid"], "quantity": quantity}]}
        data = await self.client.expect(201, "POST", "/api/v1/orders", token=token, body=body)
        placed = Placed(data["order"]["id"], buyer, quantity, declined)
        self.placed.append(placed)
        return placed


def consumers() -> dict[str, frozenset[str]]:
    """Each catalogue service that handles events -> the event types it handles."""
    found = {name: frozenset(catalog.load(name).handlers) for name in catalog.CATALOG}
    return {name: types for name, types in found.items() if types}


@dataclass
class Ledger:
    """What the services' databases hold about events and their effects."""

    published: dict[str, str] = field(default_factory=dict)
    """Event ID -> type, of every event in any service's outbox."""
    unsent: int = 0
    processed: dict[str, set[str]] = field(default_factory=dict)
    """Consumer -> IDs of the events it recorded as handled."""
    orders: dict[str, str] = field(default_factory=dict)
    """Order ID -> status."""
    payments: Counter[str] = field(default_factory=Counter)
    """Order ID -> payments made for it."""
    messages: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(order ID, template) -> notifications recorded."""
    pending_messages: int = 0
    analytics_events: set[str] = field(default_factory=set)
    """IDs in analytics-service's ledger of events (its effect of every event it handles)."""
    status_updates: Counter[str] = field(default_factory=Counter)
    """Order ID -> order.status.updated events order-service published."""
    stock: dict[str, int] = field(default_factory=dict)
    """Product ID -> stock."""

    def missing(self) -> dict[str, set[str]]:
        """Consumer -> IDs of published events of its types that it has not handled."""
        gaps = {}
        for name, types in consumers().items():
            wanted = {event_id for event_id, kind in self.published.items() if kind in types}
            if gap := wanted - self.processed.get(name, set()):
                gaps[name] = gap
        return gaps

    def unknown(self) -> dict[str, set[str]]:
        """Consumer -> IDs it handled that no outbox holds (events from outside the platform, or a bug)."""
        return {
            name: extra for name, ids in self.processed.items() if (extra := ids - set(self.published))
        }

    def settled(self, placed: Iterable[Placed]) -> bool:
        """Every event sent and handled, every order final and every message sent."""
        return (
            self.unsent == 0
            and not self.missing()
            and self.pending_messages == 0
            and all(self.orders.get(order.order_id) == order.final_status for order in placed)
        )


def read_ledger(data_dir: Path) -> Ledger:
    """The ledger of the SQLite files in data_dir (read-only; the platform may be running)."""
    ledger = Ledger()
    for name in catalog.CATALOG:
        path = data_dir / f"{name}.sqlite3"
        if not path.exists():
            continue
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            _read(ledger, name, db)
    return ledger


def _read(ledger: Ledger, name: str, db: sqlite3.Connection) -> None:
    if not _has_table(db, "kadai_outbox"):
        return  # not migrated yet
    for event_id, kind, sent_at, body in db.execute("SELECT event_id, type, sent_at, body FROM kadai_outbox"):
        ledger.published[event_id] = kind
        ledger.unsent += sent_at is None
        if kind == ORDER_STATUS_UPDATED:
            ledger.status_updates[orjson.loads(body)["data"]["orderId"]] += 1
    ledger.processed[name] = {row[0] for row in db.execute("SELECT event_id FROM kadai_processed_events")}
    if name == "order-service":
        ledger.orders = dict(db.execute("SELECT id, status FROM orders").fetchall())
    elif name == "payment-service":
        ledger.payments.update(row[0] for row in db.execute("SELECT order_id FROM payments WHERE source = 'order'"))
    elif name == "notification-service":
        for order_id, template, status in db.execute(
            "SELECT order_id, template, status FROM notifications WHERE order_id IS NOT NULL"
        ):
            ledger.messages[(order_id, template)] += 1
            ledger.pending_messages += status == "pending"
    elif name == "analytics-service":
        ledger.analytics_events = {row[0] for row in db.execute("SELECT event_id FROM events")}
    elif name == "product-service":
        ledger.stock = dict(db.execute("SELECT id, stock FROM products").fetchall())


def _has_table(db: sqlite3.Connection, table: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None


async def left_on_broker(amqp_url: str, prefix: str) -> dict[str, int]:
    """Queue -> messages still in it, of every consumer's queue, retry queue and dead-letter queue. After a
    settled platform stopped, each is empty: a message there is a delivery that failed or was never settled."""
    found = {}
    connection = await aio_pika.connect(amqp_url, timeout=5)
    try:
        for name in consumers():
            for queue_name in Topology(prefix, name).queues:
                channel = await connection.channel()  # a failed passive declare closes its channel
                try:
                    queue = await channel.declare_queue(queue_name, passive=True)
                except aio_pika.exceptions.ChannelNotFoundEntity:
                    continue
                if count := queue.declaration_result.message_count:
                    found[queue_name] = count
                await channel.close()
    finally:
        await connection.close()
    return found


def exactly_once_problems(ledger: Ledger, shop: Shop) -> list[str]:
    """Everything that is not "every order's events delivered once to each consumer, each effect once"."""
    problems = []
    if ledger.unsent:
        problems.append(f"{ledger.unsent} event(s) never left an outbox")
    for name, gap in sorted(ledger.missing().items()):
        kinds = Counter(ledger.published[event_id] for event_id in gap)
        problems.append(f"{name} never handled {len(gap)} event(s): {dict(kinds)}")
    for name, extra in sorted(ledger.unknown().items()):
        problems.append(f"{name} handled {len(extra)} event(s) no service published")
    analytics = consumers()["analytics-service"]
    wanted = {event_id for event_id, kind in ledger.published.items() if kind in analytics}
    if ledger.analytics_events != wanted:
        problems.append(f"analytics-service's ledger differs by {len(wanted ^ ledger.analytics_events)} event(s)")
    if set(ledger.orders) != {order.order_id for order in shop.placed}:
        problems.append(f"{len(ledger.orders)} order(s) in order-service, {len(shop.placed)} placed")
    for order in shop.placed:
        problems.extend(_order_problems(ledger, order))
    sold = sum(order.quantity for order in shop.placed if not order.declined)
    for key, product_id in shop.products.items():
        expected = STOCK - (sold if key == "paid" else 0)
        if ledger.stock.get(product_id) != expected:
            problems.append(f"stock of the {key} product is {ledger.stock.get(product_id)}, not {expected}")
    return problems


def _order_problems(ledger: Ledger, order: Placed) -> list[str]:
    found = []
    status = ledger.orders.get(order.order_id)
    if status != order.final_status:
        found.append(f"order {order.order_id} is {status}, not {order.final_status}")
    if ledger.payments[order.order_id] != 1:
        found.append(f"order {order.order_id} has {ledger.payments[order.order_id]} payments")
    if ledger.status_updates[order.order_id] != 1:
        found.append(f"order {order.order_id} had {ledger.status_updates[order.order_id]} status updates")
    templates = DECLINED_MESSAGES if order.declined else PAID_MESSAGES
    messages = {template: ledger.messages[(order.order_id, template)] for template in templates}
    extra = {template for (order_id, template) in ledger.messages if order_id == order.order_id} - templates
    if set(messages.values()) != {1} or extra:
        found.append(f"order {order.order_id} has messages {messages}, others {sorted(extra)}")
    return found
