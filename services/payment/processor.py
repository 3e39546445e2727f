"""The payment processor behind payment-service: a small Protocol, and the deterministic simulator that is
the default.

The simulator declines a charge when
  - the amount's cents end in 13 (amountCents % 100 == 13, e.g. 1013 or 113): reason "card_declined", or
  - PAYMENT_FAIL_ABOVE_CENTS is set and the amount is above it: reason "amount_over_limit";
and accepts every other charge and every refund. Its charge reference is derived from the idempotency
key, so the same charge asked twice gets the same reference, as a real processor's idempotency keys do.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from services.payment.config import PaymentConfig

DECLINED_CENTS = 13


@dataclass(frozen=True, slots=True)
class ChargeRequest:
    idempotency_key: str
    """Stable for one intended charge ("order:<orderId>", "api:<caller>:<key>"): a processor that sees it
    twice charges once (a retried event handler or request must not charge twice)."""
    order_id: str
    amount_cents: int
    currency: str


@dataclass(frozen=True, slots=True)
class ChargeResult:
    succeeded: bool
    reference: str
    """The processor's ID of the charge, declined ones included."""
    reason: str | None = None
    """Why a charge was declined (machine-readable, e.g. card_declined)."""


class PaymentProcessor(Protocol):
    name: str
    """Recorded with each payment."""

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        """Charge, or decline with a reason. Raises when the outcome is unknown (unreachable, timeout)."""

    async def refund(self, reference: str, amount_cents: int, currency: str, idempotency_key: str) -> None:
        """Give a succeeded charge back; raises when it could not. The key is the same every time the same
        refund is asked for (a handler retried after a failed commit), so the processor refunds once."""

    async def close(self) -> None:
        """Release what the processor holds (connections); called at shutdown."""


ProcessorFactory = Callable[[PaymentConfig], PaymentProcessor]
"""Builds the processor of a running payment-service from its settings."""


def decline_reason(amount_cents: int, fail_above_cents: int | None) -> str | None:
    """The simulator's rule: why it declines this amount, or None when it accepts it."""
    if amount_cents % 100 == DECLINED_CENTS:
        return "card_declined"
    if fail_above_cents is not None and amount_cents > fail_above_cents:
        return "amount_over_limit"
    return None


class SimulatedProcessor:
    name = "simulator"

    def __init__(self, fail_above_cents: int | None = None) -> None:
        self.fail_above_cents = fail_above_cents

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        reference = "sim_" + hashlib.sha256(request.idempotency_key.encode()).hexdigest()[:24]
        reason = decline_reason(request.amount_cents, self.fail_above_cents)
        return ChargeResult(succeeded=reason is None, reference=reference, reason=reason)

    async def refund(self, reference: str, amount_cents: int, currency: str, idempotency_key: str) -> None:
        return None

    async def close(self) -> None:
        return None


def simulator(config: PaymentConfig) -> PaymentProcessor:
    return SimulatedProcessor(config.fail_above_cents)
