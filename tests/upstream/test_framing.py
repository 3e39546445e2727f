"""Response framing: Content-Length, chunked, close-delimited, bodiless responses, interim responses,
and what a broken response raises. Raw servers write the exact bytes under test."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from aiohttp import web

from gateway.upstream import UpstreamPool, UpstreamProtocolError, UpstreamResetError
from tests.conftest import StartUpstream
from tests.upstream.conftest import TIMEOUTS, RawHandler, StartRaw, answer, read_request



def respond_each(response: bytes, *, close_after: bool) -> RawHandler:
    """Answer every request on a connection with ``response``; close after the first when asked."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(response)
            await writer.drain()
            if close_after:
                return

    return handler


@dataclass(frozen=True)
class Case:
    response: bytes
    body: bytes
    content_length: int | None
    reused: bool  # whether the second request runs on the first one's connection
    method: str = "GET"
    close_after: bool = False
    status: int = 200


CASES = {
    "content-length": Case(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello", 5, reused=True),
    "chunked-extensions-trailers": Case(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n",
        b"hello world",
        None,
        reused=True,
    ),
    "close-delimited-1.1": Case(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", b"until the end", None,
        reused=False, close_after=True,
    ),
    "close-delimited-1.0": Case(
        b"HTTP/1.0 200 OK\r\n\r\nold style", b"old style", None, reused=False, close_after=True
    ),
    "head-with-length": Case(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", b"", 0, reused=True, method="HEAD"
    ),
    "head-chunked": Case(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"", 0, reused=True, method="HEAD"
    ),
    "204-stray-length": Case(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", b"", 0, reused=True, status=204
    ),
    "304-stray-length": Case(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 20\r\nETag: \"x\"\r\n\r\n", b"", 0, reused=True, status=304
    ),
    "100-continue-skipped": Case(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", 2, reused=True
    ),
    "103-early-hints-skipped": Case(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"ok",
        2,
        reused=True,
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_framing(case: Case, pool: UpstreamPool, raw_server: StartRaw) -> None:
    raw = await raw_server(respond_each(case.response, close_after=case.close_after))
    for _ in range(2):
        response = await pool.request(raw.url, case.method, "/", [], None, **TIMEOUTS)
        assert response.status == case.status
        assert response.content_length == case.content_length
        assert await response.read() == case.body
        assert response.content.at_eof()
        assert "Link" not in response.headers  # an interim response's headers are not the final's
        assert "X-Checksum" not in response.headers  # nor are a chunked body's trailers
        response.release()
    assert len(raw.peers) == (1 if case.reused else 2)


async def test_switching_protocols_is_returned_and_not_reused(pool: UpstreamPool, raw_server: StartRaw) -> None:
    raw = await raw_server(
        respond_each(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00",
                     close_after=False)
    )
    response = await pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS)
    assert (response.status, response.content_length) == (101, 0)
    assert response.headers["Upgrade"] == "websocket"
    response.release()
    assert pool.stats()["open"] == 0


async def test_body_read_chunk_by_chunk_as_it_arrives(pool: UpstreamPool, raw_server: StartRaw) -> None:
    more = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await more.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await reader.read()

    raw = await raw_server(handler)
    response = await pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS)
    assert await response.content.readany() == b"first"
    assert not response.content.at_eof()
    more.set()
    assert await response.content.readany() == b"second"
    assert await response.content.readany() == b""
    assert response.content.at_eof()


async def test_duplicate_headers_keep_their_order(pool: UpstreamPool, start_upstream: StartUpstream) -> None:
    async def handler(request: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("X-Between", "x")
        response.headers.add("Set-Cookie", "b=2")
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    base = await start_upstream(app)
    response = await pool.request(base, "GET", "/", [], None, **TIMEOUTS)
    assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    names = [name for name, _ in response.headers.items()]
    assert names.index("X-Between") == names.index("Set-Cookie") + 1
    assert response.reason == "OK" and response.version == "1.1"
    assert await response.read() == b"ok"


async def test_a_second_response_to_one_request_is_not_taken(pool: UpstreamPool, raw_server: StartRaw) -> None:
    raw = await raw_server(
        answer(b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    )
    response = await pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS)
    assert response.status == 204
    assert await response.read() == b""
    assert pool.stats()["open"] == 0  # the connection's framing is off: dropped


BROKEN = {
    "length-cut-short": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", UpstreamResetError),
    "chunked-cut-short": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", UpstreamResetError),
    "bad-chunk-size": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n", UpstreamProtocolError),
}


@pytest.mark.parametrize(("raw_response", "error"), BROKEN.values(), ids=BROKEN.keys())
async def test_broken_body_raises_from_read(
    raw_response: bytes, error: type[Exception], pool: UpstreamPool, raw_server: StartRaw
) -> None:
    raw = await raw_server(answer(raw_response, keep_open=False))
    response = await pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS)
    assert response.status == 200
    with pytest.raises(error):
        await response.read()
    response.release()
    assert pool.stats()["open"] == 0


BAD_HEADS = {
    "garbage": b"this is not http\r\n\r\n",
    "bad-status-line": b"HTTP/1.1 2x0 OK\r\n\r\n",
    "length-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "head-too-large": b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 400_000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("raw_response", BAD_HEADS.values(), ids=BAD_HEADS.keys())
async def test_unparseable_response_is_a_protocol_error(
    raw_response: bytes, pool: UpstreamPool, raw_server: StartRaw
) -> None:
    raw = await raw_server(answer(raw_response))
    with pytest.raises(UpstreamProtocolError):
        await pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS)
    assert pool.stats()["open"] == 0


async def test_closed_before_any_response_byte(pool: UpstreamPool, raw_server: StartRaw) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    raw = await raw_server(hang_up)
    with pytest.raises(UpstreamResetError) as caught:
        await pool.request(raw.url, "GET", "/", [], None, **TIMEOUTS)
    assert caught.value.reused is False  # a fresh connection: no stale keep-alive to blame
