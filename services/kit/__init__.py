"""The services' shared kit: declare a service once, get an aiohttp app with the spec's envelopes, JWT
checks, request IDs, JSON logs, metrics, health, SQLite with migrations, events through an outbox, list
pagination (services/kit/paging.py) and OpenAPI fragments (services/kit/openapi.py).

Everything a service module needs is importable from here; services/README.md shows a whole service.
"""
from __future__ import annotations

from services.events.consumer import EventContext, EventHandler
from services.events.event import Event
from services.kit.app import build_app
from services.kit.client import ServiceCallFailed, ServiceClient, ServiceReply
from services.kit.config import EnvConfig
from services.kit.db import Database, Migration, Result, Row, Transaction
from services.kit.errors import (
    BadGateway,
    BadRequest,
    Conflict,
    Forbidden,
    GatewayError,
    GatewayTimeout,
    InternalError,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
)
from services.kit.identity import Caller
from services.kit.models import CamelModel, EventPayload, ReferenceId, text_id
from services.kit.openapi import (
    ERROR_ENVELOPE,
    TOKEN_REQUIRED,
    Schema,
    error,
    listed,
    path_parameter,
    query_parameters,
    reply,
    request_body,
    schema,
    wrapped,
)
from services.kit.paging import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    PAGINATION_SCHEMA,
    PageInfo,
    PageQuery,
    Pagination,
)
from services.kit.runtime import Runtime
from services.kit.service import Call, Ok, Reply, Routes, Service, ok
from services.kit.settings import ServiceSettings, load_service_settings

__all__ = [
    "BadGateway",
    "BadRequest",
    "Call",
    "Caller",
    "CamelModel",
    "Conflict",
    "DEFAULT_PAGE_SIZE",
    "Database",
    "ERROR_ENVELOPE",
    "EnvConfig",
    "Event",
    "EventContext",
    "EventHandler",
    "EventPayload",
    "Forbidden",
    "GatewayError",
    "GatewayTimeout",
    "InternalError",
    "MAX_PAGE_SIZE",
    "Migration",
    "NotFound",
    "Ok",
    "PAGINATION_SCHEMA",
    "PageInfo",
    "PageQuery",
    "Pagination",
    "ReferenceId",
    "Reply",
    "Result",
    "Routes",
    "Row",
    "Runtime",
    "Schema",
    "Service",
    "ServiceCallFailed",
    "ServiceClient",
    "ServiceReply",
    "ServiceSettings",
    "ServiceUnavailable",
    "TOKEN_REQUIRED",
    "Transaction",
    "Unauthorized",
    "ValidationFailed",
    "build_app",
    "error",
    "listed",
    "load_service_settings",
    "ok",
    "path_parameter",
    "query_parameters",
    "reply",
    "request_body",
    "schema",
    "text_id",
    "wrapped",
]
