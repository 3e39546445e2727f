"""ai-service (port 8000): recommendations and demand forecasts from the platform's own orders and products."""
from __future__ import annotations

from services.ai.service import SERVICE

__all__ = ["SERVICE"]
