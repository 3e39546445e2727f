"""analytics-service: the same story of events published in order and backwards (and with a duplicate) on
RabbitMQ gives the same metrics; the routes through HTTP; and the platform's own order flow (product-,
order-, payment-, notification- and ai-service on loopback ports) measured end to end."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.ai import SERVICE as AI_SERVICE
from services.analytics import SERVICE
from services.analytics.service import HANDLERS
from services.broadcast.events import BROADCAST_REQUESTED
from services.events import (
    NOTIFICATION_SENT,
    ORDER_CREATED,
    ORDER_STATUS_UPDATED,
    PAYMENT_FAILED,
    PAYMENT_PROCESSED,
    PRODUCT_CREATED,
    PRODUCT_STOCK_UPDATED,
    PRODUCT_UPDATED,
    SPEC_TYPES,
    USER_CREATED,
)
from services.events.event import Event
from services.notification import SERVICE as NOTIFICATION_SERVICE
from services.notification.events import NOTIFICATION_FAILED
from services.order import SERVICE as ORDER_SERVICE
from services.payment import SERVICE as PAYMENT_SERVICE
from services.product import SERVICE as PRODUCT_SERVICE
from services.product.events import PRODUCT_RESERVATION_FAILED
from tests.process.helpers import wait_until
from tests.services.conftest import MakeSettings, Serve
from tests.services.consumer_support import call, consuming, event, publish_all
from tests.services.helpers import EventProbe, Served, check_openapi
from tests.services.shop_support import SELLER, create_product, customer
from tests.services.shop_support import call as shop_call

ADMIN = ("user_admin", "admin")
START = datetime(2024, 7, 5, 14, 30, tzinfo=UTC)


def at(second: int) -> str:
    return (START + timedelta(seconds=second)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def story(tag: str) -> list[Event]:
    """A seller's day, in the order it happened (event timestamps one second apart): a paid order, a
    failed one whose reservation is released, a restock, and a campaign with one message sent and one
    failed. Backwards, the oldest stock event comes last: the stock must stay the newest one's."""
    seller, product, paid, failed = f"seller_{tag}", f"prod_{tag}", f"order_{tag}_1", f"order_{tag}_2"
    stock = {"productId": product, "sellerId": seller, "threshold": 5}
    steps: list[tuple[str, dict[str, Any]]] = [
        (USER_CREATED, {"userId": seller, "email": f"{tag}@example.com", "role": "seller"}),
        (PRODUCT_CREATED, {"productId": product, "sellerId": seller, "name": "Lamp", "priceCents": 1250, "stock": 10}),
        (
            ORDER_CREATED,
            {
                "orderId": paid,
                "userId": "user_buyer",
                "sellerId": seller,
                "items": [{"productId": product, "quantity": 3, "unitPriceCents": 1250}],
                "amountCents": 3750,
                "currency": "EUR",
            },
        ),
        (PRODUCT_STOCK_UPDATED, {**stock, "stock": 7, "previousStock": 10, "reason": "order", "lowStock": False}),
        (PAYMENT_PROCESSED, {"paymentId": f"pay_{tag}_1", "orderId": paid, "amountCents": 3750, "currency": "EUR"}),
        (ORDER_STATUS_UPDATED, {"orderId": paid, "status": "paid", "previousStatus": "pending"}),
        (
            ORDER_CREATED,
            {
                "orderId": failed,
                "userId": "user_buyer",
                "sellerId": seller,
                "items": [{"productId": product, "quantity": 4, "unitPriceCents": 1250}],
                "amountCents": 5013,
                "currency": "EUR",
            },
        ),
        (PRODUCT_STOCK_UPDATED, {**stock, "stock": 3, "previousStock": 7, "reason": "order", "lowStock": True}),
        (PAYMENT_FAILED, {"paymentId": f"pay_{tag}_2", "orderId": failed, "amountCents": 5013, "reason": "declined"}),
        (ORDER_STATUS_UPDATED, {"orderId": failed, "status": "payment_failed", "previousStatus": "pending"}),
        (PRODUCT_STOCK_UPDATED, {**stock, "stock": 7, "previousStock": 3, "reason": "release", "lowStock": False}),
        (PRODUCT_STOCK_UPDATED, {**stock, "stock": 20, "previousStock": 7, "reason": "manual", "lowStock": False}),
        (BROADCAST_REQUESTED, {"campaignId": f"bc_{tag}", "senderId": seller, "message": "Hi", "recipients": ["u1"]}),
    ]
    events = [event(kind, data, timestamp=at(second)) for second, (kind, data) in enumerate(steps)]
    order_event, low_stock_event, campaign_event = events[2], events[7], events[12]

    def sent(kind: str, number: int, related: Event, **refs: str) -> Event:
        data = {"notificationId": f"ntf_{tag}_{number}", "channel": "sms", "to": "x", "template": "t"}
        return event(kind, {**data, "relatedEventId": related.id, **refs}, timestamp=at(20 + number))

    return [
        *events,
        sent(NOTIFICATION_SENT, 1, order_event, orderId=paid),
        sent(NOTIFICATION_SENT, 2, low_stock_event, productId=product),
        sent(NOTIFICATION_SENT, 3, campaign_event, campaignId=f"bc_{tag}"),
        sent(NOTIFICATION_FAILED, 4, campaign_event, campaignId=f"bc_{tag}"),
    ]


