"""Errors the gateway answers with itself. Each carries its status, message, details and headers,
and is rendered into the spec's error envelope in exactly one place (Exchange.error_reply).

    GatewayError
    ├── BadRequest (400)            malformed request target or path
    ├── Unauthorized (401)          missing, malformed, expired or badly signed token
    ├── Forbidden (403)             client network not allowed, or a role the token lacks
    ├── NotFound (404)              no route
    ├── MethodNotAllowed (405)      a gateway endpoint called with the wrong method
    ├── PayloadTooLarge (413)       body over the route's max_body_size
    ├── ExpectationFailed (417)     an Expect header other than 100-continue
    ├── TooManyRequests (429)       a rate-limit tier is spent
    ├── ClientClosedRequest (499)   the client went away mid-request (logged, never seen by it)
    ├── InternalError (500)         a bug; details never leak
    ├── BadGateway (502)            instance unreachable, reset, or broken response
    ├── ServiceUnavailable (503)    no healthy instance, or the gateway is draining
    └── GatewayTimeout (504)        upstream too slow
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class GatewayError(Exception):
    status: int = 500
    default_message: str = "Internal Server Error"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.details = details
        self.headers = dict(headers or {})
        super().__init__(self.message)


class BadRequest(GatewayError):
    status = 400
    default_message = "Bad Request"


class Unauthorized(GatewayError):
    status = 401
    default_message = "Unauthorized"


class Forbidden(GatewayError):
    status = 403
    default_message = "Forbidden"


class NotFound(GatewayError):
    status = 404
    default_message = "Not Found"


class MethodNotAllowed(GatewayError):
    status = 405
    default_message = "Method Not Allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    default_message = "Request body too large"


class ExpectationFailed(GatewayError):
    status = 417
    default_message = "Expectation Failed"


class TooManyRequests(GatewayError):
    status = 429
    default_message = "Too Many Requests"


class ClientClosedRequest(GatewayError):
    status = 499
    default_message = "Client Closed Request"


class InternalError(GatewayError):
    status = 500
    default_message = "Internal Server Error"


class BadGateway(GatewayError):
    status = 502
    default_message = "Bad Gateway: the service could not be reached"


class ServiceUnavailable(GatewayError):
    status = 503
    default_message = "Service Unavailable"


class GatewayTimeout(GatewayError):
    status = 504
    default_message = "Gateway Timeout: the service did not answer in time"
