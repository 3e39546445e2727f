"""product-service (port 3002): the product catalogue, stock and order reservations, built on services.kit."""
from __future__ import annotations

from services.product.service import SERVICE

__all__ = ["SERVICE"]
