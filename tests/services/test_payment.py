"""payment-service: the simulator's rule, one charge per order whatever the broker redelivers (real
RabbitMQ), refunds when an order's stock could not be reserved, and POST /payments with Idempotency-Key
through real HTTP."""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.config.errors import ConfigError
from services.events import ORDER_CREATED, PAYMENT_FAILED, PAYMENT_PROCESSED
from services.kit import Service
from services.payment import SERVICE
from services.payment.config import PaymentConfig
from services.payment.processor import ChargeRequest, ChargeResult, SimulatedProcessor, decline_reason
from services.payment.service import OPENAPI_PATHS, build_service
from tests.process.helpers import wait_until
from tests.services.conftest import MakeSettings, Serve
from tests.services.helpers import EventProbe, Served, check_openapi
from tests.services.shop_support import (
    BUYER,
    OTHER_BUYER,
    Reply,
    admin,
    call,
    consuming,
    customer,
    handled,
    order_created,
    outbox,
    reservation_failed,
    service_caller,
)


class RecordingProcessor:
    """The simulator, with a record of what it was asked, a gate to hold charges, and failures on demand."""

    name = "recorder"

    def __init__(self, fail_above_cents: int | None = None) -> None:
        self.inner = SimulatedProcessor(fail_above_cents)
        self.charges: list[ChargeRequest] = []
        self.refunds: list[tuple[str, int]] = []
        self.refund_keys: list[str] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.failures = 0
        self.closed = False

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        self.charges.append(request)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("processor unreachable")
        return await self.inner.charge(request)

    async def refund(self, reference: str, amount_cents: int, currency: str, idempotency_key: str) -> None:
        self.refunds.append((reference, amount_cents))
        self.refund_keys.append(idempotency_key)

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def processor() -> RecordingProcessor:
    return RecordingProcessor()


@pytest.fixture
async def payments(serve: Serve, make_settings: MakeSettings, processor: RecordingProcessor) -> Served:
    return await serve(build_service(lambda _config: processor), make_settings())


async def pay(
    service: Served, body: dict[str, Any], key: str | None = "key-1", caller: tuple[str, str] | None = None
) -> Reply:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await call(service, "POST", "/payments", as_=caller or customer(), json=body, headers=headers)


# Pure logic ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "fail_above", "reason"),
    [
        (1000, None, None),
        (1013, None, "card_declined"),
        (13, None, "card_declined"),
        (1130, None, None),
        (5001, 5000, "amount_over_limit"),
        (5000, 5000, None),
        (6013, 5000, "card_declined"),
    ],
    ids=["accepted", "ends-in-13", "only-13-cents", "13-elsewhere", "over-limit", "at-limit", "13-wins"],
)
def test_the_simulator_declines_13_cents_and_amounts_over_the_limit(
    amount: int, fail_above: int | None, reason: str | None
) -> None:
    assert decline_reason(amount, fail_above) == reason


async def test_the_simulators_reference_follows_the_idempotency_key() -> None:
    simulator = SimulatedProcessor()
    first = await simulator.charge(ChargeRequest("order:o1", "o1", 1000, "USD"))
    again = await simulator.charge(ChargeRequest("order:o1", "o1", 1000, "USD"))
    other = await simulator.charge(ChargeRequest("order:o2", "o2", 1013, "USD"))

    assert first == again == ChargeResult(True, first.reference) and first.reference.startswith("sim_")
    assert other == ChargeResult(False, other.reference, "card_declined") and other.reference != first.reference


def test_a_bad_limit_stops_the_start_naming_its_variable() -> None:
    with pytest.raises(ConfigError) as raised:
        PaymentConfig.from_env({"PAYMENT_FAIL_ABOVE_CENTS": "-1", "PAYMENT_IDEMPOTENCY_TTL": "forever"})
    assert [problem.split(":")[0] for problem in raised.value.problems] == [
        "PAYMENT_FAIL_ABOVE_CENTS",
        "PAYMENT_IDEMPOTENCY_TTL",
    ]
    assert PaymentConfig.from_env({"PAYMENT_FAIL_ABOVE_CENTS": "2500"}).fail_above_cents == 2500


