"""broadcast-service's own settings (BROADCAST_* environment variables)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from gateway.units import Duration
from services.kit import EnvConfig


class BroadcastConfig(EnvConfig):
    env_prefix: ClassVar[str] = "BROADCAST_"

    scheduler_interval: Duration = Field(
        5.0, gt=0, le=300, description="How often the scheduler looks for scheduled campaigns that are due."
    )
    batch_size: int = Field(
        500, ge=1, le=5000, description="Recipients per broadcast.requested event (one campaign may need several)."
    )
