"""Process-wide resources shared by the dispatcher, the middleware and the admin endpoints."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from gateway.config.settings import Settings
from gateway.telemetry import GatewayMetrics

if TYPE_CHECKING:
    from gateway.reload import ReloadStatus


@dataclass(slots=True)
class Resources:
    settings: Settings
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    started_at: float = field(default_factory=time.time)
    session: aiohttp.ClientSession | None = None
    """The one upstream ClientSession of this process; open while the app runs."""
    draining: bool = False
    """Set once shutdown starts: health answers 503 so load balancers stop sending traffic."""
    reload_status: ReloadStatus | None = None
