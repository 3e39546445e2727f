"""order-service against a real product-service on a loopback port: placing orders (prices, sellers and
stock checked over HTTP with a service token), who sees which order, and the status moves that payment and
reservation events cause, delivered through the real RabbitMQ."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from gateway.logs import request_id_var
from services.events import ORDER_CREATED, ORDER_STATUS_UPDATED, PAYMENT_PROCESSED
from services.order import SERVICE
from services.order.service import OPENAPI_PATHS
from services.product import SERVICE as PRODUCT_SERVICE
from tests.conftest import StartUpstream
from tests.process.helpers import wait_until
from tests.services.conftest import MakeSettings, Serve
from tests.services.helpers import EventProbe, Served, check_openapi
from tests.services.shop_support import (
    BUYER,
    OTHER_BUYER,
    OTHER_SELLER,
    SELLER,
    admin,
    call,
    consuming,
    create_product,
    customer,
    handled,
    outbox,
    payment_event,
    reservation_failed,
    seller,
    service_caller,
)
from tests.support import free_port


@pytest.fixture
async def catalogue(serve: Serve, make_settings: MakeSettings) -> Served:
    return await serve(PRODUCT_SERVICE, make_settings())


@pytest.fixture
async def orders(serve: Serve, make_settings: MakeSettings, catalogue: Served) -> Served:
    return await serve(SERVICE, make_settings(service_urls={"product-service": catalogue.url}))


async def place(service: Served, items: list[tuple[str, int]], buyer: str = BUYER, **options: Any) -> Any:
    return await call(
        service,
        "POST",
        "/orders",
        as_=customer(buyer),
        json={"items": [{"productId": product_id, "quantity": quantity} for product_id, quantity in items]},
        **options,
    )


class RequestIds(logging.Handler):
    """Access-log lines with the request ID they were logged under."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), request_id_var.get()))


@pytest.fixture
def access_lines(caplog: pytest.LogCaptureFixture) -> Iterator[RequestIds]:
    caplog.set_level(logging.INFO, logger="services.access")
    handler = RequestIds()
    logger = logging.getLogger("services.access")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_the_openapi_paths_name_every_route() -> None:
    assert {path: set(item) - {"parameters"} for path, item in OPENAPI_PATHS.items()} == {
        "/orders": {"get", "post"},
        "/orders/{orderId}": {"get"},
    }
    assert OPENAPI_PATHS["/orders"]["post"]["responses"]["503"]["description"]
    check_openapi(SERVICE)


# Placing orders -----------------------------------------------------------------------------------------


@pytest.mark.rabbitmq
async def test_an_order_takes_product_services_current_prices_and_publishes_order_created(
    serve: Serve,
    make_settings: MakeSettings,
    catalogue: Served,
    probe: EventProbe,
    rabbitmq_server: str,
    access_lines: RequestIds,
) -> None:
    service = await serve(
        SERVICE, make_settings(amqp_url=rabbitmq_server, service_urls={"product-service": catalogue.url})
    )
    kettle = await create_product(catalogue, priceCents=2500, stock=10)
    cup = await create_product(catalogue, name="Cup", priceCents=300, stock=10)
    repriced = await call(catalogue, "PATCH", f"/products/{kettle['id']}", as_=seller(), json={"priceCents": 2600})
    assert repriced.status == 200

    placed = await place(service, [(kettle["id"], 3), (cup["id"], 2)], headers={"X-Request-ID": "trace-order-7"})

    assert placed.status == 201 and placed.body["message"] == "Order created", placed
    order = placed.data["order"]
    assert order["id"].startswith("order_")
    assert {key: order[key] for key in ("userId", "sellerId", "status", "statusReason", "amountCents", "currency")} == {
        "userId": BUYER,
        "sellerId": SELLER,
        "status": "pending",
        "statusReason": None,
        "amountCents": 3 * 2600 + 2 * 300,
        "currency": "USD",
    }
    assert order["items"] == [
        {"productId": kettle["id"], "name": "Kettle", "quantity": 3, "unitPriceCents": 2600, "lineTotalCents": 7800},
        {"productId": cup["id"], "name": "Cup", "quantity": 2, "unitPriceCents": 300, "lineTotalCents": 600},
    ]
    [event] = await probe.wait_for(1)
    assert (event.type, event.source, event.request_id) == (ORDER_CREATED, "order-service", "trace-order-7")
    assert event.data == {
        "orderId": order["id"],
        "userId": BUYER,
        "sellerId": SELLER,
        "items": [
            {"productId": kettle["id"], "quantity": 3, "unitPriceCents": 2600},
            {"productId": cup["id"], "quantity": 2, "unitPriceCents": 300},
        ],
        "amountCents": 8400,
        "currency": "USD",
    }
    # product-service answered the item check under the order's request ID.
    assert ("POST /products/validate 200", "trace-order-7") in access_lines.lines


