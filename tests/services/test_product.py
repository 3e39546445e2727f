"""product-service: the catalogue through real HTTP, stock changes and their events, and the reservations
it makes and gives back for order.created and payment.failed delivered through the real RabbitMQ."""
from __future__ import annotations

from typing import Any

import pytest

from services import catalog
from services.events import ORDER_CREATED, PAYMENT_FAILED, PRODUCT_CREATED, PRODUCT_STOCK_UPDATED, PRODUCT_UPDATED
from services.kit import schema
from services.product import SERVICE
from services.product.events import PRODUCT_RESERVATION_FAILED
from services.product.models import ValidateIn
from services.product.service import OPENAPI_PATHS
from services.product.store import is_low_stock
from tests.process.helpers import wait_until
from tests.services.conftest import MakeSettings, Serve
from tests.services.helpers import EventProbe, Served, check_openapi
from tests.services.shop_support import (
    OTHER_SELLER,
    SELLER,
    admin,
    call,
    consuming,
    create_product,
    customer,
    handled,
    order_created,
    outbox,
    payment_event,
    seller,
    service_caller,
)


@pytest.fixture
async def products(serve: Serve, make_settings: MakeSettings) -> Served:
    return await serve(SERVICE, make_settings())


async def stock_of(service: Served, product_id: str) -> int:
    row = await service.runtime.db.fetchone("SELECT stock FROM products WHERE id = ?", (product_id,))
    assert row is not None
    return int(row["stock"])


# Pure logic ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stock", "previous", "threshold", "low"),
    [
        (5, 6, 5, True),
        (0, 3, 5, True),
        (6, 7, 5, False),
        (4, 2, 5, False),
        (5, 5, 5, False),
        (0, 1, 0, True),
    ],
    ids=["falls-to-threshold", "falls-below", "stays-above", "restock-still-low", "unchanged", "zero-threshold"],
)
def test_low_stock_is_a_fall_to_or_below_the_threshold(stock: int, previous: int, threshold: int, low: bool) -> None:
    assert is_low_stock(stock, previous, threshold) is low


@pytest.mark.parametrize(
    ("name", "port"),
    [("product", 3002), ("order", 3003), ("payment", 3004)],
    ids=["product", "order", "payment"],
)
def test_the_catalogue_runs_the_service(name: str, port: int) -> None:
    service = catalog.load(name)
    assert (service.name, service.port) == (f"{name}-service", port)


def test_the_served_openapi_document_is_valid_and_names_every_route() -> None:
    check_openapi(SERVICE)


