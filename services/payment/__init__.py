"""payment-service (port 3004): charges orders through a pluggable processor, built on services.kit."""
from __future__ import annotations

from services.payment.service import SERVICE

__all__ = ["SERVICE"]
