"""broadcast-service's request bodies, event payloads and replies (camelCase on the wire)."""
from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import Annotated, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
)

from services.broadcast.events import recipient_kind
from services.kit import CamelModel, EventPayload, PageInfo, PageQuery, text_id

Status = Literal["draft", "scheduled", "sending", "sent"]
ALL_CUSTOMERS = "all-customers"
MAX_RECIPIENTS = 10_000


def _audience(value: object) -> str | list[str]:
    """ "all-customers", or a list of recipients (stripped); one error that names every bad entry."""
    if value == ALL_CUSTOMERS:
        return ALL_CUSTOMERS
    if not isinstance(value, list):
        raise ValueError('expected "all-customers" or a list of recipients')
    if not 1 <= len(value) <= MAX_RECIPIENTS:
        raise ValueError(f"expected 1 to {MAX_RECIPIENTS} recipients, got {len(value)}")
    recipients = [item.strip() if isinstance(item, str) else item for item in value]
    bad = [str(index) for index, item in enumerate(recipients) if not isinstance(item, str) or not recipient_kind(item)]
    if bad:
        raise ValueError(
            f"recipients [{', '.join(bad[:10])}{', ...' if len(bad) > 10 else ''}] are neither a user ID, "
            "an E.164 phone number (+4917...) nor an email address"
        )
    return recipients


Audience = Annotated[
    str | list[str],
    PlainValidator(_audience),
    WithJsonSchema(
        {
            "oneOf": [
                {"const": ALL_CUSTOMERS},
                {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_RECIPIENTS},
            ]
        }
    ),
]


def _in_utc(moment: datetime) -> datetime:
    """The moment in UTC, as it is stored; one that falls outside years 1-9999 there is refused (422)."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None


class BroadcastIn(CamelModel):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    message: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1600)]
    audience: Audience = Field(
        description='"all-customers" (resolved when the campaign is sent) or a list of user IDs, E.164 phone '
        "numbers and email addresses."
    )
    scheduled_at: Annotated[AwareDatetime, AfterValidator(_in_utc)] | None = Field(
        None, description="When to send (ISO 8601 with a zone, in the future); without it the campaign is a draft."
    )


class BroadcastQuery(PageQuery):
    status: Status | None = None
    owner_id: str | None = Field(None, max_length=128, description="Admins only: the campaigns of one owner.")


Payload = EventPayload


class UserChanged(Payload):
    user_id: Annotated[str, BeforeValidator(text_id)]
    email: str | None = None
    role: str | None = None


class NotificationOutcome(Payload):
    notification_id: Annotated[str, BeforeValidator(text_id)]
    campaign_id: str | None = None


class Counts(CamelModel):
    recipients: int
    delivered: int
    failed: int
    pending: int


class BroadcastOut(CamelModel):
    id: str
    name: str
    message: str
    audience: Literal["all-customers"] | list[str]
    status: Status
    owner_id: str
    scheduled_at: str | None
    created_at: str
    updated_at: str
    requested_at: str | None = Field(description="When the messages were handed to notification-service.")
    completed_at: str | None = Field(description="When every recipient's message was sent or given up.")
    counts: Counts

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> BroadcastOut:
        audience = ALL_CUSTOMERS if row["audience"] == ALL_CUSTOMERS else orjson.loads(row["recipient_list"])
        delivered, failed = row["delivered"], row["failed"]
        return cls(
            id=row["id"],
            name=row["name"],
            message=row["message"],
            audience=audience,
            status=row["status"],
            owner_id=row["owner_id"],
            scheduled_at=row["scheduled_at"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            requested_at=row["requested_at"],
            completed_at=row["completed_at"],
            counts=Counts(
                recipients=row["recipients"],
                delivered=delivered,
                failed=failed,
                pending=max(row["recipients"] - delivered - failed, 0),
            ),
        )


class BroadcastPage(CamelModel):
    items: list[BroadcastOut]
    pagination: PageInfo


def utc_iso(moment: datetime) -> str:
    """The ISO 8601 UTC form the platform writes (2024-07-05T14:30:00.000Z)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
