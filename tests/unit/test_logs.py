"""Log formatting: JSON lines with the spec's keys."""
from __future__ import annotations

import logging

import orjson

from gateway.logs import JsonFormatter, log_fields, request_id_var


def _record(level: int, message: str, exc: BaseException | None = None, **fields: object) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    record = logging.LogRecord("t", level, __file__, 1, message, (), exc_info)
    if fields:
        record.fields = fields  # type: ignore[attr-defined]
    return record


def test_json_line_has_the_spec_keys_and_the_bound_request_id() -> None:
    token = request_id_var.set("req_abc")
    try:
        line = orjson.loads(JsonFormatter("api-gateway").format(_record(logging.INFO, "hello", duration=12)))
    finally:
        request_id_var.reset(token)
    assert list(line)[:5] == ["timestamp", "level", "service", "requestId", "message"]
    assert (line["level"], line["service"], line["requestId"], line["message"]) == (
        "info", "api-gateway", "req_abc", "hello"
    )
    assert line["duration"] == 12
    assert line["timestamp"].endswith("Z")


def test_event_fields_cannot_overwrite_the_spec_keys() -> None:
    record = _record(logging.INFO, "hello")
    record.fields = log_fields(service="someone-else", message="forged", extra=1)["fields"]  # type: ignore[attr-defined]
    line = orjson.loads(JsonFormatter("api-gateway").format(record))
    assert (line["service"], line["message"], line["extra"]) == ("api-gateway", "hello", 1)
