"""ai-service: recommendations and demand forecasts computed from the platform's own orders and products
(no trained or downloaded model: counting and smoothing over a local copy of the events).

    GET /ai/recommendations?productId=&limit=    any signed-in caller. Products bought together with
        it: ranked by the number of orders (order.created, not failed, cancelled or refunded) holding
        both, then by units (reason bought-together). Orders hold one seller's products, so these are
        the same seller's. When fewer than limit are found, the seller's best sellers by units
        (seller-best-seller) fill the list. Deleted and sold-out products are never recommended; 404
        for an unknown product.
    GET /ai/recommendations/users/{userId}?limit=    the user themself, an admin or a service. Products
        in other customers' orders that hold something the user bought, by number of such orders
        (also-bought); then best sellers of the sellers the user bought from (seller-best-seller); then
        the platform's best sellers (popular), which is all a user without orders gets. Products the
        user already bought are left out.
    GET /ai/forecast/{productId}?days=    the product's seller, an admin or a service. Units ordered
        per complete UTC day over the last `days` days (AI_FORECAST_DAYS, 28; never before the
        product was first seen), smoothed exponentially (AI_SMOOTHING_ALPHA) into a flat daily demand,
        the least-squares trend of that history, and the days until the current stock runs out at
        that demand. Formula and limits: services/ai/forecast.py. Today is left out (it is not over);
        404 for an unknown product.

Consumes order.created, order.status.updated, product.created, product.updated, product.stock.updated;
publishes nothing. Environment (services/ai/config.py): AI_FORECAST_DAYS, AI_SMOOTHING_ALPHA,
AI_RECOMMENDATIONS.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from services.ai import store
from services.ai.config import AiConfig
from services.ai.forecast import forecast
from services.ai.models import (
    DailyUnits,
    ForecastOut,
    ForecastQuery,
    OrderCreated,
    OrderStatusUpdated,
    ProductChanged,
    ProductRecommendationQuery,
    ProductRecommendations,
    Reason,
    Recommendation,
    UserRecommendationQuery,
    UserRecommendations,
)
from services.events import ORDER_CREATED, ORDER_STATUS_UPDATED, PRODUCT_CREATED, PRODUCT_STOCK_UPDATED, PRODUCT_UPDATED
from services.kit import (
    TOKEN_REQUIRED,
    Call,
    Event,
    EventContext,
    Forbidden,
    NotFound,
    Routes,
    Row,
    Service,
    error,
    path_parameter,
    query_parameters,
    reply,
)

PRIVILEGED_ROLES = frozenset({"admin", "service"})

routes = Routes()


class _Picks:
    """Recommendations gathered from several sources, each product once, up to a limit."""

    def __init__(self, limit: int, exclude: Iterable[str] = ()) -> None:
        self.limit = limit
        self.seen = set(exclude)
        self.items: list[Recommendation] = []

    @property
    def missing(self) -> int:
        return self.limit - len(self.items)

    def add(self, rows: Iterable[Row], reason: Reason) -> None:
        for row in rows:
            if self.missing <= 0:
                return
            if row["product_id"] in self.seen:
                continue
            self.seen.add(row["product_id"])
            self.items.append(
                Recommendation(
                    product_id=row["product_id"],
                    name=row["name"],
                    seller_id=row["seller_id"],
                    price_cents=row["price_cents"],
                    score=int(row["score"]),
                    reason=reason,
                )
            )


@routes.get("/ai/recommendations")
async def product_recommendations(call: Call) -> ProductRecommendations:
    query = call.query(ProductRecommendationQuery)
    limit = query.limit or call.config(AiConfig).recommendations
    product = await store.product(call.db, query.product_id)
    if product is None:
        raise NotFound("No data about this product")
    picks = _Picks(limit, exclude=[query.product_id])
    picks.add(await store.bought_together(call.db, [query.product_id], limit), "bought-together")
    if picks.missing > 0 and product["seller_id"] is not None:
        # Asked for more than the limit: the ones already picked are skipped, the rest still fill it.
        rows = await store.best_sellers(call.db, seller_ids=[product["seller_id"]], exclude=picks.seen, limit=limit)
        picks.add(rows, "seller-best-seller")
    return ProductRecommendations(product_id=query.product_id, recommendations=picks.items)


@routes.get("/ai/recommendations/users/{userId}")
async def user_recommendations(call: Call) -> UserRecommendations:
    user_id = call.path("userId")
    if call.caller.role not in PRIVILEGED_ROLES and call.caller.id != user_id:
        raise Forbidden("Recommendations are for the user themself")
    query = call.query(UserRecommendationQuery)
    limit = query.limit or call.config(AiConfig).recommendations
    owned, sellers = await store.purchases_of(call.db, user_id)
    picks = _Picks(limit, exclude=owned)
    if owned:
        picks.add(await store.also_bought(call.db, user_id, owned, limit), "also-bought")
    if picks.missing > 0:
        rows = await store.best_sellers(call.db, seller_ids=sellers, exclude=picks.seen, limit=limit)
        picks.add(rows, "seller-best-seller")
    if picks.missing > 0:
        picks.add(await store.best_sellers(call.db, seller_ids=None, exclude=picks.seen, limit=limit), "popular")
    return UserRecommendations(user_id=user_id, purchased=len(owned), recommendations=picks.items)


def history_window(today: date, days: int, first_seen: date) -> tuple[date, date] | None:
    """The complete days to look at: the last `days` before today, none before the product was first
    seen; None when there is no complete day yet."""
    last = today - timedelta(days=1)
    first = max(today - timedelta(days=days), first_seen)
    return (first, last) if first <= last else None


@routes.get("/ai/forecast/{productId}")
async def product_forecast(call: Call) -> ForecastOut:
    product_id = call.path("productId")
    query = call.query(ForecastQuery)
    config = call.config(AiConfig)
    product = await store.product(call.db, product_id)
    if product is None:
        raise NotFound("No data about this product")
    if call.caller.role not in PRIVILEGED_ROLES and call.caller.id != product["seller_id"]:
        raise Forbidden("Forecasts are for the product's seller")
    today = datetime.now(UTC).date()
    window = history_window(today, query.days or config.forecast_days, date.fromisoformat(product["first_seen"][:10]))
    history: list[DailyUnits] = []
    if window is not None:
        units = await store.daily_units(call.db, product_id, *window)
        day = window[0]
        while day <= window[1]:
            history.append(DailyUnits(date=day.isoformat(), units=units.get(day.isoformat(), 0)))
            day += timedelta(days=1)
    result = forecast([item.units for item in history], product["stock"], config.smoothing_alpha)
    left = result.days_until_stock_out
    return ForecastOut(
        product_id=product_id,
        name=product["name"],
        seller_id=product["seller_id"],
        alpha=config.smoothing_alpha,
        history=history,
        daily_demand=round(result.daily, 3),
        trend_per_day=round(result.trend, 3),
        next_7_days=round(result.daily * 7, 3),
        current_stock=product["stock"],
        days_until_stock_out=None if left is None else round(left, 1),
        stock_out_date=stock_out_date(today, left),
    )


def stock_out_date(today: date, days_left: float | None) -> str | None:
    """The day the stock runs out, days_left from today; None when nothing sells or when that day lies
    past the last one a date can name (a demand that decayed to almost nothing)."""
    if days_left is None or days_left >= (date.max - today).days + 1:
        return None
    return (today + timedelta(days=math.floor(days_left))).isoformat()


# --- event handlers ---------------------------------------------------------------------------------


async def on_product(event: Event, ctx: EventContext) -> None:
    await store.upsert_product(ctx.tx, ProductChanged.model_validate(event.data), event.timestamp)


async def on_stock(event: Event, ctx: EventContext) -> None:
    update = ProductChanged.model_validate(event.data)
    if update.stock is not None:
        await store.update_stock(ctx.tx, update.product_id, update.seller_id, update.stock, event.timestamp)


async def on_order_created(event: Event, ctx: EventContext) -> None:
    await store.record_order(ctx.tx, OrderCreated.model_validate(event.data), event.timestamp)


async def on_order_status(event: Event, ctx: EventContext) -> None:
    update = OrderStatusUpdated.model_validate(event.data)
    await store.record_status(ctx.tx, update.order_id, update.status, event.timestamp)


# --- OpenAPI ----------------------------------------------------------------------------------------


_UNKNOWN_PRODUCT = error("No data about this product.")

OPENAPI_PATHS: dict[str, dict[str, Any]] = {
    "/ai/recommendations": {
        "get": {
            "summary": "Products bought together with a product, then its seller's best sellers",
            "parameters": query_parameters(ProductRecommendationQuery),
            "responses": {
                "200": reply("The product's recommendations.", ProductRecommendations),
                "401": TOKEN_REQUIRED,
                "404": _UNKNOWN_PRODUCT,
                "422": error("productId missing or limit out of range."),
            },
        }
    },
    "/ai/recommendations/users/{userId}": {
        "get": {
            "summary": "Recommendations from a user's order history (the user, admins, services)",
            "parameters": [path_parameter("userId"), *query_parameters(UserRecommendationQuery)],
            "responses": {
                "200": reply("The user's recommendations.", UserRecommendations),
                "401": TOKEN_REQUIRED,
                "403": error("Another user's recommendations."),
                "422": error("limit out of range."),
            },
        }
    },
    "/ai/forecast/{productId}": {
        "get": {
            "summary": "Daily demand forecast (exponential smoothing) and days until stock-out (the seller, admins, "
            "services)",
            "parameters": [path_parameter("productId"), *query_parameters(ForecastQuery)],
            "responses": {
                "200": reply("The product's forecast.", ForecastOut),
                "401": TOKEN_REQUIRED,
                "403": error("Another seller's product."),
                "404": _UNKNOWN_PRODUCT,
                "422": error("days out of range."),
            },
        }
    },
}


SERVICE = Service(
    name="ai-service",
    port=8000,
    routes=routes,
    migrations=store.MIGRATIONS,
    handlers={
        ORDER_CREATED: on_order_created,
        ORDER_STATUS_UPDATED: on_order_status,
        PRODUCT_CREATED: on_product,
        PRODUCT_UPDATED: on_product,
        PRODUCT_STOCK_UPDATED: on_stock,
    },
    configs=(AiConfig,),
)
