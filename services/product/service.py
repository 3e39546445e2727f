"""product-service (port 3002): the sellers' product catalogue, stock, and the stock reserved for orders.

    POST   /products                  seller, admin   201 {product}; an admin may name the sellerId
    GET    /products                                  {products, pagination}; page/pageSize or limit/offset;
                                                      filters sellerId, name (contains), minPriceCents,
                                                      maxPriceCents, inStock
    GET    /products/{productId}                      {product}; 404 unknown or deleted
    PATCH  /products/{productId}      owner, admin    name, description, priceCents, currency, lowStockThreshold
    DELETE /products/{productId}      owner, admin    soft delete: gone from reads, kept for the orders that name it
    PATCH  /products/{productId}/stock owner, admin   {stock} sets the level, {delta} adjusts it; 409 below 0
    POST   /products/validate         service         order-service's check of an order's items: each item with
                                                      its seller, current price and whether stock covers it

Money is integer cents (priceCents) in the product's ISO 4217 currency.

Publishes (through the outbox):
    product.created        {productId, sellerId, name, priceCents, currency, stock}
    product.updated        the same plus changed: [fields]; a delete sends deleted: true
    product.stock.updated  {productId, sellerId, name, stock, previousStock, reason (order | release | manual),
                           orderId?, lowStock, threshold}; lowStock is true when the level went down to or
                           below the product's lowStockThreshold (a restock that stays low is no new alert)
    product.reservation.failed {orderId, userId, sellerId, reason, items: [{productId, requested, available}]}

Consumes:
    order.created   reserves every item's stock, all or nothing. Success: one product.stock.updated per
                    product, reason "order" with the orderId. Any item unknown, deleted or short: nothing is
                    taken, the reservation is recorded failed and product.reservation.failed tells the order
                    (order-service cancels it; payment-service refunds or never charges it).
    payment.failed  of an order's own payment (source "order"): gives the order's reserved units back
                    (product.stock.updated, reason "release"), once; a payment.failed that arrives before
                    its order.created is remembered, and that order then reserves nothing.

Environment: PRODUCT_LOW_STOCK_THRESHOLD (default 5), PRODUCT_DEFAULT_CURRENCY (default USD).
"""
from __future__ import annotations

import logging
from typing import Any

from gateway.logs import log_fields
from services.events import ORDER_CREATED, PAYMENT_FAILED, PRODUCT_CREATED, PRODUCT_STOCK_UPDATED, PRODUCT_UPDATED
from services.kit import (
    TOKEN_REQUIRED,
    Call,
    Caller,
    Conflict,
    Event,
    EventContext,
    Forbidden,
    NotFound,
    Ok,
    Routes,
    Row,
    Service,
    Transaction,
    ValidationFailed,
    error,
    listed,
    ok,
    path_parameter,
    query_parameters,
    reply,
    request_body,
    schema,
    wrapped,
)
from services.product import store
from services.product.config import ProductConfig
from services.product.events import PRODUCT_RESERVATION_FAILED, OrderCreated, PaymentOutcome
from services.product.models import (
    MAX_STOCK,
    CheckedItem,
    ProductIn,
    ProductOut,
    ProductPatch,
    ProductQuery,
    StockChange,
    ValidateIn,
)

log = logging.getLogger("services.product")

routes = Routes()


def _may_manage(caller: Caller, product: Row) -> bool:
    return caller.role == "admin" or (caller.role == "seller" and caller.id == product["seller_id"])


async def _managed_product(tx: Transaction, call: Call) -> Row:
    """The live product of the path, if the caller may change it: 404 unknown, 403 someone else's."""
    product = await store.live_product(tx, call.path("product_id"))
    if product is None:
        raise NotFound("No such product")
    if not _may_manage(call.caller, product):
        raise Forbidden("Only the product's seller or an admin can change it")
    return product