async def handled_all(service: Served, count: int) -> None:
    def total() -> float:
        return sum(
            service.metric("kadai_service_events_consumed_total", type=kind, outcome=outcome)
            for kind in HANDLERS
            for outcome in ("ok", "duplicate")
        )

    await wait_until(lambda: total() >= count, 10, f"{count} events handled")


def test_the_openapi_paths_document_every_route() -> None:
    check_openapi(SERVICE)


@pytest.fixture
async def analytics(serve: Serve, make_settings: MakeSettings, rabbitmq_server: str) -> Served:
    service = await serve(SERVICE, make_settings(amqp_url=rabbitmq_server))
    await consuming(service)
    return service


async def get(service: Served, path: str, who: tuple[str, str] = ADMIN) -> dict[str, Any]:
    status, body = await call(service, "GET", path, as_=who)
    assert status == 200, body
    data: dict[str, Any] = body["data"]
    return data


def test_it_consumes_every_event_type_of_the_platform() -> None:
    assert set(HANDLERS) == {*SPEC_TYPES, BROADCAST_REQUESTED, NOTIFICATION_FAILED, PRODUCT_RESERVATION_FAILED}


@pytest.mark.rabbitmq
async def test_metrics_do_not_depend_on_the_order_events_arrive_in(analytics: Served, probe: EventProbe) -> None:
    forwards, backwards = story("a"), story("b")

    await publish_all(probe, *forwards, forwards[2], *reversed(backwards))  # order.created of "a" twice

    await handled_all(analytics, len(forwards) * 2 + 1)
    seller_a = await get(analytics, "/analytics/sellers/seller_a")
    seller_b = await get(analytics, "/analytics/sellers/seller_b", ("seller_b", "seller"))
    assert seller_a == {
        "sellerId": "seller_a",
        "orders": 2,
        "paidOrders": 1,
        "revenueCents": {"EUR": 3750},
        "unitsSold": 3,
        "paymentFailures": 1,
        "stockMovements": {"count": 4, "unitsIn": 17, "unitsOut": 7},
        "products": 1,
        "currentStock": 20,
        "lowStockProducts": 0,
        "notificationsSent": 3,
        "topProducts": [{"productId": "prod_a", "name": "Lamp", "unitsSold": 3}],
    }
    top_b = [{**seller_a["topProducts"][0], "productId": "prod_b"}]
    assert seller_b == {**seller_a, "sellerId": "seller_b", "topProducts": top_b}

    product_a = await get(analytics, "/analytics/products/prod_a", ("seller_a", "seller"))
    product_b = await get(analytics, "/analytics/products/prod_b")
    assert product_a == {
        "productId": "prod_a",
        "sellerId": "seller_a",
        "name": "Lamp",
        "orders": 2,
        "paidOrders": 1,
        "revenueCents": {"EUR": 3750},
        "unitsSold": 3,
        "paymentFailures": 1,
        "stockMovements": {"count": 4, "unitsIn": 17, "unitsOut": 7},
        "currentStock": 20,
        "lowStock": False,
        "notificationsSent": 2,
    }
    assert product_b == {**product_a, "productId": "prod_b", "sellerId": "seller_b"}

    summary = await get(analytics, "/analytics/summary")
    assert summary["eventsByType"] == {
        USER_CREATED: 2,
        PRODUCT_CREATED: 2,
        ORDER_CREATED: 4,
        PRODUCT_STOCK_UPDATED: 8,
        PAYMENT_PROCESSED: 2,
        PAYMENT_FAILED: 2,
        ORDER_STATUS_UPDATED: 4,
        BROADCAST_REQUESTED: 2,
        NOTIFICATION_SENT: 6,
        NOTIFICATION_FAILED: 2,
    }
    assert {key: value for key, value in summary.items() if key != "eventsByType"} == {
        "orders": 4,
        "paidOrders": 2,
        "revenueCents": {"EUR": 7500},
        "unitsSold": 6,
        "paymentFailures": 2,
        "stockMovements": {"count": 8, "unitsIn": 34, "unitsOut": 14},
        "sellers": 2,
        "products": 2,
        "users": 2,
        "notificationsSent": 6,
        "notificationsFailed": 2,
        "events": 34,
    }


