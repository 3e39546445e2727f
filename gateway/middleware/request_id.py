"""Request IDs: keep a well-formed X-Request-ID from the client or make one, send it upstream, return it."""
from __future__ import annotations

import re
from random import getrandbits
from typing import ClassVar

from pydantic import Field

from gateway.exchange import Exchange, Reply
from gateway.logs import request_id_var
from gateway.middleware.base import Handler, Middleware, MiddlewareConfig

NAME = "request_id"
PRIORITY = 10_000


class RequestIdConfig(MiddlewareConfig):
    header: str = Field("X-Request-ID", pattern=r"^[A-Za-z0-9-]+$", description="Header carrying the ID both ways.")
    trust_client: bool = Field(True, description="Keep a well-formed ID sent by the client instead of making one.")
    pattern: str = Field(
        r"^[A-Za-z0-9._:-]{1,128}$",
        description="What a client-sent ID must look like to be kept (anything else is replaced).",
    )
    prefix: str = Field("req_", pattern=r"^[A-Za-z0-9_-]{0,16}$", description="Prefix of generated IDs.")


class RequestIdMiddleware(Middleware):
    NAME: ClassVar[str] = NAME
    PRIORITY: ClassVar[int] = PRIORITY
    Config: ClassVar[type[MiddlewareConfig]] = RequestIdConfig
    ENABLED_BY_DEFAULT: ClassVar[bool] = True
    EDGE: ClassVar[bool] = True

    def __init__(self, config: RequestIdConfig, context) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config, context)
        self.header = config.header
        self.trust_client = config.trust_client
        self.valid = re.compile(config.pattern).fullmatch
        self.prefix = config.prefix

    def new_id(self) -> str:
        # 96 random bits from the process's PRNG: unique enough to correlate logs, and no system call
        # per request (a request ID is not a secret).
        return f"{self.prefix}{getrandbits(96):024x}"

    async def __call__(self, exchange: Exchange, call_next: Handler) -> Reply:
        request_id = exchange.request.headers.get(self.header) if self.trust_client else None
        if request_id is None or self.valid(request_id) is None:
            request_id = self.new_id()
        exchange.request_id = request_id
        if exchange.upstream_headers is not None:
            exchange.upstream_headers[self.header] = request_id
        exchange.response_header_overrides[self.header] = request_id
        token = request_id_var.set(request_id)
        try:
            return await call_next(exchange)
        finally:
            request_id_var.reset(token)