def test_the_openapi_paths_document_the_idempotency_key() -> None:
    post = OPENAPI_PATHS["/payments"]["post"]
    assert [parameter["name"] for parameter in post["parameters"]] == ["Idempotency-Key"]
    assert {"201", "400", "409", "422"} <= set(post["responses"])
    assert set(OPENAPI_PATHS) == {"/payments", "/payments/{paymentId}"}
    check_openapi(SERVICE)


# order.created through RabbitMQ ------------------------------------------------------------------------


async def broker_payments(
    serve: Serve, make_settings: MakeSettings, rabbitmq_server: str, service: Service, **environ: str
) -> Served:
    served = await serve(service, make_settings(amqp_url=rabbitmq_server, environ=environ))
    await consuming(served)
    return served


def from_payments(probe: EventProbe) -> list[tuple[str, dict[str, Any]]]:
    return [(event.type, event.data) for event in probe.events if event.source == "payment-service"]


@pytest.mark.rabbitmq
async def test_an_order_is_charged_once_however_often_order_created_arrives(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str, processor: RecordingProcessor
) -> None:
    service = await broker_payments(serve, make_settings, rabbitmq_server, build_service(lambda _config: processor))
    event = order_created("order_1", [("prod_1", 3, 1000), ("prod_2", 1, 250)])

    await probe.publish(event)
    await probe.publish(event)  # redelivered
    await probe.publish(order_created("order_1", [("prod_1", 3, 1000), ("prod_2", 1, 250)]))  # sent again
    await handled(service, 2)
    await wait_until(
        lambda: service.metric("kadai_service_events_consumed_total", type=ORDER_CREATED, outcome="duplicate") == 1,
        5,
        "the duplicate",
    )

    assert processor.charges == [ChargeRequest("order:order_1", "order_1", 3250, "USD")]
    await probe.wait_for(3 + 1)
    [(kind, data)] = from_payments(probe)
    assert kind == PAYMENT_PROCESSED
    assert data == {
        "paymentId": data["paymentId"],
        "orderId": "order_1",
        "userId": BUYER,
        "amountCents": 3250,
        "currency": "USD",
        "source": "order",
    }
    # The buyer sees the payment made for their order.
    listed = await call(service, "GET", "/payments?orderId=order_1", as_=customer())
    [payment] = listed.data["payments"]
    assert (payment["id"], payment["status"], payment["source"], payment["processor"]) == (
        data["paymentId"],
        "succeeded",
        "order",
        "recorder",
    )


@pytest.mark.rabbitmq
async def test_declined_orders_publish_payment_failed_with_the_reason(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str
) -> None:
    # The default simulator, configured from the environment.
    service = await broker_payments(serve, make_settings, rabbitmq_server, SERVICE, PAYMENT_FAIL_ABOVE_CENTS="5000")

    await probe.publish(order_created("order_13", [("prod_1", 1, 113)]))
    await probe.publish(order_created("order_big", [("prod_1", 2, 3000)]))
    await handled(service, 2)

    await probe.wait_for(2 + 2)
    failures = sorted((data["orderId"], data["reason"], kind) for kind, data in from_payments(probe))
    assert failures == [
        ("order_13", "card_declined", PAYMENT_FAILED),
        ("order_big", "amount_over_limit", PAYMENT_FAILED),
    ]


