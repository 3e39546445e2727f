"""The spec's wire format: success and error envelopes, camelCase on the wire."""
from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson


def utc_timestamp(epoch: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds, e.g. 2024-07-05T14:30:00.123Z."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def success_body(data: Any, request_id: str | None, message: str | None = None) -> bytes:
    body: dict[str, Any] = {"success": True, "data": data}
    if message is not None:
        body["message"] = message
    body["timestamp"] = utc_timestamp()
    body["requestId"] = request_id
    return orjson.dumps(body)


def error_body(status: int, message: str, request_id: str | None, details: Any = None) -> bytes:
    body: dict[str, Any] = {
        "success": False,
        "error": message,
        "statusCode": status,
        "timestamp": utc_timestamp(),
        "requestId": request_id,
    }
    if details is not None:
        body["details"] = details
    return orjson.dumps(body)


def success_envelope_schema(data: dict[str, Any] | None = None, description: str | None = None) -> dict[str, Any]:
    """JSON Schema of what success_body writes; `data` describes the answer itself (anything when None)."""
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["success", "data", "timestamp", "requestId"],
        "properties": {
            "success": {"const": True},
            "data": data if data is not None else {"description": "The answer itself."},
            "message": {"type": "string"},
            "timestamp": {"type": "string", "format": "date-time"},
            "requestId": {"type": ["string", "null"]},
        },
    }
    if description:
        schema["description"] = description
    return schema


def error_envelope_schema(description: str | None = None) -> dict[str, Any]:
    """JSON Schema of what error_body writes."""
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["success", "error", "statusCode", "timestamp", "requestId"],
        "properties": {
            "success": {"const": False},
            "error": {"type": "string"},
            "statusCode": {"type": "integer"},
            "timestamp": {"type": "string", "format": "date-time"},
            "requestId": {"type": ["string", "null"]},
            "details": {"description": "What failed, when there is more to say: for 422, a list of {field, message, type}."},
        },
    }
    if description:
        schema["description"] = description
    return schema
