"""payment-service (port 3004): charges orders through a pluggable processor and keeps the payments.

    POST /payments            a user     charge an amount for an order directly; needs an Idempotency-Key
                                         header (400 without one: a payment retried after a lost answer must
                                         not charge twice). 201 {payment}, also when the processor declined
                                         it (status "failed", failureReason). The same key with the same body
                                         answers the stored response again (same status and body, header
                                         Idempotent-Replayed: true) without charging; with a different body
                                         422; while its first request is still running 409 (past
                                         PAYMENT_IDEMPOTENCY_LEASE a retry takes the key over: the first died).
                                         Keys belong to the caller and expire after PAYMENT_IDEMPOTENCY_TTL.
    GET  /payments                       {payments, pagination}: the caller's own (admins and services: all);
                                         filters orderId, status; page/pageSize or limit/offset
    GET  /payments/{paymentId}           {payment}: its payer, admins and services; 404 for anyone else

Payments: status succeeded, failed (declined) or refunded; source "order" (made for order.created; the
order's buyer is its user) or "api" (POST /payments).

Publishes (through the outbox):
    payment.processed  {paymentId, orderId, userId, amountCents, currency, source}
    payment.failed     {paymentId, orderId, userId, amountCents, currency, reason, source}
Only source "order" payments move orders and stock; direct charges are announced for the record.

Consumes:
    order.created               charges the order's amountCents, once per order: a redelivery, or another
                                order.created of the same order, finds the payment and charges nothing.
                                The charge's idempotency key is "order:<orderId>", so a handler retried
                                after a failed commit is recognised by the processor too. An order whose
                                stock reservation already failed is not charged (payment.failed, reason
                                "order_cancelled").
    product.reservation.failed  refunds the order's payment if it succeeded (status refunded; the order is
                                cancelled by order-service), or remembers not to charge it.
The processor is called inside the handler's transaction: one that calls out to a real provider must use
short timeouts.

The processor is a PaymentProcessor (services/payment/processor.py); build_service(factory) plugs in
another one. The default simulator declines amounts whose cents end in 13 (card_declined) and, when
PAYMENT_FAIL_ABOVE_CENTS is set, amounts above it (amount_over_limit).

Environment: PAYMENT_FAIL_ABOVE_CENTS (default unset), PAYMENT_IDEMPOTENCY_TTL (default 24h),
PAYMENT_IDEMPOTENCY_LEASE (default 5m).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from gateway.envelope import success_body
from gateway.exchange import JSON_CONTENT_TYPE
from gateway.logs import log_fields
from services.events import ORDER_CREATED, PAYMENT_FAILED, PAYMENT_PROCESSED
from services.kit import (
    TOKEN_REQUIRED,
    BadGateway,
    BadRequest,
    Call,
    Conflict,
    Event,
    EventContext,
    NotFound,
    Routes,
    Row,
    Runtime,
    Service,
    Transaction,
    ValidationFailed,
    error,
    listed,
    path_parameter,
    query_parameters,
    reply,
    request_body,
    wrapped,
)
from services.payment import store
from services.payment.config import PaymentConfig
from services.payment.models import PaymentIn, PaymentOut, PaymentQuery
from services.payment.processor import ChargeRequest, PaymentProcessor, ProcessorFactory, simulator
from services.product.events import PRODUCT_RESERVATION_FAILED, OrderCreated, ReservationFailed

log = logging.getLogger("services.payment")

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_PRIVILEGED = frozenset({"admin", "service"})


class ProcessorSlot:
    """The processor of each running payment-service (tests run several in one process): made on first
    use, closed when the service stops."""

    def __init__(self, factory: ProcessorFactory) -> None:
        self.factory = factory
        self._by_runtime: weakref.WeakKeyDictionary[Runtime, PaymentProcessor] = weakref.WeakKeyDictionary()

    def get(self, runtime: Runtime) -> PaymentProcessor:
        processor = self._by_runtime.get(runtime)
        if processor is None:
            processor = self._by_runtime[runtime] = self.factory(runtime.config(PaymentConfig))
        return processor

    @contextlib.asynccontextmanager
    async def lifespan(self, runtime: Runtime) -> AsyncIterator[None]:
        try:
            yield
        finally:
            processor = self._by_runtime.pop(runtime, None)
            if processor is not None:
                await processor.close()


def _announce(tx: Transaction, payment: Row) -> None:
    data: dict[str, object] = {
        "paymentId": payment["id"],
        "orderId": payment["order_id"],
        "userId": payment["user_id"],
        "amountCents": payment["amount_cents"],
        "currency": payment["currency"],
        "source": payment["source"],
    }
    if payment["status"] == "succeeded":
        tx.publish(PAYMENT_PROCESSED, data)
    else:
        tx.publish(PAYMENT_FAILED, {**data, "reason": payment["failure_reason"]})


# Routes ------------------------------------------------------------------------------------------------


def _idempotency_key(call: Call) -> str:
    values = call.request.headers.getall(IDEMPOTENCY_HEADER, [])
    if not values:
        raise BadRequest(
            f"An {IDEMPOTENCY_HEADER} header is required: it makes retrying this payment safe",
            details={"header": IDEMPOTENCY_HEADER},
        )
    if len(values) > 1 or not _KEY.fullmatch(values[0]):
        raise BadRequest(
            f"{IDEMPOTENCY_HEADER} must be one value of 1 to 255 visible ASCII characters",
            details={"header": IDEMPOTENCY_HEADER},
        )
    return values[0]


def _fingerprint(body: PaymentIn) -> str:
    # Of the validated body: the same request sent with other spacing, key order or defaults spelled out
    # is the same request.
    canonical = orjson.dumps(body.model_dump(mode="json", by_alias=True), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _json(status: int, body: bytes, **headers: str) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": JSON_CONTENT_TYPE, **headers})


async def create_payment(call: Call, processor: PaymentProcessor) -> web.StreamResponse:
    key = _idempotency_key(call)
    body = await call.body(PaymentIn)
    caller = call.caller
    fingerprint = _fingerprint(body)
    config = call.config(PaymentConfig)
    async with call.db.transaction() as tx:
        held = await store.held_key(tx, caller.id, key, config.idempotency_ttl)
        if held is None:
            await store.hold_key(tx, caller.id, key, fingerprint)
        elif (
            held["state"] == "in_progress"
            and held["fingerprint"] == fingerprint
            and held["created_at"] < time.time() - config.idempotency_lease
        ):
            # Its first request died (a crash) before recording an outcome. Refusing for the rest of the TTL
            # would push the client to a new key, and so to a second charge; this request charges again
            # under the same processor key instead, which a charge that did go through answers as is.
            await store.retake_key(tx, caller.id, key)
            held = None
    if held is not None:
        if held["fingerprint"] != fingerprint:
            raise ValidationFailed(
                f"This {IDEMPOTENCY_HEADER} was used with a different request",
                details=[{"field": IDEMPOTENCY_HEADER, "message": "reused with another body", "type": "key_reused"}],
            )
        if held["state"] == "done":
            return _json(held["status"], held["body"], **{REPLAYED_HEADER: "true"})
        raise Conflict(
            f"A request with this {IDEMPOTENCY_HEADER} is still being processed", headers={"Retry-After": "1"}
        )

    request = ChargeRequest(f"api:{caller.id}:{key}", body.order_id, body.amount_cents, body.currency)
    try:
        result = await processor.charge(request)
    except BaseException as exc:
        # The key is freed so the client can retry with it; the processor's own idempotency key keeps a
        # charge that did go through from happening twice.
        async with call.db.transaction() as tx:
            await store.release_key(tx, caller.id, key)
        if isinstance(exc, Exception):
            log.exception("the payment processor failed", extra=log_fields(orderId=body.order_id))
            raise BadGateway(
                "The payment processor failed; retry with the same Idempotency-Key", details={"retryable": True}
            ) from None
        raise
    async with call.db.transaction() as tx:
        done = await store.held_key(tx, caller.id, key, config.idempotency_ttl)
        if done is not None and done["state"] == "done":
            # Taken over and answered by a retry while this request was slow: one payment, one answer.
            return _json(done["status"], done["body"])
        payment = await store.insert_payment(
            tx,
            store.NewPayment(
                order_id=body.order_id,
                user_id=caller.id,
                source="api",
                amount_cents=body.amount_cents,
                currency=body.currency,
                succeeded=result.succeeded,
                failure_reason=result.reason,
                processor=processor.name,
                processor_reference=result.reference,
            ),
        )
        _announce(tx, payment)
        message = "Payment succeeded" if result.succeeded else "Payment declined"
        data = {"payment": PaymentOut.from_row(payment).model_dump(mode="json", by_alias=True)}
        stored = success_body(data, call.request_id, message)
        await store.complete_key(tx, caller.id, key, 201, stored, payment["id"])
    return _json(201, stored)


async def get_payment(call: Call) -> dict[str, object]:
    payment = await store.payment_by_id(call.db, call.path("payment_id"))
    caller = call.caller
    # Someone else's payment is as unknown as a missing one.
    if payment is None or not (caller.role in _PRIVILEGED or caller.id == payment["user_id"]):
        raise NotFound("No such payment")
    return {"payment": PaymentOut.from_row(payment)}


async def list_payments(call: Call) -> dict[str, object]:
    query = call.query(PaymentQuery)
    limit, offset = query.window()
    caller = call.caller
    rows, total = await store.list_payments(
        call.db,
        user_id=None if caller.role in _PRIVILEGED else caller.id,
        order_id=query.order_id,
        status=query.status,
        limit=limit,
        offset=offset,
    )
    return {"payments": [PaymentOut.from_row(row) for row in rows], "pagination": query.meta(total)}


# Event handlers ----------------------------------------------------------------------------------------


async def on_order_created(event: Event, ctx: EventContext, processor: PaymentProcessor) -> None:
    order = OrderCreated.model_validate(event.data)
    tx = ctx.tx
    if await store.order_payment(tx, order.order_id) is not None:
        log.info("order already paid for; not charged again", extra=log_fields(orderId=order.order_id))
        return
    payment = store.NewPayment(
        order_id=order.order_id,
        user_id=order.user_id,
        source="order",
        amount_cents=order.amount_cents,
        currency=order.currency,
        succeeded=False,
        failure_reason="order_cancelled",
        processor=processor.name,
        processor_reference=None,
    )
    if await store.cancellation(tx, order.order_id) is None:
        result = await processor.charge(
            ChargeRequest(f"order:{order.order_id}", order.order_id, order.amount_cents, order.currency)
        )
        payment = replace(
            payment, succeeded=result.succeeded, failure_reason=result.reason, processor_reference=result.reference
        )
    _announce(tx, await store.insert_payment(tx, payment))


async def on_reservation_failed(event: Event, ctx: EventContext, processor: PaymentProcessor) -> None:
    failed = ReservationFailed.model_validate(event.data)
    tx = ctx.tx
    payment = await store.order_payment(tx, failed.order_id)
    if payment is None:
        await store.cancel_order(tx, failed.order_id, failed.reason)
        return
    if payment["status"] != "succeeded":
        return
    await processor.refund(
        payment["processor_reference"], payment["amount_cents"], payment["currency"], f"refund:{payment['id']}"
    )
    await store.mark_refunded(tx, payment["id"])
    log.info("refunded an order whose stock could not be reserved", extra=log_fields(orderId=failed.order_id))


# The service --------------------------------------------------------------------------------------------


def build_service(factory: ProcessorFactory = simulator) -> Service:
    """payment-service with the processor that factory builds from the service's settings."""
    slot = ProcessorSlot(factory)
    routes = Routes()

    @routes.post("/payments")
    async def post_payment(call: Call) -> web.StreamResponse:
        return await create_payment(call, slot.get(call.runtime))

    routes.get("/payments")(list_payments)
    routes.get("/payments/{payment_id}")(get_payment)

    async def order_created(event: Event, ctx: EventContext) -> None:
        await on_order_created(event, ctx, slot.get(ctx.runtime))

    async def reservation_failed(event: Event, ctx: EventContext) -> None:
        await on_reservation_failed(event, ctx, slot.get(ctx.runtime))

    return Service(
        name="payment-service",
        port=3004,
        routes=routes,
        migrations=store.MIGRATIONS,
        publishes=(PAYMENT_PROCESSED, PAYMENT_FAILED),
        handlers={ORDER_CREATED: order_created, PRODUCT_RESERVATION_FAILED: reservation_failed},
        configs=(PaymentConfig,),
        lifespan=slot.lifespan,
    )