@pytest.mark.rabbitmq
async def test_an_order_whose_stock_could_not_be_reserved_is_refunded_or_never_charged(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str, processor: RecordingProcessor
) -> None:
    service = await broker_payments(serve, make_settings, rabbitmq_server, build_service(lambda _config: processor))

    await probe.publish(order_created("order_paid", [("prod_1", 1, 1000)]))
    await probe.publish(order_created("order_declined", [("prod_1", 1, 1013)]))
    await handled(service, 2)
    await probe.publish(reservation_failed("order_paid"))
    await probe.publish(reservation_failed("order_paid"))  # another copy
    await probe.publish(reservation_failed("order_declined"))
    await probe.publish(reservation_failed("order_early"))  # before its order.created
    await handled(service, 6)
    await probe.publish(order_created("order_early", [("prod_1", 1, 1000)]))
    await handled(service, 7)

    assert [request.order_id for request in processor.charges] == ["order_paid", "order_declined"]
    rows = await service.runtime.db.fetchall(
        "SELECT order_id, status, failure_reason, processor_reference, refunded_at FROM payments ORDER BY order_id"
    )
    by_order = {row["order_id"]: row for row in rows}
    assert processor.refunds == [(by_order["order_paid"]["processor_reference"], 1000)]
    # The refund carries a key of its own payment: a retry after a failed commit asks for the same refund.
    paid_id = (await service.runtime.db.fetchone("SELECT id FROM payments WHERE order_id = 'order_paid'"))["id"]
    assert processor.refund_keys == [f"refund:{paid_id}"]
    assert (by_order["order_paid"]["status"], by_order["order_paid"]["refunded_at"] is not None) == ("refunded", True)
    assert by_order["order_declined"]["status"] == "failed"
    assert (by_order["order_early"]["status"], by_order["order_early"]["failure_reason"]) == (
        "failed",
        "order_cancelled",
    )
    failed = await outbox(service, PAYMENT_FAILED)
    assert [(data["orderId"], data["reason"]) for data in failed] == [
        ("order_declined", "card_declined"),
        ("order_early", "order_cancelled"),
    ]


# POST /payments and Idempotency-Key ------------------------------------------------------------------


async def test_a_direct_payment_needs_a_well_formed_idempotency_key(payments: Served) -> None:
    body = {"orderId": "order_1", "amountCents": 1000}

    missing = await pay(payments, body, key=None)
    spaced = await pay(payments, body, key="two words")
    too_long = await pay(payments, body, key="k" * 256)
    anonymous = await call(payments, "POST", "/payments", json=body, headers={"Idempotency-Key": "k"})
    invalid = await pay(payments, {"orderId": "", "amountCents": 0, "currency": "usd"})

    assert (missing.status, missing.body["error"]) == (
        400,
        "An Idempotency-Key header is required: it makes retrying this payment safe",
    )
    assert (spaced.status, too_long.status, anonymous.status) == (400, 400, 401)
    assert (invalid.status, invalid.fields) == (422, {"orderId", "amountCents", "currency"})
    assert await outbox(payments) == []


async def test_the_same_key_and_body_answer_the_stored_response_without_charging_again(
    payments: Served, processor: RecordingProcessor
) -> None:
    body = {"orderId": "order_1", "amountCents": 1500, "currency": "USD"}

    first = await pay(payments, body)
    # The same request, written differently (key order, default spelled out or not).
    again = await call(
        payments,
        "POST",
        "/payments",
        as_=customer(),
        data=orjson.dumps({"amountCents": 1500, "orderId": "order_1"}),
        headers={"Idempotency-Key": "key-1", "Content-Type": "application/json", "X-Request-ID": "retry-1"},
    )
    changed = await pay(payments, {**body, "amountCents": 1600})
    someone_else = await pay(payments, body, caller=customer(OTHER_BUYER))

    assert first.status == 201 and first.body["message"] == "Payment succeeded"
    payment = first.data["payment"]
    assert {key: payment[key] for key in ("orderId", "userId", "source", "amountCents", "status", "processor")} == {
        "orderId": "order_1",
        "userId": BUYER,
        "source": "api",
        "amountCents": 1500,
        "status": "succeeded",
        "processor": "recorder",
    }
    assert (again.status, again.raw) == (first.status, first.raw)
    assert again.headers["Idempotent-Replayed"] == "true" and again.headers["X-Request-ID"] == "retry-1"
    assert "Idempotent-Replayed" not in first.headers
    assert (changed.status, changed.fields) == (422, {"Idempotency-Key"})
    assert someone_else.status == 201 and someone_else.data["payment"]["id"] != payment["id"]
    assert [request.idempotency_key for request in processor.charges] == [
        "api:user_buyer_1:key-1",
        "api:user_buyer_2:key-1",
    ]
    events = await outbox(payments, PAYMENT_PROCESSED)
    assert [(data["paymentId"], data["source"]) for data in events] == [
        (payment["id"], "api"),
        (someone_else.data["payment"]["id"], "api"),
    ]