def test_openapi_schemas_carry_no_local_references() -> None:
    validate = schema(ValidateIn)
    assert "$defs" not in str(validate) and "$ref" not in str(validate)
    assert validate["properties"]["items"]["items"]["properties"]["productId"]["type"] == "string"
    assert set(OPENAPI_PATHS) == {
        "/products",
        "/products/validate",
        "/products/{productId}",
        "/products/{productId}/stock",
    }
    create = OPENAPI_PATHS["/products"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create["properties"]["priceCents"]["type"] == "integer"


# The catalogue over HTTP --------------------------------------------------------------------------------


async def test_a_seller_creates_a_product_and_product_created_is_committed_with_it(
    serve: Serve, make_settings: MakeSettings
) -> None:
    service = await serve(SERVICE, make_settings(environ={"PRODUCT_LOW_STOCK_THRESHOLD": "3"}))

    created = await call(
        service,
        "POST",
        "/products",
        as_=seller(),
        json={"name": "  Tea Pot ", "priceCents": 1999, "stock": 4, "description": "Blue"},
    )

    assert created.status == 201 and created.body["message"] == "Product created"
    product = created.data["product"]
    assert product["id"].startswith("prod_")
    assert {key: product[key] for key in ("sellerId", "name", "priceCents", "currency", "stock")} == {
        "sellerId": SELLER,
        "name": "Tea Pot",
        "priceCents": 1999,
        "currency": "USD",
        "stock": 4,
    }
    assert (product["lowStockThreshold"], product["lowStock"]) == (3, False)
    assert await outbox(service, PRODUCT_CREATED) == [
        {
            "productId": product["id"],
            "sellerId": SELLER,
            "name": "Tea Pot",
            "priceCents": 1999,
            "currency": "USD",
            "stock": 4,
        }
    ]


async def test_only_sellers_and_admins_create_products_and_only_admins_for_someone_else(products: Served) -> None:
    body = {"name": "Mug", "priceCents": 500}

    anonymous = await call(products, "POST", "/products", json=body)
    as_customer = await call(products, "POST", "/products", as_=customer(), json=body)
    as_service = await call(products, "POST", "/products", as_=service_caller(), json=body)
    for_another = await call(products, "POST", "/products", as_=seller(), json={**body, "sellerId": OTHER_SELLER})
    by_admin = await call(products, "POST", "/products", as_=admin(), json={**body, "sellerId": OTHER_SELLER})

    assert (anonymous.status, anonymous.body["success"], anonymous.body["statusCode"]) == (401, False, 401)
    assert (as_customer.status, as_service.status, for_another.status) == (403, 403, 403)
    assert by_admin.status == 201 and by_admin.data["product"]["sellerId"] == OTHER_SELLER
    assert len(await outbox(products)) == 1


async def test_invalid_products_are_422_with_every_failing_field(products: Served) -> None:
    refused = await call(
        products,
        "POST",
        "/products",
        as_=seller(),
        json={"name": " ", "priceCents": -1, "stock": 1.5, "currency": "euro", "colour": "red"},
    )

    assert refused.status == 422 and refused.body["error"] == "Validation failed"
    assert refused.fields == {"name", "priceCents", "stock", "currency", "colour"}
    assert await outbox(products) == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["Zeta", "Teapot", "Kettle XL", "kettle", "Cup"]),
        ("?sellerId=user_seller_2", ["Zeta"]),
        ("?name=KETTLE", ["Kettle XL", "kettle"]),
        ("?name=%25", []),
        ("?minPriceCents=1000&maxPriceCents=3000", ["Teapot", "kettle"]),
        ("?inStock=false", ["Kettle XL"]),
        ("?inStock=true&maxPriceCents=999", ["Zeta", "Cup"]),
        ("?page=2&pageSize=2", ["Kettle XL", "kettle"]),
        ("?limit=2&offset=3", ["kettle", "Cup"]),
    ],
    ids=[
        "all", "seller", "name-contains", "name-is-literal", "price-range", "out-of-stock", "combined", "page", "slice"
    ],
)
async def test_listing_filters_and_paginates(products: Served, query: str, expected: list[str]) -> None:
    await create_product(products, name="Cup", priceCents=300, stock=50)
    await create_product(products, name="kettle", priceCents=2500, stock=2)
    await create_product(products, name="Kettle XL", priceCents=4500, stock=0)
    await create_product(products, name="Teapot", priceCents=1000, stock=7)
    await create_product(products, OTHER_SELLER, name="Zeta", priceCents=999, stock=1)
    gone = await create_product(products, name="Old kettle", priceCents=2000)
    assert (await call(products, "DELETE", f"/products/{gone['id']}", as_=seller())).status == 200

    listed = await call(products, "GET", "/products" + query, as_=customer())

    assert listed.status == 200, listed
    assert [product["name"] for product in listed.data["products"]] == expected
    pagination = listed.data["pagination"]
    if "page" not in query and "limit" not in query:
        assert pagination["total"] == len(expected)
    else:
        assert pagination["total"] == 5 and pagination["pageSize"] == 2


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("?page=1&limit=5", {"limit"}),
        ("?minPriceCents=500&maxPriceCents=100", {"minPriceCents"}),
        ("?pageSize=1000", {"pageSize"}),
        ("?inStock=maybe&colour=red", {"inStock", "colour"}),
    ],
    ids=["mixed-pagination", "inverted-range", "page-too-big", "bad-and-unknown"],
)
async def test_bad_list_queries_are_422(products: Served, query: str, fields: set[str]) -> None:
    refused = await call(products, "GET", "/products" + query, as_=customer())

    assert (refused.status, refused.fields) == (422, fields)