@routes.post("/products", roles=("seller", "admin"))
async def create_product(call: Call) -> Ok:
    body = await call.body(ProductIn)
    caller = call.caller
    config = call.config(ProductConfig)
    seller_id = caller.id
    if body.seller_id is not None and body.seller_id != caller.id:
        if caller.role != "admin":
            raise Forbidden("Only an admin can create a product for another seller")
        seller_id = body.seller_id
    values = {
        "seller_id": seller_id,
        "name": body.name,
        "description": body.description,
        "price_cents": body.price_cents,
        "currency": body.currency or config.default_currency,
        "stock": body.stock,
        "low_stock_threshold": (
            body.low_stock_threshold if body.low_stock_threshold is not None else config.low_stock_threshold
        ),
    }
    async with call.db.transaction() as tx:
        product = await store.insert_product(tx, values)
        tx.publish(PRODUCT_CREATED, store.product_event(product))
    return ok({"product": ProductOut.from_row(product)}, status=201, message="Product created")


@routes.get("/products")
async def list_products(call: Call) -> dict[str, object]:
    query = call.query(ProductQuery)
    limit, offset = query.window()
    if (
        query.min_price_cents is not None
        and query.max_price_cents is not None
        and query.min_price_cents > query.max_price_cents
    ):
        raise ValidationFailed(
            details=[{"field": "minPriceCents", "message": "greater than maxPriceCents", "type": "range"}]
        )
    where = store.ProductFilter(
        seller_id=query.seller_id,
        name=query.name,
        min_price_cents=query.min_price_cents,
        max_price_cents=query.max_price_cents,
        in_stock=query.in_stock,
    )
    rows, total = await store.list_products(call.db, where, limit, offset)
    return {"products": [ProductOut.from_row(row) for row in rows], "pagination": query.meta(total)}


@routes.get("/products/{product_id}")
async def get_product(call: Call) -> dict[str, object]:
    product = await store.live_product(call.db, call.path("product_id"))
    if product is None:
        raise NotFound("No such product")
    return {"product": ProductOut.from_row(product)}


_PATCHABLE = {
    "name": "name",
    "description": "description",
    "price_cents": "priceCents",
    "currency": "currency",
    "low_stock_threshold": "lowStockThreshold",
}


@routes.patch("/products/{product_id}", roles=("seller", "admin"))
async def update_product(call: Call) -> Ok:
    body = await call.body(ProductPatch)
    async with call.db.transaction() as tx:
        product = await _managed_product(tx, call)
        changes = {
            column: value
            for column in _PATCHABLE
            if (value := getattr(body, column)) is not None and value != product[column]
        }
        if not changes:
            return ok({"product": ProductOut.from_row(product)}, message="Nothing changed")
        product = await store.update_product(tx, product["id"], changes)
        tx.publish(PRODUCT_UPDATED, store.product_event(product, changed=sorted(_PATCHABLE[c] for c in changes)))
    return ok({"product": ProductOut.from_row(product)}, message="Product updated")


@routes.delete("/products/{product_id}", roles=("seller", "admin"))
async def delete_product(call: Call) -> Ok:
    async with call.db.transaction() as tx:
        product = await _managed_product(tx, call)
        await store.soft_delete(tx, product["id"])
        tx.publish(PRODUCT_UPDATED, store.product_event(product, changed=["deleted"], deleted=True))
    return ok({"productId": product["id"]}, message="Product deleted")


@routes.patch("/products/{product_id}/stock", roles=("seller", "admin"))
async def change_stock(call: Call) -> Ok:
    body = await call.body(StockChange)
    async with call.db.transaction() as tx:
        product = await _managed_product(tx, call)
        previous = product["stock"]
        stock = body.stock if body.stock is not None else previous + (body.delta or 0)
        if stock < 0:
            raise Conflict("Not enough stock to remove that many", details={"stock": previous, "delta": body.delta})
        if stock > MAX_STOCK:
            raise ValidationFailed(
                details=[{"field": "delta", "message": f"stock cannot exceed {MAX_STOCK}", "type": "less_than_equal"}]
            )
        if stock == previous:
            return ok({"product": ProductOut.from_row(product)}, message="Nothing changed")
        product = await store.set_stock(tx, product["id"], stock)
        tx.publish(PRODUCT_STOCK_UPDATED, store.stock_event(product, previous, stock, "manual"))
    return ok({"product": ProductOut.from_row(product)}, message="Stock updated")


