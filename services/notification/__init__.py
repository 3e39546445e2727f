"""notification-service (port 3005): SMS about orders, payments and low stock, and broadcast messages."""
from __future__ import annotations

from services.notification.service import SERVICE

__all__ = ["SERVICE"]