async def test_reading_a_product_and_what_deleted_means(products: Served) -> None:
    product = await create_product(products)

    read = await call(products, "GET", f"/products/{product['id']}", as_=customer())
    missing = await call(products, "GET", "/products/prod_nothing", as_=customer())
    anonymous = await call(products, "GET", f"/products/{product['id']}")
    by_other = await call(products, "DELETE", f"/products/{product['id']}", as_=seller(OTHER_SELLER))
    deleted = await call(products, "DELETE", f"/products/{product['id']}", as_=seller())
    after = await call(products, "GET", f"/products/{product['id']}", as_=customer())
    again = await call(products, "DELETE", f"/products/{product['id']}", as_=admin())

    assert read.status == 200 and read.data["product"] == product
    assert (missing.status, missing.body["error"], anonymous.status) == (404, "No such product", 401)
    assert (by_other.status, deleted.status, after.status, again.status) == (403, 200, 404, 404)
    updates = await outbox(products, PRODUCT_UPDATED)
    assert [(event["productId"], event.get("deleted"), event["changed"]) for event in updates] == [
        (product["id"], True, ["deleted"])
    ]
    # Kept for the orders that name it.
    row = await products.runtime.db.fetchone("SELECT deleted_at FROM products WHERE id = ?", (product["id"],))
    assert row is not None and row["deleted_at"] is not None


async def test_the_owner_or_an_admin_changes_a_product_and_product_updated_lists_what_changed(
    products: Served,
) -> None:
    product = await create_product(products)
    path = f"/products/{product['id']}"

    changed = await call(products, "PATCH", path, as_=seller(), json={"priceCents": 2700, "name": "Kettle"})
    by_admin = await call(products, "PATCH", path, as_=admin(), json={"lowStockThreshold": 0})
    same = await call(products, "PATCH", path, as_=seller(), json={"priceCents": 2700})
    by_other = await call(products, "PATCH", path, as_=seller(OTHER_SELLER), json={"priceCents": 1})
    by_customer = await call(products, "PATCH", path, as_=customer(), json={"priceCents": 1})
    empty = await call(products, "PATCH", path, as_=seller(), json={})
    stock_here = await call(products, "PATCH", path, as_=seller(), json={"stock": 3})
    missing = await call(products, "PATCH", "/products/prod_nothing", as_=seller(), json={"priceCents": 1})

    assert changed.status == 200 and changed.data["product"]["priceCents"] == 2700
    assert by_admin.status == 200 and by_admin.data["product"]["lowStockThreshold"] == 0
    assert (same.status, same.body["message"]) == (200, "Nothing changed")
    assert (by_other.status, by_customer.status, missing.status) == (403, 403, 404)
    assert (empty.status, empty.fields) == (422, {"(body)"})
    assert (stock_here.status, stock_here.fields) == (422, {"stock"})
    assert [event["changed"] for event in await outbox(products, PRODUCT_UPDATED)] == [
        ["priceCents"],
        ["lowStockThreshold"],
    ]


async def test_stock_is_set_or_adjusted_never_below_zero_and_low_stock_is_flagged_on_the_way_down(
    products: Served,
) -> None:
    product = await create_product(products, stock=10, lowStockThreshold=5)
    path = f"/products/{product['id']}/stock"

    down = await call(products, "PATCH", path, as_=seller(), json={"delta": -5})
    set_up = await call(products, "PATCH", path, as_=admin(), json={"stock": 8})
    too_many = await call(products, "PATCH", path, as_=seller(), json={"delta": -9})
    unchanged = await call(products, "PATCH", path, as_=seller(), json={"stock": 8})
    both = await call(products, "PATCH", path, as_=seller(), json={"stock": 1, "delta": 1})
    zero = await call(products, "PATCH", path, as_=seller(), json={"delta": 0})
    not_owner = await call(products, "PATCH", path, as_=seller(OTHER_SELLER), json={"delta": 1})

    assert down.status == 200 and down.data["product"]["stock"] == 5 and down.data["product"]["lowStock"] is True
    assert set_up.status == 200 and set_up.data["product"]["stock"] == 8
    assert (too_many.status, too_many.body["details"]) == (409, {"stock": 8, "delta": -9})
    assert (unchanged.status, unchanged.body["message"]) == (200, "Nothing changed")
    assert (both.status, zero.status, not_owner.status) == (422, 422, 403)
    assert await stock_of(products, product["id"]) == 8
    assert await outbox(products, PRODUCT_STOCK_UPDATED) == [
        {
            "productId": product["id"],
            "sellerId": SELLER,
            "name": product["name"],
            "stock": 5,
            "previousStock": 10,
            "reason": "manual",
            "lowStock": True,
            "threshold": 5,
        },
        {
            "productId": product["id"],
            "sellerId": SELLER,
            "name": product["name"],
            "stock": 8,
            "previousStock": 5,
            "reason": "manual",
            "lowStock": False,
            "threshold": 5,
        },
    ]


