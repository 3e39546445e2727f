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
