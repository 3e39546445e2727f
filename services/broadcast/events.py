"""The broadcast.requested event: broadcast-service asks notification-service to message recipients.

It is not one of the spec's types (services/events/types.py), so it is defined here, beside its publisher:

    broadcast.requested  {campaignId, senderId, message, recipients: [str, ...]}

A campaign's recipients travel in batches of BROADCAST_BATCH_SIZE, one event each. A recipient is a
user ID (notification-service finds the user's address), an E.164 phone number or an email address.
"""
from __future__ import annotations

import re
from typing import Literal

from services.events.types import check_type

BROADCAST_REQUESTED = check_type("broadcast.requested")

PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
"""E.164: a plus, the country code and up to 15 digits in all."""
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

RecipientKind = Literal["phone", "email", "user"]


def recipient_kind(value: str) -> RecipientKind | None:
    """What a recipient string names: a phone number, an email address, a user ID; None for none of them."""
    if PHONE.match(value):
        return "phone"
    if len(value) <= 254 and EMAIL.match(value):
        return "email"
    if USER_ID.match(value):
        return "user"
    return None
