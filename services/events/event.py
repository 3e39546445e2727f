"""A domain event as it travels: id, type, source service, timestamp, request ID and data (JSON, camelCase)."""
from __future__ import annotations

import os
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from gateway.envelope import utc_timestamp


def new_event_id() -> str:
    return "evt_" + os.urandom(16).hex()


class MalformedEvent(ValueError):
    """A message body that is not an event: never retried, dead-lettered at once."""


class Event(BaseModel):
    """One domain event. `id` is unique: consumers use it to ignore a second delivery."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")

    id: str = Field(min_length=1, max_length=128)
    type: str = Field(min_length=1, max_length=128)
    source: str = Field(min_length=1, max_length=64, description="Name of the publishing service.")
    timestamp: str = Field(description="ISO 8601 UTC time the event was published (committed).")
    request_id: str | None = Field(None, description="X-Request-ID of the request that caused it.")
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def create(cls, type: str, source: str, data: dict[str, Any], request_id: str | None = None) -> Event:  # noqa: A002
        return cls(
            id=new_event_id(), type=type, source=source, timestamp=utc_timestamp(), request_id=request_id, data=data
        )

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True))

    @classmethod
    def from_json(cls, body: bytes) -> Event:
        """Parse a message body; MalformedEvent when it is not JSON or not an event."""
        try:
            return cls.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError) as exc:
            raise MalformedEvent(f"not an event: {str(exc).splitlines()[0][:200]}") from None
