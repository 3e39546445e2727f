"""Demand forecasting from daily unit counts: simple exponential smoothing, a least-squares trend, and the
days until the current stock runs out.

    level_0 = mean(x_1 .. x_n)                      (so a short history does not start from one day)
    level_t = alpha * x_t + (1 - alpha) * level_{t-1}
    forecast per day = level_n                      (flat: the same for every coming day)
    days until stock-out = stock / level_n          (none when the level is 0 or the stock unknown)
    trend = least-squares slope of x over t         (units per day per day; reported, not projected)

Limits: no weekly or yearly seasonality; the projection is flat, so a product taking off or fading is
seen late (the trend says which way it goes); days when the product was sold out look like days
without demand, which understates it; prices and promotions are not taken into account.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def smoothed_level(series: Sequence[float], alpha: float) -> float:
    """The level of simple exponential smoothing after the last value; 0 for an empty series."""
    if not 0 < alpha <= 1:
        raise ValueError("alpha must be in (0, 1]")
    if not series:
        return 0.0
    level = sum(series) / len(series)
    for value in series:
        level = alpha * value + (1 - alpha) * level
    return level


def linear_trend(series: Sequence[float]) -> float:
    """Least-squares slope of the values over their positions 0, 1, 2 ...; 0 with fewer than two."""
    count = len(series)
    if count < 2:
        return 0.0
    mean_x, mean_y = (count - 1) / 2, sum(series) / count
    spread = sum((x - mean_x) ** 2 for x in range(count))
    return sum((x - mean_x) * (y - mean_y) for x, y in enumerate(series)) / spread


def days_until_stock_out(stock: int | None, daily: float) -> float | None:
    """Days the stock lasts at the daily rate; None when either is unknown or nothing sells."""
    if stock is None or daily <= 0:
        return None
    return max(stock, 0) / daily


@dataclass(frozen=True, slots=True)
class Forecast:
    daily: float
    trend: float
    days_until_stock_out: float | None


def forecast(series: Sequence[float], stock: int | None, alpha: float) -> Forecast:
    daily = smoothed_level(series, alpha)
    return Forecast(daily=daily, trend=linear_trend(series), days_until_stock_out=days_until_stock_out(stock, daily))
