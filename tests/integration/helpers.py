"""Helpers of the integration tests: a recording upstream, a raw HTTP/1.1 client, envelope checks."""
from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from gateway.app import Gateway
from tests.support import service, write_registry

StartUpstream = Callable[[web.Application], Awaitable[str]]
Client = TestClient[Any, Any]
GatewayClient = Callable[[Path], Awaitable[Client]]

GENERATED_ID = re.compile(r"^req_[0-9a-f]{24}$")
JSON_TYPE = "application/json; charset=utf-8"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def users_registry(path: Path, *urls: str, **options: Any) -> Path:
    """The common registry: user-service on /api/v1/users at the given instances, with route options."""
    return write_registry(path, {"user-service": service(list(urls), "/api/v1/users", **options)})


@dataclass(frozen=True)
class Received:
    """One request as an upstream saw it."""

    method: str
    raw_path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass
class Recorder:
    """An upstream that records every request and echoes it back as JSON (name, method, rawPath, headers)."""

    name: str
    url: str = ""
    received: list[Received] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        seen = Received(request.method, request.raw_path, tuple(request.headers.items()), body)
        self.received.append(seen)
        return web.json_response(
            {
                "upstream": self.name,
                "method": request.method,
                "rawPath": request.raw_path,
                "headers": [list(item) for item in request.headers.items()],
                "bodySha256": hashlib.sha256(body).hexdigest(),
                "bodyLength": len(body),
            }
        )

    @property
    def paths(self) -> list[str]:
        return [seen.raw_path for seen in self.received]

    @property
    def last(self) -> Received:
        assert self.received, f"{self.name} received no request"
        return self.received[-1]


StartRecorder = Callable[[str], Awaitable[Recorder]]
ServeGateway = Callable[[Path], Awaitable[tuple[str, Gateway]]]


@dataclass(frozen=True)
class RawResponse:
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes
    """The body as framed on the wire, de-chunked; no decompression."""

    def json(self) -> Any:
        return orjson.loads(self.body)


async def raw_exchange(client: Client, request: bytes, timeout: float = 10.0) -> RawResponse:
    """Send bytes exactly as given to the gateway and read one response up to the closed connection."""
    assert client.server.host is not None and client.server.port is not None
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        await writer.wait_closed()
    return parse_response(data)


async def raw_request(
    client: Client,
    target: str,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    host: str | None = None,
) -> RawResponse:
    """A minimal HTTP/1.1 request with exactly the headers given (plus Host, Connection: close, Content-Length)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host or f'{client.server.host}:{client.server.port}'}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    return await raw_exchange(client, head + body)


def parse_response(data: bytes) -> RawResponse:
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:200]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    _, status, reason = (status_line.split(" ", 2) + [""])[:3]
    headers: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    body = _dechunk(rest) if headers.get("Transfer-Encoding", "").lower() == "chunked" else rest
    return RawResponse(int(status), reason, headers, body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += data[:size]
        data = data[size + 2 :]


def assert_error_envelope(body: Any, status: int, request_id: str | None = None) -> None:
    """The spec's error envelope: success false, error, statusCode (= HTTP status), timestamp, requestId."""
    assert isinstance(body, dict), body
    assert body["success"] is False
    assert isinstance(body["error"], str) and body["error"]
    assert body["statusCode"] == status
    assert TIMESTAMP.match(body["timestamp"]), body["timestamp"]
    assert isinstance(body["requestId"], str) and body["requestId"]
    if request_id is not None:
        assert body["requestId"] == request_id


def assert_success_envelope(body: Any, request_id: str | None = None) -> Any:
    """The spec's success envelope; returns its data."""
    assert isinstance(body, dict), body
    assert body["success"] is True
    assert "data" in body
    assert TIMESTAMP.match(body["timestamp"]), body["timestamp"]
    assert isinstance(body["requestId"], str) and body["requestId"]
    if request_id is not None:
        assert body["requestId"] == request_id
    return body["data"]


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus exposition (0.0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        metric, _, label_text = sample.partition("{")
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text))
        if all(found.get(key) == wanted for key, wanted in labels.items()):
            return float(value)
    return 0.0
