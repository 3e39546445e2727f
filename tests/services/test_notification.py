"""notification-service: messages recorded from real events on RabbitMQ, sent by the dispatcher through
the log provider or a real HTTP endpoint, notification.sent counted on the test's exchange, and the
routes through HTTP."""
from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web

from gateway.config.errors import ConfigError
from services.broadcast.events import BROADCAST_REQUESTED, recipient_kind
from services.events import (
    NOTIFICATION_SENT,
    ORDER_CREATED,
    ORDER_STATUS_UPDATED,
    PAYMENT_FAILED,
    PAYMENT_PROCESSED,
    PRODUCT_STOCK_UPDATED,
    USER_CREATED,
    USER_UPDATED,
)
from services.notification import SERVICE
from services.notification.config import NotifyConfig
from services.notification.dispatcher import retry_at
from services.notification.events import NOTIFICATION_FAILED
from services.notification.messages import money
from services.notification.providers import mask_address
from services.notification.service import newly_low
from tests.conftest import StartUpstream
from tests.process.helpers import wait_until
from tests.services.conftest import MakeSettings, Serve
from tests.services.consumer_support import call, consuming, event, handled, publish_all, published
from tests.services.helpers import EventProbe, Served, check_openapi

FAST = {"NOTIFY_POLL_INTERVAL": "0.05"}
ADMIN = ("user_admin", "admin")
BUYER = ("user_buyer", "customer")


# --- pure logic -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("+491701234567", "+49********67"),
        ("+15551234", "+15****34"),
        ("ann@example.com", "a***@example.com"),
        ("user_42", "user_42"),
    ],
    ids=["long-phone", "short-phone", "email", "user-id"],
)
def test_addresses_are_masked_for_logs(address: str, masked: str) -> None:
    assert mask_address(address) == masked


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("+491701234567", "phone"),
        ("0170 1234567", None),
        ("ann@example.com", "email"),
        ("user_ab12", "user"),
        ("42", "user"),
        ("not an address!", None),
        ("", None),
    ],
    ids=["e164", "national-number", "email", "user-id", "numeric-id", "garbage", "empty"],
)
def test_recipients_are_phones_emails_or_user_ids(value: str, kind: str | None) -> None:
    assert recipient_kind(value) == kind


@pytest.mark.parametrize(
    ("cents", "currency", "text"),
    [(1250, "EUR", " (12.50 EUR)"), (5, None, " (0.05)"), (None, "EUR", ""), (-100, "USD", " (-1.00 USD)")],
    ids=["amount", "no-currency", "unknown", "negative"],
)
def test_money_in_messages(cents: int | None, currency: str | None, text: str) -> None:
    assert money(cents, currency) == text


@pytest.mark.parametrize(
    ("data", "stock", "news"),
    [
        ({"previousStock": 6, "threshold": 5}, 5, True),
        ({"previousStock": 5, "threshold": 5}, 4, False),
        ({"previousStock": 1, "threshold": 5}, 0, True),
        ({"previousStock": 0, "threshold": 5}, 0, False),
        ({}, 3, True),
    ],
    ids=["crosses-threshold", "already-low", "sold-out", "stays-out", "no-history"],
)
def test_low_stock_is_news_when_it_crosses_the_threshold_or_hits_zero(
    data: dict[str, int], stock: int, news: bool
) -> None:
    assert newly_low(data, stock) is news


def test_retries_back_off_exponentially_up_to_an_hour() -> None:
    assert [retry_at(100.0, attempts, 30.0) - 100.0 for attempts in (1, 2, 3)] == [30.0, 60.0, 120.0]
    assert retry_at(0.0, 20, 30.0) == 3600.0


def test_the_http_provider_needs_its_url() -> None:
    with pytest.raises(ConfigError) as caught:
        NotifyConfig.from_env({"NOTIFY_PROVIDER": "http"})
    assert "NOTIFY_PROVIDER=http needs NOTIFY_HTTP_URL" in str(caught.value.problems)
    with pytest.raises(ConfigError, match="NOTIFY_HTTP_URL"):
        NotifyConfig.from_env({"NOTIFY_PROVIDER": "http", "NOTIFY_HTTP_URL": "ftp://sms.example"})
    config = NotifyConfig.from_env({"NOTIFY_HTTP_TOKEN": "s3cret-token"})
    assert "s3cret-token" not in repr(config)


