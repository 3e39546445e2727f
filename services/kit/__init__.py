"""The services' shared kit: declare a service once, get an aiohttp app with the spec's envelopes, JWT
checks, request IDs, JSON logs, metrics, health, SQLite with migrations, and events through an outbox.

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
from services.kit.models import CamelModel
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
    "Database",
    "EnvConfig",
    "Event",
    "EventContext",
    "EventHandler",
    "Forbidden",
    "GatewayError",
    "GatewayTimeout",
    "InternalError",
    "Migration",
    "NotFound",
    "Ok",
    "Reply",
    "Result",
    "Routes",
    "Row",
    "Runtime",
    "Service",
    "ServiceCallFailed",
    "ServiceClient",
    "ServiceReply",
    "ServiceSettings",
    "ServiceUnavailable",
    "Transaction",
    "Unauthorized",
    "ValidationFailed",
    "build_app",
    "load_service_settings",
    "ok",
]
