"""user-service (port 3001): accounts, login, tokens, profiles. The reference service built on services.kit."""
from __future__ import annotations

from services.user.service import SERVICE

__all__ = ["SERVICE"]
