"""The gateway's own upstream HTTP/1.1 client: a keep-alive connection pool on httptools (llhttp)."""
from __future__ import annotations

from gateway.upstream.errors import (
    RequestBodyLengthError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamResetError,
    UpstreamTimeout,
)
from gateway.upstream.pool import UpstreamPool
from gateway.upstream.response import UpstreamResponse

__all__ = [
    "RequestBodyLengthError",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResetError",
    "UpstreamResponse",
    "UpstreamTimeout",
]
