"""notification-service's own settings (NOTIFY_* environment variables)."""
from __future__ import annotations

from typing import ClassVar, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator

from gateway.units import Duration
from services.kit import EnvConfig


class NotifyConfig(EnvConfig):
    env_prefix: ClassVar[str] = "NOTIFY_"

    provider: Literal["log", "http"] = Field(
        "log",
        description="Who delivers messages: log (record and log them, the default) or http (POST to NOTIFY_HTTP_URL).",
    )
    http_url: str | None = Field(None, description="Endpoint the http provider posts each message to (JSON).")
    http_token: SecretStr | None = Field(
        None, description="Bearer token sent to NOTIFY_HTTP_URL, if the endpoint wants one (never logged)."
    )
    http_timeout: Duration = Field(5.0, gt=0, le=60, description="Total timeout of one post to NOTIFY_HTTP_URL.")
    max_attempts: int = Field(5, ge=1, le=50, description="Sends of one message before it is given up as failed.")
    retry_delay: Duration = Field(
        30.0, ge=0, description="Wait before the second send of a failed message; doubled for each further one."
    )
    poll_interval: Duration = Field(
        1.0, gt=0, le=60, description="How often the dispatcher looks for messages that are due."
    )
    concurrency: int = Field(10, ge=1, le=100, description="Messages sent to the provider at once.")

    @field_validator("http_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _needs_url(self) -> Self:
        if self.provider == "http" and not self.http_url:
            raise ValueError("NOTIFY_PROVIDER=http needs NOTIFY_HTTP_URL")
        return self
