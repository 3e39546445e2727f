"""ai-service's event payloads (what it reads of them), queries and replies (camelCase on the wire)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from services.kit import CamelModel, EventPayload, ReferenceId


Id = ReferenceId
Payload = EventPayload


class ProductChanged(Payload):
    product_id: Id
    seller_id: Id | None = None
    name: str | None = None
    price_cents: int | None = None
    stock: int | None = None
    deleted: bool = False


class Item(Payload):
    product_id: Id
    quantity: int = Field(ge=0)


class OrderCreated(Payload):
    order_id: Id
    user_id: Id | None = None
    seller_id: Id | None = None
    items: list[Item] = []


class OrderStatusUpdated(Payload):
    order_id: Id
    status: str


class ProductRecommendationQuery(CamelModel):
    product_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    limit: int | None = Field(None, ge=1, le=50, description="How many (default AI_RECOMMENDATIONS).")


class UserRecommendationQuery(CamelModel):
    limit: int | None = Field(None, ge=1, le=50, description="How many (default AI_RECOMMENDATIONS).")


class ForecastQuery(CamelModel):
    days: int | None = Field(None, ge=7, le=365, description="Days of history to look at (default AI_FORECAST_DAYS).")


Reason = Literal["bought-together", "also-bought", "seller-best-seller", "popular"]


class Recommendation(CamelModel):
    product_id: str
    name: str | None
    seller_id: str | None
    price_cents: int | None
    score: int = Field(description="Orders bought together (bought-together, also-bought) or units sold (the others).")
    reason: Reason


class ProductRecommendations(CamelModel):
    product_id: str
    recommendations: list[Recommendation]


class UserRecommendations(CamelModel):
    user_id: str
    purchased: int = Field(description="Distinct products in the user's orders.")
    recommendations: list[Recommendation]


class DailyUnits(CamelModel):
    date: str
    units: int


class ForecastOut(CamelModel):
    product_id: str
    name: str | None
    seller_id: str | None
    method: Literal["simple-exponential-smoothing"] = "simple-exponential-smoothing"
    alpha: float
    history: list[DailyUnits] = Field(description="Units ordered per complete UTC day, oldest first.")
    daily_demand: float = Field(description="Forecast units per day (the smoothed level).")
    trend_per_day: float = Field(description="Least-squares slope of the history: units per day, per day.")
    next_7_days: float = Field(description="daily_demand x 7.")
    current_stock: int | None
    days_until_stock_out: float | None = Field(description="current_stock / daily_demand; null when nothing sells.")
    stock_out_date: str | None = Field(
        description="The UTC day the stock runs out at that rate; null when nothing sells or it is after 9999-12-31."
    )
