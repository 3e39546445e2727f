"""Log formatting: JSON lines with the spec's keys, and the malformed-request filter."""
from __future__ import annotations

import logging
from collections.abc import Iterator

import orjson
import pytest
from aiohttp.http_exceptions import BadHttpMessage

from gateway.logs import JsonFormatter, MalformedRequestFilter, log_fields, request_id_var


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


@pytest.fixture
def root_level() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    before = root.level
    yield root
    root.setLevel(before)


def test_a_parser_rejection_becomes_one_info_line_without_traceback(root_level: logging.Logger) -> None:
    root_level.setLevel(logging.INFO)
    record = _record(logging.ERROR, "Error handling request from %s", BadHttpMessage("Invalid header token"))
    assert MalformedRequestFilter().filter(record) is True
    assert (record.levelno, record.exc_info) == (logging.INFO, None)
    assert record.getMessage() == "rejected a request the HTTP parser could not read: Invalid header token"


def test_a_parser_rejection_is_dropped_when_info_is_off(root_level: logging.Logger) -> None:
    root_level.setLevel(logging.WARNING)
    record = _record(logging.ERROR, "Error handling request", BadHttpMessage("bad"))
    assert MalformedRequestFilter().filter(record) is False


def test_other_server_errors_keep_their_traceback(root_level: logging.Logger) -> None:
    root_level.setLevel(logging.WARNING)
    record = _record(logging.ERROR, "Error handling request", RuntimeError("a real bug"))
    assert MalformedRequestFilter().filter(record) is True
    assert record.levelno == logging.ERROR and record.exc_info is not None