def test_the_openapi_paths_document_every_route() -> None:
    check_openapi(SERVICE)


# --- through RabbitMQ and HTTP ----------------------------------------------------------------------


async def start(serve: Serve, make_settings: MakeSettings, rabbitmq_server: str, **environ: str) -> Served:
    service = await serve(SERVICE, make_settings(amqp_url=rabbitmq_server, environ={**FAST, **environ}))
    await consuming(service)
    return service


@pytest.fixture
async def notifications(serve: Serve, make_settings: MakeSettings, rabbitmq_server: str) -> Served:
    return await start(serve, make_settings, rabbitmq_server)


def order_created(order_id: str = "order_1", **extra: Any) -> dict[str, Any]:
    return {
        "orderId": order_id,
        "userId": "user_buyer",
        "sellerId": "user_seller",
        "items": [{"productId": "prod_1", "quantity": 2, "unitPriceCents": 1250}],
        "amountCents": 2500,
        "currency": "EUR",
        **extra,
    }


async def listing(service: Served, who: tuple[str, str], query: str = "") -> list[dict[str, Any]]:
    status, body = await call(service, "GET", f"/notifications{query}", as_=who)
    assert status == 200, body
    items: list[dict[str, Any]] = body["data"]["items"]
    return items


@pytest.mark.rabbitmq
async def test_an_order_messages_buyer_and_seller_once_even_when_redelivered(
    notifications: Served, probe: EventProbe
) -> None:
    buyer = event(USER_CREATED, {"userId": "user_buyer", "email": "bea@example.com", "name": "Bea", "role": "customer"})
    created = event(ORDER_CREATED, order_created())
    await publish_all(probe, buyer)
    await handled(notifications, USER_CREATED, 1)

    await publish_all(probe, created, created)

    sent = await published(probe, NOTIFICATION_SENT, 2)
    await handled(notifications, ORDER_CREATED, 1, outcome="duplicate")
    by_template = {item.data["template"]: item for item in sent}
    assert set(by_template) == {"order.confirmation", "order.new"}
    confirmation = by_template["order.confirmation"].data
    assert confirmation["to"] == "bea@example.com" and confirmation["userId"] == "user_buyer"
    assert confirmation["relatedEventId"] == created.id and confirmation["channel"] == "sms"
    assert confirmation["orderId"] == "order_1"
    assert by_template["order.confirmation"].request_id == "req_test"  # the trace goes on
    # No user.created for the seller yet: the user ID is the address.
    assert by_template["order.new"].data["to"] == "user_seller"

    [own] = await listing(notifications, BUYER)
    assert own["status"] == "sent" and own["id"] == confirmation["notificationId"]
    assert own["message"] == "Kadai: we received your order order_1 (25.00 EUR)."
    assert len(await listing(notifications, ADMIN)) == 2
    await wait_until(lambda: len(probe.received) == 5, 1, "no further events")  # 3 published + 2 sent