async def test_validate_tells_a_service_each_items_seller_price_and_stock(products: Served) -> None:
    kettle = await create_product(products, priceCents=2500, stock=2)
    body = {"items": [{"productId": kettle["id"], "quantity": 3}, {"productId": "prod_nothing", "quantity": 1}]}

    checked = await call(products, "POST", "/products/validate", as_=service_caller(), json=body)
    by_customer = await call(products, "POST", "/products/validate", as_=customer(), json=body)
    twice = await call(
        products,
        "POST",
        "/products/validate",
        as_=service_caller(),
        json={"items": [{"productId": kettle["id"], "quantity": 1}] * 2},
    )

    assert checked.status == 200
    assert checked.data == {
        "items": [
            {
                "productId": kettle["id"],
                "quantity": 3,
                "found": True,
                "enoughStock": False,
                "sellerId": SELLER,
                "name": "Kettle",
                "unitPriceCents": 2500,
                "currency": "USD",
                "stock": 2,
            },
            {
                "productId": "prod_nothing",
                "quantity": 1,
                "found": False,
                "enoughStock": False,
                "sellerId": None,
                "name": None,
                "unitPriceCents": None,
                "currency": None,
                "stock": None,
            },
        ],
        "valid": False,
    }
    assert by_customer.status == 403
    assert (twice.status, twice.fields) == (422, {"items"})


# Reservations through RabbitMQ -------------------------------------------------------------------------


@pytest.fixture
async def broker_products(
    serve: Serve, make_settings: MakeSettings, probe: EventProbe, rabbitmq_server: str
) -> Served:
    service = await serve(SERVICE, make_settings(amqp_url=rabbitmq_server))
    await consuming(service)
    return service


def published(probe: EventProbe, event_type: str) -> list[dict[str, Any]]:
    return [event.data for event in probe.events if event.type == event_type and event.source == "product-service"]


@pytest.mark.rabbitmq
async def test_order_created_reserves_every_item_once_and_announces_each_stock_change(
    broker_products: Served, probe: EventProbe
) -> None:
    service = broker_products
    kettle = await create_product(service, priceCents=2500, stock=10, lowStockThreshold=5)
    cup = await create_product(service, name="Cup", priceCents=300, stock=3, lowStockThreshold=1)
    event = order_created("order_1", [(kettle["id"], 5, 2500), (cup["id"], 1, 300)])

    await probe.publish(event)
    await probe.publish(event)  # redelivered
    await probe.publish(order_created("order_1", [(kettle["id"], 5, 2500)]))  # the same order again
    await handled(service, 2)
    await wait_until(
        lambda: service.metric("kadai_service_events_consumed_total", type=ORDER_CREATED, outcome="duplicate") == 1,
        5,
        "the duplicate",
    )

    assert (await stock_of(service, kettle["id"]), await stock_of(service, cup["id"])) == (5, 2)
    await probe.wait_for(2 + 3 + 2)  # 2 product.created, 3 order.created (ours), 2 stock updates
    assert {data["productId"]: data for data in published(probe, PRODUCT_STOCK_UPDATED)} == {
        kettle["id"]: {
            "productId": kettle["id"],
            "sellerId": SELLER,
            "name": kettle["name"],
            "stock": 5,
            "previousStock": 10,
            "reason": "order",
            "orderId": "order_1",
            "lowStock": True,
            "threshold": 5,
        },
        cup["id"]: {
            "productId": cup["id"],
            "sellerId": SELLER,
            "name": cup["name"],
            "stock": 2,
            "previousStock": 3,
            "reason": "order",
            "orderId": "order_1",
            "lowStock": False,
            "threshold": 1,
        },
    }
    stock_events = [event for event in probe.events if event.type == PRODUCT_STOCK_UPDATED]
    assert {event.request_id for event in stock_events} == {event.request_id}


