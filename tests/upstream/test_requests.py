"""What the pool writes: request line, Host, the caller's headers, its own body framing, streamed bodies."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway.upstream import RequestBodyLengthError, UpstreamPool
from tests.conftest import StartUpstream
from tests.upstream.conftest import TIMEOUTS, StartRaw, read_request, until

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def capture(raw_server: StartRaw) -> tuple[str, list[tuple[bytes, bytes]]]:
    """A server that answers "ok" to every request and records each request's head and body."""
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(OK)

    raw = await raw_server(handler)
    return raw.url, seen


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


HEADS = {
    "get-no-body": (
        "GET", None, [("Accept", "*/*")], None,
        b"GET /p?q=1 HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n", b"",
    ),
    "post-no-body-says-zero": (
        "POST", None, [], None, b"POST /p?q=1 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n", b"",
    ),
    "bytes-body-length": (
        "PUT", b"abc", [], None, b"PUT /p?q=1 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n\r\n", b"abc",
    ),
    "caller-framing-dropped": (
        "POST", b"abc",
        [("Content-Length", "99"), ("transfer-encoding", "gzip"), ("Connection", "close"), ("X-Id", "7")],
        None,
        b"POST /p?q=1 HTTP/1.1\r\nHost: {host}\r\nX-Id: 7\r\nContent-Length: 3\r\n\r\n", b"abc",
    ),
    "caller-host-kept": (
        "GET", None, [("Host", "api.example"), ("X-A", "1")], None,
        b"GET /p?q=1 HTTP/1.1\r\nHost: api.example\r\nX-A: 1\r\n\r\n", b"",
    ),
    "duplicates-and-utf8": (
        "GET", None, [("X-Tag", "a"), ("X-Tag", "b"), ("X-Name", "Zoë")], None,
        "GET /p?q=1 HTTP/1.1\r\nHost: {host}\r\nX-Tag: a\r\nX-Tag: b\r\nX-Name: Zoë\r\n\r\n".encode(), b"",
    ),
    "stream-chunked": (
        "POST", "stream", [], None,
        b"POST /p?q=1 HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n", b"hello world",
    ),
    "stream-with-length": (
        "POST", "stream", [], 11,
        b"POST /p?q=1 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 11\r\n\r\n", b"hello world",
    ),
}


# The gateway passes a CIMultiDict, which takes a path of its own; other callers pass pairs or a dict.
AS = {"pairs": list, "multidict": CIMultiDict}


@pytest.mark.parametrize("given_as", AS.values(), ids=AS.keys())
@pytest.mark.parametrize(("method", "body", "headers", "length", "head", "sent"), HEADS.values(), ids=HEADS.keys())
async def test_request_bytes(
    method: str, body: bytes | str | None, headers: list[tuple[str, str]], length: int | None,
    head: bytes, sent: bytes, given_as: type, pool: UpstreamPool, raw_server: StartRaw,
) -> None:
    url, seen = await capture(raw_server)
    payload = _chunks(b"hello", b"", b" world") if isinstance(body, str) else body
    response = await pool.request(
        url, method, "/p?q=1", given_as(headers), payload, content_length=length, **TIMEOUTS
    )
    assert await response.read() == b"ok"
    assert seen == [(head.replace(b"{host}", url.removeprefix("http://").encode()), sent)]


async def test_a_multidict_is_sent_by_its_items(pool: UpstreamPool, raw_server: StartRaw) -> None:
    url, seen = await capture(raw_server)
    headers = CIMultiDict([("Accept", "*/*"), ("X-Tag", "a"), ("x-tag", "b"), ("Connection", "keep-alive")])
    response = await pool.request(url, "GET", "/", headers, None, **TIMEOUTS)
    assert await response.read() == b"ok"
    host = url.removeprefix("http://").encode()
    assert seen[0][0] == b"GET / HTTP/1.1\r\nHost: %s\r\nAccept: */*\r\nX-Tag: a\r\nx-tag: b\r\n\r\n" % host


