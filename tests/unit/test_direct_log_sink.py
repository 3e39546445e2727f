"""The access log's direct JSON sink writes the line JsonFormatter would write."""
from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from gateway import logs
from gateway.envelope import utc_timestamp


class _Stdout(io.TextIOWrapper):
    def isatty(self) -> bool:
        return False


@pytest.fixture
def stdout() -> Iterator[_Stdout]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = _Stdout(io.BytesIO(), encoding="utf-8", write_through=True)
    yield stream
    root.handlers[:], level = saved
    root.setLevel(level)
    logs._direct_sink = None


def _lines(stream: _Stdout) -> list[dict[str, object]]:
    stream.flush()
    raw = stream.buffer.getvalue()  # type: ignore[attr-defined]
    return [orjson.loads(line) for line in raw.splitlines()]


def test_the_direct_line_matches_the_formatted_one(stdout: _Stdout) -> None:
    logs.configure_logging("INFO", "api-gateway", stdout)
    sink = logs.direct_sink()
    assert sink is not None
    fields = {"method": "GET", "path": "/x", "status": 200}
    logging.getLogger("gateway.access").info("GET /x 200", extra=logs.log_fields(**fields))
    sink.write("info", "GET /x 200", None, fields)
    formatted, direct = _lines(stdout)
    assert formatted.pop("timestamp") and direct.pop("timestamp")
    assert formatted == direct


def test_timestamps_match_utc_timestamp() -> None:
    sink = logs.DirectJsonSink(logging.Handler(), io.BytesIO(), "svc")
    for epoch in (0.0, 1_700_000_000.9994, 1_700_000_001.0, 1_732_400_000.5):
        assert sink.timestamp(epoch) == utc_timestamp(epoch)


def test_no_direct_sink_once_other_handlers_join(stdout: _Stdout) -> None:
    logs.configure_logging("INFO", "api-gateway", stdout)
    assert logs.direct_sink() is not None
    logging.getLogger().addHandler(logging.NullHandler())
    assert logs.direct_sink() is None


def test_no_direct_sink_on_a_terminal_or_a_text_only_stream() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure_logging("INFO", "api-gateway", io.StringIO())
        assert logs.direct_sink() is None
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


class _CountingStream(io.BytesIO):
    writes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(data)


def test_the_lines_of_one_tick_leave_in_one_write() -> None:
    import asyncio

    stream = _CountingStream()
    sink = logs.DirectJsonSink(logging.Handler(), stream, "api-gateway")

    async def tick() -> None:
        for number in range(5):
            sink.write("info", f"GET /{number} 200", None, {"status": 200})
        assert stream.writes == 0  # nothing yet: the tick is not over
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(tick())
    assert stream.writes == 1
    assert [orjson.loads(line)["message"] for line in stream.getvalue().splitlines()] == [
        f"GET /{number} 200" for number in range(5)
    ]


def test_one_millisecond_formats_once_and_the_next_one_anew() -> None:
    sink = logs.DirectJsonSink(logging.Handler(), io.BytesIO(), "svc")
    assert sink.timestamp(1_700_000_000.1231) == sink.timestamp(1_700_000_000.1239) == "2023-11-14T22:13:20.123Z"
    assert sink.timestamp(1_700_000_000.1241) == "2023-11-14T22:13:20.124Z"
    assert sink.timestamp(1_700_000_001.1241) == "2023-11-14T22:13:21.124Z"  # same millisecond, next second
