"""Requests the HTTP parser rejects still get the error envelope, from a real gateway process."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.process.helpers import json_lines
from tests.support import GatewayProcess, free_port, service, write_registry

pytestmark = pytest.mark.slow

CASES = {
    "bad-header-token": b"GET /api/v1/x HTTP/1.1\r\nHost: gw\r\nBad Header\r\n\r\n",
    "header-over-8k": b"GET /api/v1/x HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
    "content-length-and-chunked": (
        b"POST /api/v1/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "tls-on-plain-port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 32 + b"\r\n\r\n",
}


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5.0)  # the gateway closes after such an answer
    finally:
        writer.close()
        await writer.wait_closed()


async def test_parser_rejections_are_enveloped_and_logged_once(
    tmp_path: Path, gateway_process: Callable[..., GatewayProcess]
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    registry = write_registry(tmp_path / "registry.yaml", {"x": service([nowhere], "/api/v1/x")})
    gw = gateway_process(registry)
    for name, request in CASES.items():
        raw = await _exchange(gw.port, request)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"400", (name, raw[:200])
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
        assert headers[b"Content-Type"] == b"application/json; charset=utf-8", name
        assert headers[b"Server"] == b"kadai-gateway", name
        envelope = orjson.loads(body)
        assert envelope["success"] is False and envelope["statusCode"] == 400, name
        assert envelope["error"].startswith("Bad Request: "), name
        assert envelope["requestId"] == headers[b"X-Request-ID"].decode(), name
        assert "aaaa" not in envelope["error"]  # no echo of the client's bytes

    raw = await _exchange(gw.port, b"GET /api/v1/health HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200")  # and it keeps serving
    rejections = [r for r in json_lines(gw.output()) if "HTTP parser" in r.get("message", "")]
    assert len(rejections) == len(CASES)
    assert all(r["level"] == "info" and "exception" not in r and r["requestId"].startswith("req_") for r in rejections)
    assert "Traceback" not in gw.output()