@pytest.mark.rabbitmq
async def test_a_payment_alone_makes_its_order_paid_even_before_the_order_arrives(
    analytics: Served, probe: EventProbe
) -> None:
    events = story("p")
    first, second = events[2], events[6]

    def paid(order: Event) -> Event:
        data = {"paymentId": f"pay_{order.data['orderId']}", "orderId": order.data["orderId"], "currency": "EUR"}
        return event(PAYMENT_PROCESSED, {**data, "amountCents": order.data["amountCents"]})

    await publish_all(probe, paid(first), first, second, paid(second))

    await handled_all(analytics, 4)
    seller = await get(analytics, "/analytics/sellers/seller_p")
    assert (seller["orders"], seller["paidOrders"], seller["unitsSold"]) == (2, 2, 7)
    assert seller["revenueCents"] == {"EUR": 3750 + 5013}


@pytest.mark.rabbitmq
async def test_direct_charges_move_nothing_and_deleted_products_leave_the_count(
    analytics: Served, probe: EventProbe
) -> None:
    order = story("r")[2]
    events = [
        event(PRODUCT_CREATED, {"productId": "prod_r", "sellerId": "seller_r", "name": "Lamp", "stock": 5}),
        event(PRODUCT_CREATED, {"productId": "prod_old", "sellerId": "seller_r", "name": "Old", "stock": 9}),
        event(PRODUCT_UPDATED, {"productId": "prod_old", "sellerId": "seller_r", "deleted": True}),
        order,
        event(PAYMENT_PROCESSED, {"paymentId": "pay_api", "orderId": "order_r_1", "amountCents": 1, "source": "api"}),
        event(
            PRODUCT_RESERVATION_FAILED,
            {"orderId": "order_r_2", "userId": "user_buyer", "sellerId": "seller_r", "reason": "insufficient_stock"},
        ),
    ]

    await publish_all(probe, *events)

    await handled_all(analytics, len(events))
    seller = await get(analytics, "/analytics/sellers/seller_r")
    assert (seller["orders"], seller["paidOrders"], seller["revenueCents"]) == (1, 0, {})
    assert (seller["products"], seller["currentStock"]) == (1, 5)
    summary = await get(analytics, "/analytics/summary")
    assert summary["eventsByType"][PRODUCT_RESERVATION_FAILED] == 1 and summary["paidOrders"] == 0


@pytest.mark.rabbitmq
async def test_a_cancelled_order_leaves_the_revenue(analytics: Served, probe: EventProbe) -> None:
    forwards = story("c")
    await publish_all(probe, *forwards)
    await handled_all(analytics, len(forwards))
    before = await get(analytics, "/analytics/sellers/seller_c")

    await probe.publish(
        event(
            ORDER_STATUS_UPDATED,
            {"orderId": "order_c_1", "status": "refunded", "previousStatus": "paid"},
            timestamp=at(60),
        )
    )
    await handled_all(analytics, len(forwards) + 1)

    after = await get(analytics, "/analytics/sellers/seller_c")
    assert (before["revenueCents"], before["paidOrders"], before["unitsSold"]) == ({"EUR": 3750}, 1, 3)
    assert (after["revenueCents"], after["paidOrders"], after["unitsSold"], after["orders"]) == ({}, 0, 0, 2)


