"""ai-service: the forecasting formulas as pure functions, then recommendations and forecasts computed
from real events published on RabbitMQ and read through HTTP."""
from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from services.ai import SERVICE
from services.ai.forecast import days_until_stock_out, linear_trend, smoothed_level
from services.ai.service import history_window, stock_out_date
from services.events import (
    ORDER_CREATED,
    ORDER_STATUS_UPDATED,
    PRODUCT_CREATED,
    PRODUCT_STOCK_UPDATED,
    PRODUCT_UPDATED,
)
from services.events.event import Event
from tests.process.helpers import wait_until
from tests.services.conftest import MakeSettings, Serve
from tests.services.consumer_support import call, consuming, event, publish_all
from tests.services.helpers import EventProbe, Served, check_openapi

ADMIN = ("user_admin", "admin")

# --- pure logic -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("series", "alpha", "level"),
    [
        ([], 0.3, 0.0),
        ([4, 4, 4], 0.3, 4.0),
        ([0, 10], 0.5, 6.25),  # start at the mean 5: 0.5*0 + 0.5*5 = 2.5, then 0.5*10 + 0.5*2.5
        ([1, 2, 9], 1.0, 9.0),
    ],
    ids=["empty", "constant", "worked-example", "alpha-one-is-the-last-day"],
)
def test_exponential_smoothing(series: list[float], alpha: float, level: float) -> None:
    assert smoothed_level(series, alpha) == pytest.approx(level)


def test_smoothing_needs_an_alpha_in_range() -> None:
    with pytest.raises(ValueError, match="alpha"):
        smoothed_level([1.0], 0.0)


@pytest.mark.parametrize(
    ("series", "slope"),
    [([1, 2, 3], 1.0), ([3, 3, 3], 0.0), ([6, 4, 2, 0], -2.0), ([5], 0.0), ([], 0.0)],
    ids=["rising", "flat", "falling", "one-day", "empty"],
)
def test_linear_trend(series: list[float], slope: float) -> None:
    assert linear_trend(series) == pytest.approx(slope)


@pytest.mark.parametrize(
    ("stock", "daily", "days"),
    [(10, 4.0, 2.5), (0, 2.0, 0.0), (None, 2.0, None), (5, 0.0, None)],
    ids=["lasts", "sold-out", "stock-unknown", "nothing-sells"],
)
def test_days_until_stock_out(stock: int | None, daily: float, days: float | None) -> None:
    assert days_until_stock_out(stock, daily) == days


@pytest.mark.parametrize(
    ("days", "first_seen", "window"),
    [
        (7, date(2024, 1, 1), (date(2024, 7, 3), date(2024, 7, 9))),
        (28, date(2024, 7, 5), (date(2024, 7, 5), date(2024, 7, 9))),
        (28, date(2024, 7, 10), None),
    ],
    ids=["full-window", "since-first-seen", "new-today"],
)
def test_the_history_is_complete_days_since_the_product_was_seen(
    days: int, first_seen: date, window: tuple[date, date] | None
) -> None:
    assert history_window(date(2024, 7, 10), days, first_seen) == window


@pytest.mark.parametrize(
    ("today", "days_left", "day"),
    [
        (date(2024, 7, 10), 2.9, "2024-07-12"),
        (date(9999, 12, 30), 1.9, "9999-12-31"),
        (date(9999, 12, 30), 2.0, None),
        (date(2024, 7, 10), 1e60, None),
        (date(2024, 7, 10), None, None),
    ],
    ids=["whole-days", "last-day", "past-the-calendar", "decayed-demand", "nothing-sells"],
)
def test_the_stock_out_date_is_none_past_the_calendar(today: date, days_left: float | None, day: str | None) -> None:
    assert stock_out_date(today, days_left) == day


def test_the_openapi_paths_document_every_route() -> None:
    check_openapi(SERVICE)


# --- through RabbitMQ and HTTP ----------------------------------------------------------------------

TODAY = datetime.now(UTC).date()


def day(offset: int) -> str:
    """Noon UTC, offset days from today (negative: past)."""
    return f"{(TODAY + timedelta(days=offset)).isoformat()}T12:00:00.000Z"


def product(product_id: str, seller_id: str, stock: int = 50, *, offset: int = -30) -> Event:
    data = {"productId": product_id, "sellerId": seller_id, "name": product_id.title(), "priceCents": 100}
    return event(PRODUCT_CREATED, {**data, "stock": stock}, timestamp=day(offset))