async def test_streamed_body_reaches_an_aiohttp_server(pool: UpstreamPool, start_upstream: StartUpstream) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=b"%s %d" % (request.headers.get("Transfer-Encoding", "-").encode(), len(body)))

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_post("/", echo)
    base = await start_upstream(app)
    big = b"x" * 65536
    response = await pool.request(base, "POST", "/", [], _chunks(*[big] * 40), **TIMEOUTS)
    assert await response.read() == b"chunked %d" % (40 * 65536)
    response = await pool.request(base, "POST", "/", [], _chunks(*[big] * 40), content_length=40 * 65536, **TIMEOUTS)
    assert await response.read() == b"- %d" % (40 * 65536)
    assert pool.stats()["open"] == 1


@pytest.mark.parametrize(
    ("parts", "expected_sent"), [((b"abc",), 3), ((b"abc", b"defgh", b"ij"), 8)], ids=["too-few", "too-many"]
)
async def test_stream_length_mismatch(
    parts: tuple[bytes, ...], expected_sent: int, pool: UpstreamPool, raw_server: StartRaw
) -> None:
    url, seen = await capture(raw_server)
    with pytest.raises(RequestBodyLengthError) as caught:
        await pool.request(url, "POST", "/", [], _chunks(*parts), content_length=5, **TIMEOUTS)
    assert (caught.value.expected, caught.value.sent) == (5, expected_sent)
    assert isinstance(caught.value, ValueError)
    assert pool.stats()["open"] == 0  # the upstream got a short body on a connection now closed
    assert seen == []


async def test_failing_body_iterator_propagates_its_own_error(pool: UpstreamPool, raw_server: StartRaw) -> None:
    url, _ = await capture(raw_server)

    class ClientWentAway(Exception):
        pass

    async def body() -> AsyncIterator[bytes]:
        yield b"some"
        raise ClientWentAway()

    with pytest.raises(ClientWentAway):
        await pool.request(url, "PUT", "/", [], body(), **TIMEOUTS)
    assert pool.stats()["open"] == 0


async def test_early_answer_during_upload_is_returned(pool: UpstreamPool, raw_server: StartRaw) -> None:
    """An instance that refuses the body (413) and closes: its answer is the response, not an error."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()

    raw = await raw_server(refuse)
    answered = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await answered.wait()
        yield b"second"

    request = asyncio.create_task(pool.request(raw.url, "POST", "/", [], body(), **TIMEOUTS))
    await until(lambda: bool(raw.peers) and pool.stats()["open"] == 0, "answered and closed")
    assert not request.done()  # still uploading
    answered.set()
    response = await request
    assert response.status == 413
    assert await response.read() == b"big"


INVALID = {
    "cr-in-value": ("GET", "/", [("X-A", "a\rb")]),
    "lf-in-value": ("GET", "/", [("X-A", "a\nInjected: 1")]),
    "crlf-in-value": ("GET", "/", [("X-A", "a\r\nInjected: 1")]),
    "nul-in-value": ("GET", "/", [("X-A", "a\0b")]),
    "crlf-in-name": ("GET", "/", [("X-A\r\nInjected", "1")]),
    "crlf-in-target": ("GET", "/a\r\nX: 1", []),
    "space-in-target": ("GET", "/a b", []),
    "target-without-slash": ("GET", "a", []),
}


@pytest.mark.parametrize("given_as", AS.values(), ids=AS.keys())
@pytest.mark.parametrize(("method", "target", "headers"), INVALID.values(), ids=INVALID.keys())
async def test_invalid_request_is_refused_before_connecting(
    method: str, target: str, headers: list[tuple[str, str]], given_as: type, pool: UpstreamPool,
    raw_server: StartRaw,
) -> None:
    url, seen = await capture(raw_server)
    with pytest.raises(ValueError):
        await pool.request(url, method, target, given_as(headers), None, **TIMEOUTS)
    assert pool.stats()["open"] == 0 and seen == []


@pytest.mark.parametrize("origin", ["https://127.0.0.1:1", "http://127.0.0.1:1/path", "127.0.0.1:1", "http://"])
async def test_unsupported_origin_is_a_value_error(origin: str, pool: UpstreamPool) -> None:
    with pytest.raises(ValueError):
        await pool.request(origin, "GET", "/", [], None, **TIMEOUTS)
