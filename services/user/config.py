"""user-service's own settings (USER_* environment variables)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from gateway.units import Duration
from services.kit import EnvConfig


class UserConfig(EnvConfig):
    env_prefix: ClassVar[str] = "USER_"

    access_token_ttl: Duration = Field(3600.0, ge=60, le=86400, description="Lifetime of access tokens (JWT).")
    refresh_token_ttl: Duration = Field(
        30 * 86400.0, ge=300, description="Lifetime of refresh tokens; each use replaces the token."
    )
    scrypt_cost: int = Field(
        15,
        ge=10,
        le=20,
        description="log2 of scrypt's N for new password hashes (15: 32 MiB and about 0.1 s per hash). "
        "Existing hashes keep their own parameters and are upgraded at the next login.",
    )
