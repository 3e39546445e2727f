"""payment-service's own settings (PAYMENT_* environment variables)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from gateway.units import Duration
from services.kit import EnvConfig


class PaymentConfig(EnvConfig):
    env_prefix: ClassVar[str] = "PAYMENT_"

    fail_above_cents: int | None = Field(
        None,
        ge=0,
        description="The simulated processor declines amounts above this many cents (amount_over_limit); "
        "unset: no limit. It always declines amounts whose cents end in 13 (card_declined).",
    )
    idempotency_ttl: Duration = Field(
        86400.0,
        ge=60,
        description="How long an Idempotency-Key of POST /payments is remembered; after it the key is free again.",
    )
    idempotency_lease: Duration = Field(
        300.0,
        ge=1,
        description="How long the first request with an Idempotency-Key may take before a retry with the key "
        "takes it over (the first one died in a crash); the processor's idempotency key keeps the charge single.",
    )
