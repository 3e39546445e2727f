"""user-service's request bodies and replies (camelCase on the wire)."""
from __future__ import annotations

import re
import sqlite3
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from services.kit import CamelModel

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")

Role = Literal["customer", "seller", "admin"]


def _email(value: str) -> str:
    value = value.strip().lower()
    if len(value) > 254 or not _EMAIL.match(value):
        raise ValueError("not a valid email address")
    return value


Email = Annotated[str, AfterValidator(_email)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Password = Annotated[str, Field(min_length=8, max_length=128)]


class RegisterIn(CamelModel):
    email: Email
    password: Password
    name: Name
    role: Role = Field("customer", description="customer or seller; admin only when an admin registers the account.")


class LoginIn(CamelModel):
    email: Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=254)]
    password: Annotated[str, Field(min_length=1, max_length=128)]


class RefreshIn(CamelModel):
    refresh_token: Annotated[str, Field(min_length=1, max_length=256)]


class ProfilePatch(CamelModel):
    name: Name | None = None
    email: Email | None = None
    password: Password | None = None
    current_password: Annotated[str, Field(min_length=1, max_length=128)] | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.name is None and self.email is None and self.password is None:
            raise ValueError("nothing to change: send name, email or password")
        return self

    @property
    def needs_current_password(self) -> bool:
        """A stolen access token alone must not take over the account: email and password need it."""
        return self.email is not None or self.password is not None


class UserOut(CamelModel):
    id: str
    email: str
    name: str
    role: Role
    created_at: str
    updated_at: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> UserOut:
        return cls(
            id=row["id"],
            email=row["email"],
            name=row["name"],
            role=row["role"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


class TokensOut(CamelModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="Seconds the access token is valid.")
    user: UserOut


class ServiceTokenOut(CamelModel):
    """What POST /service-tokens answers: an OAuth2-style client-credentials token response."""

    access_token: str = Field(description='A service token: sub "service:<name>", role "service".')
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int = Field(description="Seconds the token is valid (KADAI_SERVICE_TOKEN_TTL).")