@pytest.mark.rabbitmq
async def test_the_phone_in_the_event_wins_and_logs_show_it_masked(
    notifications: Served, probe: EventProbe, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.notification")

    await probe.publish(event(ORDER_CREATED, order_created(phone="+491701234567", sellerId=None)))

    [sent] = await published(probe, NOTIFICATION_SENT, 1)
    assert sent.data["to"] == "+491701234567"
    logged = [(record.getMessage(), getattr(record, "fields", {})) for record in caplog.records]
    assert any(fields.get("to") == "+49********67" for _, fields in logged), logged
    assert "+491701234567" not in repr(logged)


@pytest.mark.rabbitmq
async def test_an_event_that_does_not_validate_is_dead_lettered_without_its_data_in_the_logs(
    notifications: Served, probe: EventProbe, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="services")
    # No userId: the payload fails validation, and pydantic's own message would quote the whole data.
    data = {**order_created(phone="+491701234567"), "email": "bea@example.com"}
    del data["userId"]
    broken = event(ORDER_CREATED, data)

    await probe.publish(broken)

    await handled(notifications, ORDER_CREATED, 1, outcome="dead_lettered")
    [letter] = await notifications.runtime.bus.dead_letters()
    assert letter.event_id == broken.id and letter.error.startswith("ValidationError: userId:"), letter.error
    formatter = logging.Formatter()
    logged = [
        formatter.format(record) + repr(vars(record)) for record in caplog.records if record.name.startswith("services")
    ]
    assert any("dead-lettered" in line for line in logged), logged
    for secret in ("+491701234567", "1701234567", "bea@example.com"):
        assert not any(secret in line for line in logged), secret
        assert secret not in letter.error


@pytest.mark.rabbitmq
async def test_payment_events_before_their_order_are_handled_once_it_arrives(
    serve: Serve, make_settings: MakeSettings, rabbitmq_server: str, probe: EventProbe
) -> None:
    service = await serve(
        SERVICE, make_settings(amqp_url=rabbitmq_server, max_attempts=50, retry_delay=0.05, environ=FAST)
    )
    await consuming(service)
    paid = event(PAYMENT_PROCESSED, {"paymentId": "pay_1", "orderId": "order_7", "amountCents": 999, "currency": "EUR"})

    await probe.publish(paid)
    await handled(service, PAYMENT_PROCESSED, 1, outcome="retried")
    await probe.publish(event(ORDER_CREATED, order_created("order_7", amountCents=999)))

    sent = await published(probe, NOTIFICATION_SENT, 4)
    assert sorted(item.data["template"] for item in sent) == [
        "order.confirmation",
        "order.new",
        "order.paid",
        "payment.receipt",
    ]
    [receipt] = await listing(service, BUYER, "?template=payment.receipt")
    assert receipt["message"] == "Kadai: payment (9.99 EUR) for your order order_7 received. Thank you!"
    assert receipt["eventId"] == paid.id


@pytest.mark.rabbitmq
async def test_status_and_failure_messages_go_to_the_buyer(notifications: Served, probe: EventProbe) -> None:
    await probe.publish(event(ORDER_CREATED, order_created("order_2", sellerId=None)))
    await published(probe, NOTIFICATION_SENT, 1)

    await publish_all(
        probe,
        event(ORDER_STATUS_UPDATED, {"orderId": "order_2", "status": "payment_failed", "previousStatus": "pending"}),
        event(PAYMENT_FAILED, {"paymentId": "pay_2", "orderId": "order_2", "reason": "card_declined"}),
        event(
            ORDER_STATUS_UPDATED,
            {"orderId": "order_2", "status": "cancelled", "previousStatus": "pending", "reason": "insufficient_stock"},
        ),
    )

    sent = await published(probe, NOTIFICATION_SENT, 3)
    assert sorted(item.data["template"] for item in sent) == ["order.confirmation", "order.status", "payment.failed"]
    messages = {item["template"]: item["message"] for item in await listing(notifications, BUYER)}
    assert messages["payment.failed"] == "Kadai: the payment for your order order_2 failed (card declined)."
    assert messages["order.status"] == "Kadai: your order order_2 is now cancelled (insufficient stock)."
    await handled(notifications, ORDER_STATUS_UPDATED, 2)
    assert len(messages) == 3  # the payment_failed status itself sent nothing of its own


@pytest.mark.rabbitmq
async def test_events_that_name_the_buyer_need_no_order_copy(notifications: Served, probe: EventProbe) -> None:
    direct = {"paymentId": "pay_9", "orderId": "order_x", "userId": "user_buyer", "amountCents": 500, "currency": "EUR"}
    shipped = {"orderId": "order_y", "status": "shipped", "previousStatus": "paid", "userId": "user_buyer"}
    cancelled = {"paymentId": "pay_10", "orderId": "order_z", "userId": "user_buyer", "reason": "order_cancelled"}

    await publish_all(
        probe,
        event(PAYMENT_PROCESSED, {**direct, "source": "api"}),
        event(ORDER_STATUS_UPDATED, shipped),
        event(PAYMENT_FAILED, {**cancelled, "source": "order"}),
    )

    sent = await published(probe, NOTIFICATION_SENT, 2)
    await handled(notifications, PAYMENT_FAILED, 1)
    assert sorted((item.data["template"], item.data["to"]) for item in sent) == [
        ("order.status", "user_buyer"),
        ("payment.receipt", "user_buyer"),  # a direct charge: no message to a seller
    ]
    assert notifications.metric("kadai_service_events_consumed_total", type=PAYMENT_PROCESSED, outcome="retried") == 0
    messages = {item["template"]: item["message"] for item in await listing(notifications, BUYER)}
    assert messages["order.status"] == "Kadai: your order order_y is now shipped."
    assert "payment.failed" not in messages  # the cancellation tells the buyer


@pytest.mark.rabbitmq
@pytest.mark.parametrize(
    ("named", "called"), [({"name": "Desk lamp"}, "Desk lamp"), ({}, "7")], ids=["by-name", "by-id-without-a-name"]
)
async def test_low_stock_alerts_the_seller_when_it_becomes_low(
    notifications: Served, probe: EventProbe, named: dict[str, str], called: str
) -> None:
    seller = event(USER_CREATED, {"userId": "user_seller", "email": "sam@example.com", "role": "seller"})
    moved = event(USER_UPDATED, {"userId": "user_seller", "email": "sam@shop.example", "changed": ["email"]})
    stock = {"productId": 7, "sellerId": "user_seller", "reason": "order", "threshold": 5, **named}
    await publish_all(probe, seller, moved)
    await handled(notifications, USER_UPDATED, 1)

    await publish_all(
        probe,
        event(PRODUCT_STOCK_UPDATED, {**stock, "stock": 8, "previousStock": 10, "lowStock": False}),
        event(PRODUCT_STOCK_UPDATED, {**stock, "stock": 4, "previousStock": 8, "lowStock": True}),
        event(PRODUCT_STOCK_UPDATED, {**stock, "stock": 3, "previousStock": 4, "lowStock": True}),
    )

    [alert] = await published(probe, NOTIFICATION_SENT, 1)
    await handled(notifications, PRODUCT_STOCK_UPDATED, 3)
    assert alert.data["to"] == "sam@shop.example" and alert.data["productId"] == "7"
    [own] = await listing(notifications, ("user_seller", "seller"))
    assert own["message"] == f"Kadai: low stock for product {called}: 4 left."


@pytest.mark.rabbitmq
async def test_a_broadcast_batch_sends_each_recipient_one_message(notifications: Served, probe: EventProbe) -> None:
    await probe.publish(event(USER_CREATED, {"userId": "user_c1", "email": "c1@example.com", "role": "customer"}))
    await handled(notifications, USER_CREATED, 1)
    batch = event(
        BROADCAST_REQUESTED,
        {
            "campaignId": "bc_1",
            "senderId": "user_seller",
            "message": "Spring sale!",
            "recipients": ["user_c1", "+15550001111", "c1@example.com", "user_c1", "bad recipient!"],
        },
    )

    await probe.publish(batch)

    sent = await published(probe, NOTIFICATION_SENT, 3)
    assert sorted(item.data["to"] for item in sent) == ["+15550001111", "c1@example.com", "c1@example.com"]
    assert {item.data["campaignId"] for item in sent} == {"bc_1"}
    assert {item.data["relatedEventId"] for item in sent} == {batch.id}
    # Both messages to the known user's addresses are theirs to see.
    own = await listing(notifications, ("user_c1", "customer"), "?campaignId=bc_1")
    assert [item["message"] for item in own] == ["Spring sale!", "Spring sale!"]


@pytest.mark.rabbitmq
async def test_the_http_provider_retries_and_reports_what_it_gives_up(
    serve: Serve,
    make_settings: MakeSettings,
    rabbitmq_server: str,
    probe: EventProbe,
    start_upstream: StartUpstream,
) -> None:
    received: list[tuple[dict[str, Any], str, str]] = []
    answers = {"+15550000001": [503, 200], "+15550000002": [400]}

    async def sms(request: web.Request) -> web.Response:
        body = await request.json()
        received.append((body, request.headers["Idempotency-Key"], request.headers.get("Authorization", "")))
        status = answers[body["to"]].pop(0)
        return web.json_response({"messageId": f"m-{len(received)}"}, status=status)

    app = web.Application()
    app.router.add_post("/sms", sms)
    url = await start_upstream(app)
    service = await start(
        serve,
        make_settings,
        rabbitmq_server,
        NOTIFY_PROVIDER="http",
        NOTIFY_HTTP_URL=f"{url}/sms",
        NOTIFY_HTTP_TOKEN="provider-token",
        NOTIFY_RETRY_DELAY="0",
    )
    batch = event(
        BROADCAST_REQUESTED, {"campaignId": "bc_2", "message": "Hello", "recipients": ["+15550000001", "+15550000002"]}
    )

    await probe.publish(batch)

    [sent] = await published(probe, NOTIFICATION_SENT, 1)
    [failed] = await published(probe, NOTIFICATION_FAILED, 1)
    assert sent.data["to"] == "+15550000001" and failed.data["to"] == "+15550000002"
    assert failed.data["reason"] == "the SMS endpoint answered 400" and failed.data["campaignId"] == "bc_2"
    delivered = [item for item in received if item[0]["to"] == "+15550000001"]
    refused = [item for item in received if item[0]["to"] == "+15550000002"]
    assert (len(delivered), len(refused)) == (2, 1)  # 503 then 200; a 400 is not tried again
    assert delivered[0][0] == delivered[1][0] == {
        "notificationId": sent.data["notificationId"],
        "channel": "sms",
        "to": "+15550000001",
        "message": "Hello",
        "template": "broadcast",
    }
    assert delivered[0][1] == delivered[1][1] == sent.data["notificationId"]  # the same key on every attempt
    assert {item[2] for item in received} == {"Bearer provider-token"}
    rows = {item["to"]: item for item in await listing(service, ADMIN)}
    assert (rows["+15550000001"]["status"], rows["+15550000001"]["attempts"]) == ("sent", 2)
    assert (rows["+15550000002"]["status"], rows["+15550000002"]["attempts"]) == ("failed", 1)
    assert rows["+15550000002"]["error"] == "the SMS endpoint answered 400"


@pytest.mark.rabbitmq
async def test_the_routes_keep_messages_to_their_recipients(notifications: Served, probe: EventProbe) -> None:
    for number in range(3):
        await probe.publish(event(ORDER_CREATED, order_created(f"order_{number}", sellerId=None)))
    sent = await published(probe, NOTIFICATION_SENT, 3)
    other = await call(notifications, "GET", "/notifications", as_=("user_other", "customer"))
    page = await call(notifications, "GET", "/notifications?page=2&pageSize=2", as_=BUYER)
    one = sent[0].data["notificationId"]

    assert other[0] == 200 and other[1]["data"]["items"] == []
    assert page[0] == 200 and len(page[1]["data"]["items"]) == 1
    assert page[1]["data"]["pagination"] == {"page": 2, "pageSize": 2, "total": 3, "totalPages": 2}
    assert (await call(notifications, "GET", f"/notifications/{one}", as_=BUYER))[0] == 200
    assert (await call(notifications, "GET", f"/notifications/{one}", as_=("service:ai-service", "service")))[0] == 200
    missing = await call(notifications, "GET", f"/notifications/{one}", as_=("user_other", "customer"))
    assert missing[0] == 404 and missing[1]["error"] == "No such notification"
    assert (await call(notifications, "GET", "/notifications/ntf_nope", as_=ADMIN))[0] == 404
    anonymous = await call(notifications, "GET", "/notifications")
    assert anonymous[0] == 401 and anonymous[1]["success"] is False
    snooping = await call(notifications, "GET", "/notifications?userId=user_buyer", as_=("user_other", "customer"))
    assert snooping[0] == 403
    assert len(await listing(notifications, ADMIN, "?userId=user_buyer&status=sent")) == 3
    invalid = await call(notifications, "GET", "/notifications?pageSize=500&status=lost&color=red", as_=BUYER)
    assert invalid[0] == 422
    assert {item["field"] for item in invalid[1]["details"]} == {"pageSize", "status", "color"}
