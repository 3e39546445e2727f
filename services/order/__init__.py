"""order-service (port 3003): orders of one seller's products, their payment status, built on services.kit."""
from __future__ import annotations

from services.order.service import SERVICE

__all__ = ["SERVICE"]
