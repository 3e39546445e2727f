"""A service's own settings: a frozen model whose fields are read from environment variables.

    class UserConfig(EnvConfig):
        env_prefix: ClassVar[str] = "USER_"
        access_token_ttl: Duration = Field(3600.0, gt=0, description="Lifetime of access tokens.")

reads USER_ACCESS_TOKEN_TTL. Declared in Service(configs=[UserConfig]), validated when the app is
built (a bad value stops the start with the variable's name), read in handlers with
call.config(UserConfig).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.config.errors import ConfigError


class EnvConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    env_prefix: ClassVar[str] = ""
    """Prefix of the variables, e.g. "USER_": field access_token_ttl is USER_ACCESS_TOKEN_TTL."""

    @classmethod
    def variable(cls, field: str) -> str:
        return cls.env_prefix + field.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Self:
        """Read the fields' variables from environ; ConfigError naming each bad variable."""
        values = {name: environ[cls.variable(name)] for name in cls.model_fields if cls.variable(name) in environ}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = []
            for item in exc.errors(include_url=False):
                where = cls.variable(str(item["loc"][0])) if item["loc"] else cls.__name__
                problems.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
            raise ConfigError("environment", problems) from None

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Variable name -> description, for documentation."""
        return {cls.variable(name): field.description or "" for name, field in cls.model_fields.items()}