def order(order_id: str, user_id: str, seller_id: str, items: dict[str, int], *, offset: int = -2) -> Event:
    lines = [{"productId": key, "quantity": quantity, "unitPriceCents": 100} for key, quantity in items.items()]
    data = {"orderId": order_id, "userId": user_id, "sellerId": seller_id, "items": lines, "amountCents": 0}
    return event(ORDER_CREATED, data, timestamp=day(offset))


async def handled_all(service: Served, count: int) -> None:
    def total() -> float:
        return sum(
            service.metric("kadai_service_events_consumed_total", type=kind, outcome="ok")
            for kind in SERVICE.handlers
        )

    await wait_until(lambda: total() >= count, 10, f"{count} events handled")


@pytest.fixture
async def ai(serve: Serve, make_settings: MakeSettings, rabbitmq_server: str) -> Served:
    service = await serve(SERVICE, make_settings(amqp_url=rabbitmq_server))
    await consuming(service)
    return service


async def get(service: Served, path: str, who: tuple[str, str] = ("user_any", "customer")) -> dict[str, Any]:
    status, body = await call(service, "GET", path, as_=who)
    assert status == 200, body
    data: dict[str, Any] = body["data"]
    return data


def picks(reply: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(item["productId"], item["reason"], item["score"]) for item in reply["recommendations"]]


CATALOGUE = [
    product("lamp", "shop_1"),
    product("bulb", "shop_1"),
    product("shade", "shop_1"),
    product("desk", "shop_1"),
    product("sold_out", "shop_1", stock=0),
    product("cable", "shop_1"),
    product("mug", "shop_2"),
    product("retired", "shop_1"),
    event(PRODUCT_UPDATED, {"productId": "retired", "sellerId": "shop_1", "deleted": True}, timestamp=day(-1)),
]
ORDERS = [
    order("o1", "ann", "shop_1", {"lamp": 1, "bulb": 2, "retired": 1}),  # then deleted: never recommended
    order("o2", "bob", "shop_1", {"lamp": 1, "bulb": 1, "shade": 1}),
    order("o3", "cid", "shop_1", {"lamp": 2, "bulb": 4, "sold_out": 1}),
    order("o4", "dan", "shop_1", {"desk": 10}),
    order("o5", "eve", "shop_1", {"lamp": 1, "cable": 5}),  # its payment fails: not a purchase
    order("o6", "fay", "shop_2", {"mug": 20}),
]
FAILED = event(ORDER_STATUS_UPDATED, {"orderId": "o5", "status": "payment_failed", "previousStatus": "pending"})


@pytest.mark.rabbitmq
async def test_recommendations_for_a_product_and_for_users(ai: Served, probe: EventProbe) -> None:
    # The failed status comes before its order: it must still keep o5 out.
    await publish_all(probe, *CATALOGUE, FAILED, *ORDERS)
    await handled_all(ai, len(CATALOGUE) + len(ORDERS) + 1)

    lamp = await get(ai, "/ai/recommendations?productId=lamp&limit=3")
    desk = await get(ai, "/ai/recommendations?productId=desk")
    assert picks(lamp) == [
        ("bulb", "bought-together", 3),
        ("shade", "bought-together", 1),
        ("desk", "seller-best-seller", 10),
    ]
    assert lamp["recommendations"][0] == {
        "productId": "bulb",
        "name": "Bulb",
        "sellerId": "shop_1",
        "priceCents": 100,
        "score": 3,
        "reason": "bought-together",
    }
    assert picks(desk) == [
        ("bulb", "seller-best-seller", 7),
        ("lamp", "seller-best-seller", 4),
        ("shade", "seller-best-seller", 1),
    ]

    ann = await get(ai, "/ai/recommendations/users/ann", ("ann", "customer"))
    newcomer = await get(ai, "/ai/recommendations/users/zed", ADMIN)
    assert ann["purchased"] == 3
    # Others who bought lamp or bulb also bought shade; then the shop's best seller, then the platform's.
    assert picks(ann) == [("shade", "also-bought", 1), ("desk", "seller-best-seller", 10), ("mug", "popular", 20)]
    assert newcomer["purchased"] == 0
    assert picks(newcomer) == [
        ("mug", "popular", 20),
        ("desk", "popular", 10),
        ("bulb", "popular", 7),
        ("lamp", "popular", 4),
        ("shade", "popular", 1),
    ]


