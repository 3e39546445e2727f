"""ai-service's own settings (AI_* environment variables)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from services.kit import EnvConfig


class AiConfig(EnvConfig):
    env_prefix: ClassVar[str] = "AI_"

    forecast_days: int = Field(
        28, ge=7, le=365, description="Days of order history a forecast looks at unless the request says otherwise."
    )
    smoothing_alpha: float = Field(
        0.3, gt=0, le=1, description="Weight of the newest day in exponential smoothing (higher: reacts faster)."
    )
    recommendations: int = Field(
        5, ge=1, le=50, description="Recommendations returned unless the request says otherwise."
    )
