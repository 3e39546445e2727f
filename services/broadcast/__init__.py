"""broadcast-service (port 3006): SMS campaigns, sent now or when scheduled, through notification-service."""
from __future__ import annotations

from services.broadcast.service import SERVICE

__all__ = ["SERVICE"]