# OpenAPI ------------------------------------------------------------------------------------------------

_PAYMENT = wrapped("payment", PaymentOut)

OPENAPI_PATHS: dict[str, dict[str, Any]] = {
    "/payments": {
        "post": {
            "summary": "Charge an amount for an order (Idempotency-Key required)",
            "parameters": [
                {
                    "name": IDEMPOTENCY_HEADER,
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "description": "Makes the request safe to retry: the same key and body answer the stored "
                    "response without charging again.",
                }
            ],
            "requestBody": request_body(PaymentIn),
            "responses": {
                "201": reply("The payment, succeeded or declined (status failed).", _PAYMENT),
                "400": error("No Idempotency-Key header, or a malformed one."),
                "401": TOKEN_REQUIRED,
                "409": error("The first request with this key is still being processed."),
                "422": error("Invalid fields, or the key reused with a different body."),
                "502": error("The payment processor failed; retry with the same key."),
            },
        },
        "get": {
            "summary": "List payments: the caller's own (admins and services: all)",
            "parameters": query_parameters(PaymentQuery),
            "responses": {
                "200": reply("One page of payments and the pagination block.", listed("payments", PaymentOut)),
                "401": TOKEN_REQUIRED,
                "422": error("Bad filters or pagination."),
            },
        },
    },
    "/payments/{paymentId}": {
        "parameters": [path_parameter("paymentId", "The payment's ID (pay_...).")],
        "get": {
            "summary": "One payment (its payer, admins, services)",
            "responses": {
                "200": reply("The payment.", _PAYMENT),
                "401": TOKEN_REQUIRED,
                "404": error("No such payment, or not the caller's."),
            },
        },
    },
}

SERVICE = build_service()
