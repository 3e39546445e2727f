"""Errors a service handler raises to answer with the spec's error envelope.

The gateway's tree (gateway/errors.py) plus what only services say. Raise any of them from a handler;
the kit renders it once, in the outermost middleware:

    GatewayError
    ├── BadRequest (400)            invalid JSON, a body that is not UTF-8
    ├── Unauthorized (401)          no token, or a token that does not verify
    ├── Forbidden (403)             a role the route does not allow
    ├── NotFound (404)              no route, or no such resource
    ├── MethodNotAllowed (405)
    ├── Conflict (409)              a unique value taken (an email, a name)
    ├── ValidationFailed (422)      fields that fail validation; details lists them
    ├── InternalError (500)         a bug; details never leak
    ├── BadGateway (502)            another service failed or could not be reached
    ├── ServiceUnavailable (503)
    └── GatewayTimeout (504)        another service did not answer in time
"""
from __future__ import annotations

from gateway.errors import (
    BadGateway,
    BadRequest,
    Forbidden,
    GatewayError,
    GatewayTimeout,
    InternalError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)

__all__ = [
    "BadGateway",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "GatewayError",
    "GatewayTimeout",
    "InternalError",
    "MethodNotAllowed",
    "NotFound",
    "ServiceUnavailable",
    "Unauthorized",
    "ValidationFailed",
]


class Conflict(GatewayError):
    status = 409
    default_message = "Conflict"


class ValidationFailed(GatewayError):
    """details: a list of {"field", "message", "type"}, one per failing field (camelCase paths)."""

    status = 422
    default_message = "Validation failed"