async def test_a_declined_direct_payment_is_recorded_and_replayed_as_declined(
    serve: Serve, make_settings: MakeSettings
) -> None:
    service = await serve(SERVICE, make_settings())  # the default simulator
    body = {"orderId": "order_9", "amountCents": 2013}

    declined = await pay(service, body)
    again = await pay(service, body)

    assert declined.status == 201 and declined.body["message"] == "Payment declined"
    payment = declined.data["payment"]
    assert (payment["status"], payment["failureReason"]) == ("failed", "card_declined")
    assert payment["processor"] == "simulator"
    assert (again.status, again.raw) == (201, declined.raw)
    [event] = await outbox(service, PAYMENT_FAILED)
    assert (event["paymentId"], event["reason"], event["source"]) == (payment["id"], "card_declined", "api")


async def test_a_second_request_while_the_first_is_charging_is_409(
    payments: Served, processor: RecordingProcessor
) -> None:
    processor.gate = asyncio.Event()
    body = {"orderId": "order_1", "amountCents": 1000}

    first = asyncio.create_task(pay(payments, body))
    await asyncio.wait_for(processor.entered.wait(), 5)
    meanwhile = await pay(payments, body)
    processor.gate.set()
    done = await first
    after = await pay(payments, body)

    assert (meanwhile.status, meanwhile.headers["Retry-After"]) == (409, "1")
    assert done.status == 201 and (after.status, after.raw) == (201, done.raw)
    assert len(processor.charges) == 1


async def test_a_processor_failure_is_502_and_the_key_can_be_retried(
    payments: Served, processor: RecordingProcessor
) -> None:
    processor.failures = 1
    body = {"orderId": "order_1", "amountCents": 1000}

    failed = await pay(payments, body)
    retried = await pay(payments, body)

    assert (failed.status, failed.body["details"]) == (502, {"retryable": True})
    assert retried.status == 201 and retried.data["payment"]["status"] == "succeeded"
    assert [request.idempotency_key for request in processor.charges] == ["api:user_buyer_1:key-1"] * 2
    assert len(await outbox(payments, PAYMENT_PROCESSED)) == 1


async def test_a_key_its_first_request_died_holding_is_taken_over_after_the_lease(
    payments: Served, processor: RecordingProcessor
) -> None:
    body = {"orderId": "order_1", "amountCents": 1000}
    held = processor.gate = asyncio.Event()
    first = asyncio.create_task(pay(payments, body))
    await asyncio.wait_for(processor.entered.wait(), 5)
    # The first request stays stuck in the charge, as one whose process died would, past the lease.
    processor.gate = None
    lease = payments.runtime.config(PaymentConfig).idempotency_lease
    async with payments.runtime.db.transaction() as tx:
        await tx.execute("UPDATE idempotency_keys SET created_at = created_at - ?", (lease + 1,))

    retried = await pay(payments, body)
    held.set()
    late = await first  # it did not die after all: it answers what was recorded and records nothing
    again = await pay(payments, body)

    assert retried.status == 201 and retried.data["payment"]["status"] == "succeeded"
    assert (late.status, late.raw) == (201, retried.raw)
    assert (again.status, again.raw, again.headers.get("Idempotent-Replayed")) == (201, retried.raw, "true")
    # Charged under one processor key every time: a charge that did go through is not made twice.
    assert [request.idempotency_key for request in processor.charges] == ["api:user_buyer_1:key-1"] * 2
    assert len(await outbox(payments, PAYMENT_PROCESSED)) == 1
    [count] = await payments.runtime.db.fetchone("SELECT COUNT(*) FROM payments")
    assert count == 1