@routes.post("/products/validate", roles=("service",))
async def validate_items(call: Call) -> dict[str, object]:
    body = await call.body(ValidateIn)
    products = await store.live_products(call.db, [item.product_id for item in body.items])
    checked = []
    for item in body.items:
        product = products.get(item.product_id)
        if product is None:
            checked.append(
                CheckedItem(product_id=item.product_id, quantity=item.quantity, found=False, enough_stock=False)
            )
            continue
        checked.append(
            CheckedItem(
                product_id=item.product_id,
                quantity=item.quantity,
                found=True,
                enough_stock=product["stock"] >= item.quantity,
                seller_id=product["seller_id"],
                name=product["name"],
                unit_price_cents=product["price_cents"],
                currency=product["currency"],
                stock=product["stock"],
            )
        )
    return {"items": checked, "valid": all(item.enough_stock for item in checked)}


# Event handlers ----------------------------------------------------------------------------------------


async def on_order_created(event: Event, ctx: EventContext) -> None:
    order = OrderCreated.model_validate(event.data)
    tx = ctx.tx
    if await store.reservation(tx, order.order_id) is not None:
        log.info("order already handled; nothing reserved", extra=log_fields(orderId=order.order_id))
        return
    wanted: dict[str, int] = {}
    for line in order.items:
        wanted[line.product_id] = wanted.get(line.product_id, 0) + line.quantity
    products = await store.live_products(tx, list(wanted))
    shortfalls = [
        {"productId": product_id, "requested": quantity, "available": products[product_id]["stock"]}
        if product_id in products
        else {"productId": product_id, "requested": quantity, "available": 0}
        for product_id, quantity in wanted.items()
        if product_id not in products or products[product_id]["stock"] < quantity
    ]
    if shortfalls:
        unknown = any(product_id not in products for product_id in wanted)
        reason = "unknown_product" if unknown else "insufficient_stock"
        await store.record_reservation(tx, order.order_id, "failed", reason)
        tx.publish(
            PRODUCT_RESERVATION_FAILED,
            {
                "orderId": order.order_id,
                "userId": order.user_id,
                "sellerId": order.seller_id,
                "reason": reason,
                "items": shortfalls,
            },
        )
        log.warning("could not reserve an order's stock", extra=log_fields(orderId=order.order_id, reason=reason))
        return
    await store.record_reservation(tx, order.order_id, "reserved", items=wanted)
    for product_id, quantity in wanted.items():
        previous = products[product_id]["stock"]
        product = await store.set_stock(tx, product_id, previous - quantity)
        tx.publish(
            PRODUCT_STOCK_UPDATED, store.stock_event(product, previous, product["stock"], "order", order.order_id)
        )


async def on_payment_failed(event: Event, ctx: EventContext) -> None:
    outcome = PaymentOutcome.model_validate(event.data)
    if outcome.source != "order":
        return  # a direct charge that failed leaves the order and its stock alone
    tx = ctx.tx
    found = await store.reservation(tx, outcome.order_id)
    if found is None:
        # The payment failed before this service saw the order: remember it so the order reserves nothing.
        await store.record_reservation(tx, outcome.order_id, "released", "payment failed before reservation")
        return
    if found["status"] != "reserved":
        return  # released already, or never reserved: nothing to give back
    for item in await store.reserved_items(tx, outcome.order_id):
        before = await store.any_product(tx, item["product_id"])
        if before is None:
            continue
        product = await store.set_stock(tx, item["product_id"], before["stock"] + item["quantity"])
        tx.publish(
            PRODUCT_STOCK_UPDATED,
            store.stock_event(product, before["stock"], product["stock"], "release", outcome.order_id),
        )
    await store.mark_released(tx, outcome.order_id, "payment failed")


