"""analytics-service (port 3007): metrics per seller and product, and platform totals, from every event."""
from __future__ import annotations

from services.analytics.service import SERVICE

__all__ = ["SERVICE"]