@pytest.mark.rabbitmq
async def test_the_forecast_smooths_daily_units_and_says_when_stock_runs_out(ai: Served, probe: EventProbe) -> None:
    sales = {-9: 2, -6: 3, -3: 4, -2: 5, -1: 6, 0: 50}  # today's 50 are not a complete day: left out
    restock = event(
        PRODUCT_STOCK_UPDATED,
        {"productId": "kettle", "sellerId": "shop_1", "stock": 12, "previousStock": 40, "lowStock": False},
        timestamp=day(0),
    )
    orders = [order(f"k{offset}", "ann", "shop_1", {"kettle": units}, offset=offset) for offset, units in sales.items()]
    await publish_all(probe, restock, product("kettle", "shop_1", stock=40, offset=-10), *orders)
    await handled_all(ai, len(orders) + 2)

    reply = await get(ai, "/ai/forecast/kettle", ("shop_1", "seller"))

    history = [item["units"] for item in reply["history"]]
    dates = [(TODAY + timedelta(days=k)).isoformat() for k in range(-10, 0)]
    assert [item["date"] for item in reply["history"]] == dates
    assert history == [0, 2, 0, 0, 3, 0, 0, 4, 5, 6]
    level = smoothed_level(history, 0.3)
    assert reply["dailyDemand"] == round(level, 3) and reply["alpha"] == 0.3
    assert reply["trendPerDay"] == round(linear_trend(history), 3) and reply["trendPerDay"] > 0
    assert reply["currentStock"] == 12  # the restock event is newer than product.created, whatever came first
    assert reply["daysUntilStockOut"] == round(12 / level, 1)
    assert reply["stockOutDate"] == (TODAY + timedelta(days=math.floor(12 / level))).isoformat()
    assert reply["next7Days"] == round(level * 7, 3)

    week = await get(ai, "/ai/forecast/kettle?days=7", ADMIN)
    assert [item["units"] for item in week["history"]] == [0, 3, 0, 0, 4, 5, 6]


@pytest.mark.rabbitmq
async def test_a_product_that_does_not_sell_has_no_stock_out(ai: Served, probe: EventProbe) -> None:
    await probe.publish(product("anvil", "shop_1", stock=3, offset=-5))
    await handled_all(ai, 1)

    reply = await get(ai, "/ai/forecast/anvil", ADMIN)

    assert reply["history"] == [{"date": (TODAY + timedelta(days=k)).isoformat(), "units": 0} for k in range(-5, 0)]
    assert (reply["dailyDemand"], reply["daysUntilStockOut"], reply["stockOutDate"]) == (0.0, None, None)


@pytest.mark.rabbitmq
async def test_a_stock_that_outlasts_the_calendar_has_no_stock_out_date(ai: Served, probe: EventProbe) -> None:
    # One unit sold 28 days ago (the default window) and none since: the smoothed demand decays to ~2e-5 a
    # day, so 1000 units last ~5e7 days, far past the year 9999 a date can name.
    vase = product("vase", "shop_1", stock=1000, offset=-28)
    await publish_all(probe, vase, order("v1", "ann", "shop_1", {"vase": 1}, offset=-28))
    await handled_all(ai, 2)

    reply = await get(ai, "/ai/forecast/vase", ADMIN)

    level = smoothed_level([item["units"] for item in reply["history"]], 0.3)
    assert 0 < level < 1e-4
    assert reply["daysUntilStockOut"] == round(1000 / level, 1)
    assert reply["stockOutDate"] is None


@pytest.mark.rabbitmq
async def test_the_routes_check_callers_and_parameters(ai: Served, probe: EventProbe) -> None:
    await probe.publish(product("lamp", "shop_1"))
    await handled_all(ai, 1)

    cases = [
        ("/ai/recommendations?productId=lamp", None, 401),
        ("/ai/recommendations?productId=nothing", ("ann", "customer"), 404),
        ("/ai/recommendations", ("ann", "customer"), 422),
        ("/ai/recommendations?productId=lamp&limit=0", ("ann", "customer"), 422),
        ("/ai/recommendations/users/ann", ("bob", "customer"), 403),
        ("/ai/recommendations/users/ann", ("service:notification-service", "service"), 200),
        ("/ai/forecast/lamp", ("ann", "customer"), 403),
        ("/ai/forecast/lamp", ("shop_2", "seller"), 403),
        ("/ai/forecast/lamp?days=3", ("shop_1", "seller"), 422),
        ("/ai/forecast/nothing", ADMIN, 404),
    ]
    for path, who, expected in cases:
        status, body = await call(ai, "GET", path, as_=who)
        assert status == expected, (path, who, body)
    status, body = await call(ai, "GET", "/ai/recommendations?limit=x", as_=ADMIN)
    assert status == 422 and {item["field"] for item in body["details"]} == {"productId", "limit"}