@pytest.mark.rabbitmq
async def test_the_routes_answer_the_seller_admins_and_services(analytics: Served, probe: EventProbe) -> None:
    forwards = story("d")
    await publish_all(probe, *forwards)
    await handled_all(analytics, len(forwards))

    cases = [
        ("/analytics/sellers/seller_d", None, 401),
        ("/analytics/sellers/seller_d", ("user_buyer", "customer"), 403),
        ("/analytics/sellers/seller_d", ("seller_x", "seller"), 403),
        ("/analytics/sellers/seller_d", ("service:ai-service", "service"), 200),
        ("/analytics/sellers/seller_nobody", ADMIN, 404),
        ("/analytics/products/prod_d", ("seller_x", "seller"), 403),
        ("/analytics/products/prod_d", ("seller_d", "seller"), 200),
        ("/analytics/products/prod_nothing", ("seller_d", "seller"), 404),
        ("/analytics/summary", ("seller_d", "seller"), 403),
        ("/analytics/summary", ("service:ai-service", "service"), 200),
    ]
    for path, who, expected in cases:
        status, body = await call(analytics, "GET", path, as_=who)
        assert status == expected, (path, who, body)
        assert body["success"] is (expected == 200)


@pytest.mark.rabbitmq
async def test_the_platforms_own_order_flow_feeds_notifications_metrics_and_recommendations(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str
) -> None:
    def settings(**overrides: Any) -> Any:
        return make_settings(amqp_url=rabbitmq_server, environ={"NOTIFY_POLL_INTERVAL": "0.05"}, **overrides)

    products = await serve(PRODUCT_SERVICE, settings())
    services = [
        products,
        await serve(PAYMENT_SERVICE, settings()),
        await serve(ORDER_SERVICE, settings(service_urls={"product-service": products.url})),
        await serve(NOTIFICATION_SERVICE, settings()),
        analytics := await serve(SERVICE, settings()),
        ai := await serve(AI_SERVICE, settings()),
    ]
    for service in services:
        await consuming(service)
    kettle = await create_product(products, name="Kettle", priceCents=2500, stock=10, currency="EUR")
    cup = await create_product(products, name="Cup", priceCents=300, stock=50, currency="EUR")
    widget = await create_product(products, name="Widget", priceCents=113, stock=50, currency="EUR")

    for items in ({kettle["id"]: 6, cup["id"]: 2}, {widget["id"]: 1}):  # 156.00 EUR is paid, 1.13 declined
        lines = [{"productId": product_id, "quantity": quantity} for product_id, quantity in items.items()]
        placed = await shop_call(services[2], "POST", "/orders", as_=customer(), json={"items": lines})
        assert placed.status == 201, placed

    expected = {
        "sellerId": SELLER,
        "orders": 2,
        "paidOrders": 1,
        "revenueCents": {"EUR": 15600},
        "unitsSold": 8,
        "paymentFailures": 1,
        "stockMovements": {"count": 4, "unitsIn": 1, "unitsOut": 9},  # the widget's reservation is released
        "products": 3,
        "currentStock": 4 + 48 + 50,
        "lowStockProducts": 1,
        # Buyer: 2 confirmations, a receipt, a failure; seller: 2 new orders, 1 paid, the kettle's low stock.
        "notificationsSent": 8,
        "topProducts": [
            {"productId": kettle["id"], "name": "Kettle", "unitsSold": 6},
            {"productId": cup["id"], "name": "Cup", "unitsSold": 2},
        ],
    }

    async def metrics_settled() -> bool:
        status, body = await call(analytics, "GET", f"/analytics/sellers/{SELLER}", as_=(SELLER, "seller"))
        return status == 200 and body["data"] == expected

    await wait_until(metrics_settled, 10, "the seller's metrics")
    sent = [item for item in probe.events if item.type == NOTIFICATION_SENT]
    assert sorted(item.data["template"] for item in sent) == [
        "order.confirmation",
        "order.confirmation",
        "order.new",
        "order.new",
        "order.paid",
        "payment.failed",
        "payment.receipt",
        "stock.low",
    ]
    status, body = await call(ai, "GET", f"/ai/recommendations?productId={kettle['id']}", as_=customer())
    assert status == 200
    assert [(item["productId"], item["reason"]) for item in body["data"]["recommendations"]] == [
        (cup["id"], "bought-together")
    ]
