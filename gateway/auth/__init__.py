"""JWT verification shared by the gateway's jwt middleware and the services (defence in depth)."""
from __future__ import annotations

from gateway.auth.verifier import Claims, TokenRejected, TokenVerifier

__all__ = ["Claims", "TokenRejected", "TokenVerifier"]