async def test_a_client_cannot_set_prices_or_send_bad_items(orders: Served, catalogue: Served) -> None:
    kettle = await create_product(catalogue)
    line = {"productId": kettle["id"], "quantity": 1}

    priced = await call(
        orders, "POST", "/orders", as_=customer(), json={"items": [{**line, "unitPriceCents": 1}]}
    )
    empty = await call(orders, "POST", "/orders", as_=customer(), json={"items": []})
    zero = await call(orders, "POST", "/orders", as_=customer(), json={"items": [{**line, "quantity": 0}]})
    twice = await call(orders, "POST", "/orders", as_=customer(), json={"items": [line, line]})
    not_json = await call(orders, "POST", "/orders", as_=customer(), data=b"{items", headers={"Content-Type": "x"})
    anonymous = await call(orders, "POST", "/orders", json={"items": [line]})
    as_service = await call(orders, "POST", "/orders", as_=service_caller("payment-service"), json={"items": [line]})

    assert (priced.status, priced.fields) == (422, {"items[0].unitPriceCents"})
    assert (empty.status, empty.fields) == (422, {"items"})
    assert (zero.status, zero.fields) == (422, {"items[0].quantity"})
    assert (twice.status, twice.fields) == (422, {"items"})
    assert (not_json.status, anonymous.status, as_service.status) == (400, 401, 403)
    assert await outbox(orders) == []


async def test_unknown_products_mixed_sellers_and_short_stock_are_refused_with_the_items_named(
    orders: Served, catalogue: Served
) -> None:
    kettle = await create_product(catalogue, stock=2)
    theirs = await create_product(catalogue, OTHER_SELLER, name="Their cup")
    euro = await create_product(catalogue, name="Euro mug", currency="EUR")

    unknown = await place(orders, [(kettle["id"], 1), ("prod_nothing", 1)])
    mixed = await place(orders, [(kettle["id"], 1), (theirs["id"], 1)])
    currencies = await place(orders, [(kettle["id"], 1), (euro["id"], 1)])
    short = await place(orders, [(kettle["id"], 3)])

    assert (unknown.status, unknown.body["error"]) == (422, "Unknown products")
    assert unknown.body["details"] == [
        {"field": "items[1].productId", "message": "no such product", "type": "unknown_product"}
    ]
    assert (mixed.status, mixed.body["details"][0]["type"]) == (422, "mixed_sellers")
    assert (currencies.status, currencies.body["details"][0]["type"]) == (422, "mixed_currencies")
    assert (short.status, short.body["error"]) == (409, "Not enough stock")
    assert short.body["details"] == [
        {"field": "items[0].quantity", "message": "only 2 in stock", "type": "insufficient_stock"}
    ]
    assert await outbox(orders) == []