async def test_a_slow_request_keeps_its_key_within_the_lease(payments: Served, processor: RecordingProcessor) -> None:
    body = {"orderId": "order_1", "amountCents": 1000}
    processor.gate = asyncio.Event()
    first = asyncio.create_task(pay(payments, body))
    await asyncio.wait_for(processor.entered.wait(), 5)
    lease = payments.runtime.config(PaymentConfig).idempotency_lease
    async with payments.runtime.db.transaction() as tx:
        await tx.execute("UPDATE idempotency_keys SET created_at = created_at - ?", (lease - 30,))

    meanwhile = await pay(payments, body)
    processor.gate.set()

    assert meanwhile.status == 409 and (await first).status == 201
    assert len(processor.charges) == 1


async def test_an_expired_key_is_free_again(payments: Served, processor: RecordingProcessor) -> None:
    first = await pay(payments, {"orderId": "order_1", "amountCents": 1000})
    ttl = payments.runtime.config(PaymentConfig).idempotency_ttl
    async with payments.runtime.db.transaction() as tx:
        await tx.execute("UPDATE idempotency_keys SET created_at = created_at - ?", (ttl + 1,))

    second = await pay(payments, {"orderId": "order_2", "amountCents": 2000})

    assert (first.status, second.status) == (201, 201)
    assert second.data["payment"]["orderId"] == "order_2" and len(processor.charges) == 2


async def test_who_sees_which_payment(payments: Served) -> None:
    mine = (await pay(payments, {"orderId": "order_1", "amountCents": 1000}, key="a")).data["payment"]
    mine_too = (await pay(payments, {"orderId": "order_2", "amountCents": 1013}, key="b")).data["payment"]
    theirs = (
        await pay(payments, {"orderId": "order_1", "amountCents": 500}, key="a", caller=customer(OTHER_BUYER))
    ).data["payment"]

    def ids(reply: Reply) -> list[str]:
        assert reply.status == 200, reply
        return [payment["id"] for payment in reply.data["payments"]]

    assert ids(await call(payments, "GET", "/payments", as_=customer())) == [mine_too["id"], mine["id"]]
    assert ids(await call(payments, "GET", "/payments?orderId=order_1", as_=customer())) == [mine["id"]]
    assert ids(await call(payments, "GET", "/payments?orderId=order_1", as_=admin())) == [theirs["id"], mine["id"]]
    assert ids(await call(payments, "GET", "/payments?status=failed", as_=service_caller())) == [mine_too["id"]]
    paged = await call(payments, "GET", "/payments?limit=1&offset=1", as_=admin())
    assert ids(paged) == [mine_too["id"]] and paged.data["pagination"]["total"] == 3
    assert (await call(payments, "GET", "/payments?status=lost", as_=admin())).fields == {"status"}

    path = f"/payments/{mine['id']}"
    assert (await call(payments, "GET", path, as_=customer())).data["payment"] == mine
    assert [(await call(payments, "GET", path, as_=caller)).status for caller in (admin(), service_caller())] == [
        200,
        200,
    ]
    assert (await call(payments, "GET", path, as_=customer(OTHER_BUYER))).status == 404
    assert (await call(payments, "GET", "/payments/pay_nothing", as_=admin())).status == 404
    assert (await call(payments, "GET", path)).status == 401


async def test_the_processor_is_closed_when_the_service_stops(
    payments: Served, processor: RecordingProcessor
) -> None:
    await pay(payments, {"orderId": "order_1", "amountCents": 1000})

    await payments.stop()

    assert processor.closed
