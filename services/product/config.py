"""product-service's own settings (PRODUCT_* environment variables)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from services.kit import EnvConfig


class ProductConfig(EnvConfig):
    env_prefix: ClassVar[str] = "PRODUCT_"

    low_stock_threshold: int = Field(
        5,
        ge=0,
        le=1_000_000,
        description="Stock level at or below which a product is low on stock, for products created without "
        "their own lowStockThreshold.",
    )
    default_currency: str = Field(
        "USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 currency of products created without one."
    )
