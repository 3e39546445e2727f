"""order-service's own settings (ORDER_* environment variables)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from gateway.units import Duration
from services.kit import EnvConfig


class OrderConfig(EnvConfig):
    env_prefix: ClassVar[str] = "ORDER_"

    product_timeout: Duration = Field(
        3.0,
        gt=0,
        le=60,
        description="Total timeout of the call to product-service that checks a new order's items; past it "
        "the order is refused with 503.",
    )
