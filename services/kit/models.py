"""Request and response models: snake_case in Python, camelCase on the wire (pydantic v2).

`parse_model` turns a validation failure into a 422 whose details name each failing field as the
client wrote it (camelCase path such as items[0].unitPrice).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints, ValidationError
from pydantic.alias_generators import to_camel

from gateway.config.errors import field_path
from services.kit.errors import ValidationFailed

M = TypeVar("M", bound=BaseModel)


class CamelModel(BaseModel):
    """Base of request bodies and replies: fields are written camelCase on the wire, unknown ones refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class EventPayload(BaseModel):
    """An event's data as a consumer reads it: camelCase keys, fields it does not use ignored (publishers
    may add more)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


def text_id(value: object) -> object:
    """Services may number their rows (product 7) or name them (user_ab12): both become text."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


ReferenceId = Annotated[str, BeforeValidator(text_id), StringConstraints(min_length=1, max_length=128)]
"""Another service's id as an event carries it."""


def validation_details(error: ValidationError) -> list[dict[str, str]]:
    """One {"field", "message", "type"} per failing field; field is the path as sent, "(body)" for the whole."""
    details = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        details.append(
            {
                "field": field_path(item["loc"]) or "(body)",
                "message": item["msg"].removeprefix("Value error, "),
                "type": item["type"],
            }
        )
    return details


def parse_model(model: type[M], data: Any | Mapping[str, Any]) -> M:
    """Validate data into model; ValidationFailed (422) with the failing fields otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(details=validation_details(exc)) from None