def fake_product_service(delay: float = 0.0, status: int = 200, data: Any = None) -> web.Application:
    """A stand-in for product-service that answers the item check late, with an error, or nonsense."""

    async def validate(_request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        if status >= 400:
            return web.json_response({"success": False, "error": "boom", "statusCode": status}, status=status)
        return web.json_response({"success": True, "data": data})

    app = web.Application()
    app.router.add_post("/products/validate", validate)
    return app


@pytest.mark.parametrize(
    "trouble", ["unreachable", "too-slow", "failing"], ids=["unreachable", "too-slow", "failing"]
)
async def test_an_order_is_503_when_product_service_cannot_check_it(
    serve: Serve, make_settings: MakeSettings, start_upstream: StartUpstream, trouble: str
) -> None:
    if trouble == "unreachable":
        url = f"http://127.0.0.1:{free_port()}"
    else:
        fake = fake_product_service(delay=5.0) if trouble == "too-slow" else fake_product_service(status=500)
        url = await start_upstream(fake)
    service = await serve(
        SERVICE,
        make_settings(service_urls={"product-service": url}, environ={"ORDER_PRODUCT_TIMEOUT": "200ms"}),
    )

    started = asyncio.get_running_loop().time()
    refused = await place(service, [("prod_1", 1)], headers={"X-Request-ID": "trace-503"})
    elapsed = asyncio.get_running_loop().time() - started

    assert refused.status == 503 and elapsed < 2.0
    assert refused.body == {
        "success": False,
        "error": "product-service is unavailable; try again shortly",
        "statusCode": 503,
        "timestamp": refused.body["timestamp"],
        "requestId": "trace-503",
        "details": {"service": "product-service"},
    }
    assert await outbox(service) == []


@pytest.mark.parametrize(
    ("status", "data"),
    [(403, None), (200, {"items": "nope"}), (200, {"items": []})],
    ids=["refused", "malformed", "items-left-out"],
)
async def test_an_order_is_502_when_product_service_answers_something_unusable(
    serve: Serve, make_settings: MakeSettings, start_upstream: StartUpstream, status: int, data: Any
) -> None:
    url = await start_upstream(fake_product_service(status=status, data=data))
    service = await serve(SERVICE, make_settings(service_urls={"product-service": url}))

    refused = await place(service, [("prod_1", 1)])

    assert (refused.status, refused.body["statusCode"]) == (502, 502)
    assert await outbox(service) == []


# Reading orders ---------------------------------------------------------------------------------------


async def test_who_sees_which_order(orders: Served, catalogue: Served) -> None:
    mine = await create_product(catalogue, stock=100)
    theirs = await create_product(catalogue, OTHER_SELLER, name="Their cup", stock=100)
    first = (await place(orders, [(mine["id"], 1)])).data["order"]
    second = (await place(orders, [(theirs["id"], 2)])).data["order"]
    other = (await place(orders, [(mine["id"], 3)], buyer=OTHER_BUYER)).data["order"]

    def ids(reply: Any) -> list[str]:
        assert reply.status == 200, reply
        return [order["id"] for order in reply.data["orders"]]

    own = await call(orders, "GET", "/orders", as_=customer())
    everyone = await call(orders, "GET", "/orders", as_=admin())
    sales = await call(orders, "GET", f"/orders?sellerId={SELLER}", as_=seller())
    page = await call(orders, "GET", "/orders?page=2&pageSize=2", as_=admin())
    by_buyer = await call(orders, "GET", f"/orders?userId={OTHER_BUYER}", as_=admin())
    others_sales = await call(orders, "GET", f"/orders?sellerId={OTHER_SELLER}", as_=seller())
    others_orders = await call(orders, "GET", f"/orders?userId={OTHER_BUYER}", as_=customer())
    anonymous = await call(orders, "GET", "/orders")

    assert ids(own) == [second["id"], first["id"]]
    assert ids(everyone) == [other["id"], second["id"], first["id"]]
    assert ids(sales) == [other["id"], first["id"]]
    assert ids(page) == [first["id"]] and page.data["pagination"]["total"] == 3
    assert ids(by_buyer) == [other["id"]]
    assert (others_sales.status, others_orders.status, anonymous.status) == (403, 403, 401)

    path = f"/orders/{first['id']}"
    allowed = [customer(), seller(), admin(), service_caller("notification-service")]
    refused = [customer(OTHER_BUYER), seller(OTHER_SELLER)]
    assert [(await call(orders, "GET", path, as_=caller)).status for caller in allowed] == [200, 200, 200, 200]
    assert [(await call(orders, "GET", path, as_=caller)).status for caller in refused] == [404, 404]
    assert (await call(orders, "GET", path, as_=customer())).data["order"] == first
    assert (await call(orders, "GET", "/orders/order_nothing", as_=admin())).status == 404


# Status moves through RabbitMQ -------------------------------------------------------------------------


@pytest.mark.rabbitmq
async def test_payment_and_reservation_events_move_orders_once_and_only_forward(
    serve: Serve, make_settings: MakeSettings, catalogue: Served, probe: EventProbe, rabbitmq_server: str
) -> None:
    service = await serve(
        SERVICE, make_settings(amqp_url=rabbitmq_server, service_urls={"product-service": catalogue.url})
    )
    await consuming(service)
    kettle = await create_product(catalogue, priceCents=1000, stock=100)
    paid, failed, cancelled, refunded, untouched = [
        (await place(service, [(kettle["id"], 1)])).data["order"]["id"] for _ in range(5)
    ]

    processed = payment_event(paid, failed=False)
    await probe.publish(processed)
    await probe.publish(processed)  # redelivered
    await probe.publish(payment_event(failed, failed=True))
    await probe.publish(reservation_failed(cancelled))
    await probe.publish(payment_event(refunded, failed=False))
    await probe.publish(payment_event(untouched, failed=False, source="api"))  # a direct charge
    await probe.publish(payment_event("order_unknown", failed=False))
    await handled(service, 6)
    await wait_until(
        lambda: service.metric("kadai_service_events_consumed_total", type=PAYMENT_PROCESSED, outcome="duplicate") == 1,
        5,
        "the duplicate",
    )
    # Events that come after the order has moved on.
    await probe.publish(payment_event(paid, failed=True))
    await probe.publish(payment_event(cancelled, failed=False))
    await probe.publish(reservation_failed(refunded))
    await handled(service, 9)

    async def status(order_id: str) -> tuple[str, str | None]:
        order = (await call(service, "GET", f"/orders/{order_id}", as_=customer())).data["order"]
        return order["status"], order["statusReason"]

    assert [await status(order_id) for order_id in (paid, failed, cancelled, refunded, untouched)] == [
        ("paid", None),
        ("payment_failed", "card_declined"),
        ("cancelled", "insufficient_stock"),
        ("cancelled", "insufficient_stock"),
        ("pending", None),
    ]
    updates = await outbox(service, ORDER_STATUS_UPDATED)
    moves = [(data["orderId"], data["previousStatus"], data["status"]) for data in updates]
    assert sorted(moves[:4]) == sorted(
        [
            (paid, "pending", "paid"),
            (failed, "pending", "payment_failed"),
            (cancelled, "pending", "cancelled"),
            (refunded, "pending", "paid"),
        ]
    )
    assert moves[4:] == [(refunded, "paid", "cancelled")]
    [first] = [data for data in updates if data["orderId"] == paid]
    assert first == {
        "orderId": paid,
        "status": "paid",
        "previousStatus": "pending",
        "userId": BUYER,
        "sellerId": SELLER,
        "amountCents": 1000,
        "currency": "USD",
    }