@pytest.mark.rabbitmq
async def test_an_order_short_of_stock_reserves_nothing_and_says_so(
    broker_products: Served, probe: EventProbe
) -> None:
    service = broker_products
    kettle = await create_product(service, stock=10)
    cup = await create_product(service, name="Cup", stock=1)

    await probe.publish(order_created("order_short", [(kettle["id"], 2, 2500), (cup["id"], 3, 300)]))
    await probe.publish(order_created("order_unknown", [(kettle["id"], 1, 2500), ("prod_gone", 1, 100)]))
    await handled(service, 2)

    assert (await stock_of(service, kettle["id"]), await stock_of(service, cup["id"])) == (10, 1)
    await probe.wait_for(2 + 2 + 2)
    assert published(probe, PRODUCT_STOCK_UPDATED) == []
    assert published(probe, PRODUCT_RESERVATION_FAILED) == [
        {
            "orderId": "order_short",
            "userId": "user_buyer_1",
            "sellerId": SELLER,
            "reason": "insufficient_stock",
            "items": [{"productId": cup["id"], "requested": 3, "available": 1}],
        },
        {
            "orderId": "order_unknown",
            "userId": "user_buyer_1",
            "sellerId": SELLER,
            "reason": "unknown_product",
            "items": [{"productId": "prod_gone", "requested": 1, "available": 0}],
        },
    ]
    rows = await service.runtime.db.fetchall("SELECT order_id, status FROM reservations ORDER BY order_id")
    assert [tuple(row) for row in rows] == [("order_short", "failed"), ("order_unknown", "failed")]


@pytest.mark.rabbitmq
async def test_payment_failed_gives_the_reserved_stock_back_once(broker_products: Served, probe: EventProbe) -> None:
    service = broker_products
    kettle = await create_product(service, stock=10)
    await probe.publish(order_created("order_2", [(kettle["id"], 4, 2500)]))
    await handled(service, 1)
    assert await stock_of(service, kettle["id"]) == 6

    await probe.publish(payment_event("order_2", failed=True, source="api"))  # a direct charge: not the order's
    await probe.publish(payment_event("order_2", failed=True))
    await probe.publish(payment_event("order_2", failed=True))  # another copy with its own event ID
    await handled(service, 4)

    assert await stock_of(service, kettle["id"]) == 10
    await wait_until(
        lambda: len([data for data in published(probe, PRODUCT_STOCK_UPDATED) if data["reason"] == "release"]) == 1,
        5,
        "the release",
    )
    releases = [data for data in published(probe, PRODUCT_STOCK_UPDATED) if data["reason"] == "release"]
    assert releases == [
        {
            "productId": kettle["id"],
            "sellerId": SELLER,
            "name": kettle["name"],
            "stock": 10,
            "previousStock": 6,
            "reason": "release",
            "orderId": "order_2",
            "lowStock": False,
            "threshold": 5,
        }
    ]
    row = await service.runtime.db.fetchone("SELECT status FROM reservations WHERE order_id = 'order_2'")
    assert row is not None and row["status"] == "released"


@pytest.mark.rabbitmq
async def test_a_payment_failure_that_overtakes_its_order_means_nothing_is_reserved(
    broker_products: Served, probe: EventProbe
) -> None:
    service = broker_products
    kettle = await create_product(service, stock=10)

    await probe.publish(payment_event("order_3", failed=True))
    await handled(service, 1)
    await probe.publish(order_created("order_3", [(kettle["id"], 4, 2500)]))
    await handled(service, 2)

    assert await stock_of(service, kettle["id"]) == 10
    assert service.metric("kadai_service_events_consumed_total", type=PAYMENT_FAILED, outcome="ok") == 1
    assert await outbox(service, PRODUCT_STOCK_UPDATED) == []