# OpenAPI ------------------------------------------------------------------------------------------------

_PRODUCT_ID = path_parameter("productId", "The product's ID (prod_...).")
_PRODUCT = wrapped("product", ProductOut)
_NOT_FOUND = error("No such product (or it was deleted).")
_NOT_YOURS = error("A role other than seller or admin, or another seller's product.")
_INVALID = error("Fields that fail validation, listed in details.")

OPENAPI_PATHS: dict[str, dict[str, Any]] = {
    "/products": {
        "post": {
            "summary": "Create a product (seller, admin)",
            "requestBody": request_body(ProductIn),
            "responses": {
                "201": reply("The product; product.created is published.", _PRODUCT),
                "401": TOKEN_REQUIRED,
                "403": error("Not a seller or admin, or a seller naming another seller."),
                "422": _INVALID,
            },
        },
        "get": {
            "summary": "List products, newest first",
            "parameters": query_parameters(ProductQuery),
            "responses": {
                "200": reply("One page of products and the pagination block.", listed("products", ProductOut)),
                "401": TOKEN_REQUIRED,
                "422": error("Bad filters or pagination (page/pageSize and limit/offset mixed)."),
            },
        },
    },
    "/products/validate": {
        "post": {
            "summary": "Check an order's items: sellers, current prices, stock (service tokens only)",
            "requestBody": request_body(ValidateIn),
            "responses": {
                "200": reply(
                    "Each item as the catalogue sees it now.",
                    {
                        "type": "object",
                        "properties": {
                            "items": {"type": "array", "items": schema(CheckedItem)},
                            "valid": {"type": "boolean"},
                        },
                    },
                ),
                "401": TOKEN_REQUIRED,
                "403": error("Not a service token."),
                "422": _INVALID,
            },
        }
    },
    "/products/{productId}": {
        "parameters": [_PRODUCT_ID],
        "get": {
            "summary": "One product",
            "responses": {"200": reply("The product.", _PRODUCT), "401": TOKEN_REQUIRED, "404": _NOT_FOUND},
        },
        "patch": {
            "summary": "Change a product's details (its seller, admin)",
            "requestBody": request_body(ProductPatch),
            "responses": {
                "200": reply("The product; product.updated is published when something changed.", _PRODUCT),
                "401": TOKEN_REQUIRED,
                "403": _NOT_YOURS,
                "404": _NOT_FOUND,
                "422": _INVALID,
            },
        },
        "delete": {
            "summary": "Delete a product (soft; its seller, admin)",
            "responses": {
                "200": reply(
                    "Deleted; product.updated with deleted: true is published.",
                    {"type": "object", "properties": {"productId": {"type": "string"}}},
                ),
                "401": TOKEN_REQUIRED,
                "403": _NOT_YOURS,
                "404": _NOT_FOUND,
            },
        },
    },
    "/products/{productId}/stock": {
        "parameters": [_PRODUCT_ID],
        "patch": {
            "summary": "Set ({stock}) or adjust ({delta}) a product's stock (its seller, admin)",
            "requestBody": request_body(StockChange),
            "responses": {
                "200": reply("The product; product.stock.updated is published when the level changed.", _PRODUCT),
                "401": TOKEN_REQUIRED,
                "403": _NOT_YOURS,
                "404": _NOT_FOUND,
                "409": error("The adjustment would take the stock below 0."),
                "422": _INVALID,
            },
        }
    },
}


SERVICE = Service(
    name="product-service",
    port=3002,
    routes=routes,
    migrations=store.MIGRATIONS,
    publishes=(PRODUCT_CREATED, PRODUCT_UPDATED, PRODUCT_STOCK_UPDATED, PRODUCT_RESERVATION_FAILED),
    handlers={ORDER_CREATED: on_order_created, PAYMENT_FAILED: on_payment_failed},
    configs=(ProductConfig,),
)
