"""gateway/serving's HttpServer on a loopback port, spoken to over raw sockets: pipelining, bodies and
their flow control, refusals, limits, cancellation, keep-alive, the header deadline and shutdown.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from gateway.serving import HttpServer
from tests.integration.helpers import RawResponse, assert_error_envelope, parse_response

TIMEOUT = 3.0
"""Seconds any single wait of a test may take."""
MiB = 1024 * 1024


@dataclass
class App:
    """The handler under the server: what it saw, and events the tests wait on."""

    targets: list[str] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.targets.append(request.path_qs)
        path = request.path
        if path == "/echo":
            body = await request.read()
            return _answer(request, len(body), hashlib.sha256(body).hexdigest())
        if path == "/slow":
            await asyncio.sleep(float(request.query["s"]))
            return _answer(request)
        if path == "/slowread":
            return await self._read_slowly(request)
        if path == "/ignore":  # the body is never read
            return _answer(request)
        if path == "/wait":
            self.entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if path == "/boom":
            raise RuntimeError("a bug in the handler")
        return _answer(request)

    @staticmethod
    async def _read_slowly(request: web.BaseRequest) -> web.StreamResponse:
        """Read in small chunks with pauses; report the most the request's stream ever held unread."""
        await asyncio.sleep(0.2)  # the client has sent whatever the server would take in by now
        content, digest, got, peak = request.content, hashlib.sha256(), 0, 0
        while True:
            peak = max(peak, content.total_bytes - got)
            chunk = await content.read(16384)
            if not chunk:
                break
            got += len(chunk)
            digest.update(chunk)
            await asyncio.sleep(0.001)
        return _answer(request, got, digest.hexdigest(), peak=peak)


def _answer(request: web.BaseRequest, length: int = 0, sha256: str = "", **extra: int) -> web.Response:
    return web.json_response({"target": request.path_qs, "length": length, "sha256": sha256, **extra})


@dataclass
class Served:
    http: HttpServer
    app: App
    port: int
    """Kept: HttpServer.port is gone once it has shut down."""


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts an HttpServer (keyword options as HttpServer's) on a loopback port; all shut down at teardown."""
    servers: list[HttpServer] = []

    async def start(**options: float) -> Served:
        app = App()
        http = HttpServer(app.handle, **options)
        servers.append(http)
        await http.listen("127.0.0.1", 0)
        return Served(http, app, http.port)

    yield start
    for http in servers:
        await http.shutdown(1.0)


@pytest.fixture
async def served(serve: Serve) -> Served:
    return await serve()


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[Connection]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        yield reader, writer
    finally:
        writer.close()
        with suppress(ConnectionError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), TIMEOUT)


def get(target: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {target} HTTP/{version}", *(["Host: t"] if version == "1.1" else []), *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(target: str, body: bytes, *headers: str) -> bytes:
    head = get(target, f"Content-Length: {len(body)}", *headers).replace(b"GET ", b"POST ", 1)
    return head + body


async def _read_response(reader: asyncio.StreamReader) -> RawResponse:
    head = await reader.readuntil(b"\r\n\r\n")
    headers = parse_response(head).headers
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        raw = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            raw += size_line + await reader.readexactly(size + 2)  # no trailers: size 0 ends in \r\n
            if size == 0:
                break
    elif "Content-Length" in headers:
        raw = await reader.readexactly(int(headers["Content-Length"]))
    else:
        raw = await reader.read()
    return parse_response(head + raw)


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """One whole response, framed by its headers (the next one stays in reader)."""
    return await asyncio.wait_for(_read_response(reader), TIMEOUT)


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything up to the server's close (fails the test if it does not close in time)."""
    return await asyncio.wait_for(reader.read(), TIMEOUT)


def assert_refusal(response: RawResponse, status: int) -> None:
    assert response.status == status, (response.status, response.body)
    assert_error_envelope(response.json(), status, response.headers["X-Request-ID"])
    assert response.headers["Connection"].lower() == "close"


# --- pipelining and bodies ------------------------------------------------------------------------


async def test_pipelined_requests_are_answered_in_order_on_one_connection(served: Served) -> None:
    async with connect(served.port) as (reader, writer):
        writer.write(get("/slow?s=0.3&n=1") + get("/echo?n=2") + get("/echo?n=3"))
        responses = [await read_response(reader) for _ in range(3)]
    assert [response.status for response in responses] == [200, 200, 200]
    assert [response.json()["target"] for response in responses] == ["/slow?s=0.3&n=1", "/echo?n=2", "/echo?n=3"]
    assert served.app.targets == ["/slow?s=0.3&n=1", "/echo?n=2", "/echo?n=3"]


async def test_a_content_length_body_and_a_chunked_body_are_read_whole(served: Served) -> None:
    sized = bytes(range(256)) * 400  # 100 KiB
    pieces = [bytes([n % 251]) * (1000 + n) for n in range(100)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    whole = b"".join(pieces)
    async with connect(served.port) as (reader, writer):
        writer.write(post("/echo?n=1", sized))
        first = await read_response(reader)
        writer.write(get("/echo?n=2", "Transfer-Encoding: chunked").replace(b"GET ", b"POST ", 1))
        for start in range(0, len(chunked), 7000):  # in several writes
            writer.write(chunked[start : start + 7000])
            await writer.drain()
            await asyncio.sleep(0.002)
        second = await read_response(reader)
    assert first.status == second.status == 200
    assert first.json()["length"] == len(sized)
    assert first.json()["sha256"] == hashlib.sha256(sized).hexdigest()
    assert second.json()["length"] == len(whole)
    assert second.json()["sha256"] == hashlib.sha256(whole).hexdigest()


async def test_a_1_mib_body_read_slowly_arrives_intact_and_reading_pauses(served: Served) -> None:
    body = hashlib.sha256(b"seed").digest() * (MiB // 32)
    async with connect(served.port) as (reader, writer):
        writer.write(post("/slowread", body))
        _, response = await asyncio.wait_for(asyncio.gather(writer.drain(), read_response(reader)), TIMEOUT)
    assert response.status == 200
    answer = response.json()
    assert (answer["length"], answer["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    # Flow control: the server stopped reading the socket while the body waited, well short of all of it.
    assert 0 < answer["peak"] <= 512 * 1024, answer["peak"]


async def test_a_body_the_handler_never_reads_does_not_stop_the_next_request(served: Served) -> None:
    body = b"x" * (300 * 1024)  # more than the 128 KiB the body's stream buffers
    async with connect(served.port) as (reader, writer):
        writer.write(post("/ignore", body) + get("/echo?n=2"))
        first = await read_response(reader)
        second = await read_response(reader)
        await asyncio.wait_for(writer.drain(), TIMEOUT)
    assert (first.status, first.json()["target"]) == (200, "/ignore")
    assert (second.status, second.json()["target"]) == (200, "/echo?n=2")
    assert served.app.targets == ["/ignore", "/echo?n=2"]


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "broken",
    [
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nabcd\r\n0\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nX-No-Host: 1\r\n\r\n",
    ],
    ids=["content-length-and-chunked", "obs-fold", "duplicate-host", "missing-host"],
)
async def test_broken_framing_is_refused_in_order_then_the_connection_closes(served: Served, broken: bytes) -> None:
    async with connect(served.port) as (reader, writer):
        # A slow valid request before it, and one after it that must never be read.
        writer.write(get("/slow?s=0.2&n=1") + broken + get("/echo?n=3"))
        first = await read_response(reader)
        refused = await read_response(reader)
        rest = await read_to_eof(reader)
    assert (first.status, first.json()["target"]) == (200, "/slow?s=0.2&n=1")
    assert_refusal(refused, 400)
    assert rest == b""
    assert served.app.targets == ["/slow?s=0.2&n=1"]


async def test_http_2_0_is_refused_with_505(served: Served) -> None:
    async with connect(served.port) as (reader, writer):
        writer.write(get("/x", version="2.0") + get("/echo"))
        refused = await read_response(reader)
        rest = await read_to_eof(reader)
    assert_refusal(refused, 505)
    assert rest == b""
    assert served.app.targets == []


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (get("/" + "a" * 8191), 414),
        (get("/echo", "X-Big: " + "a" * 8190), 431),
        (get("/echo", *(f"X-H{n}: v" for n in range(128))), 431),  # 129 with Host
    ],
    ids=["target-too-long", "header-line-too-long", "too-many-headers"],
)
async def test_limits_of_the_request_head(served: Served, request_bytes: bytes, status: int) -> None:
    async with connect(served.port) as (reader, writer):
        writer.write(request_bytes)
        refused = await read_response(reader)
        rest = await read_to_eof(reader)
    assert_refusal(refused, status)
    assert rest == b""
    assert served.app.targets == []


async def test_the_largest_allowed_head_is_served(served: Served) -> None:
    """The limits' other side: a target, a header line and a header count just at them."""
    request_bytes = get("/" + "a" * 8189, "X-Big: " + "b" * 8185, *(f"X-H{n}: v" for n in range(126)))  # 128 with Host
    async with connect(served.port) as (reader, writer):
        writer.write(request_bytes)
        response = await read_response(reader)
    assert response.status == 200


async def test_a_head_that_never_ends_is_refused_past_64_kib(served: Served) -> None:
    async with connect(served.port) as (reader, writer):
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n")
        await writer.drain()
        for n in range(70):  # 70 lines of ~1 KiB: under the header count and line limits, over 64 KiB in all
            writer.write(b"X-Pad-%03d: %s\r\n" % (n, b"p" * 1000))
            await writer.drain()
            await asyncio.sleep(0.002)
        refused = await read_response(reader)
        rest = await read_to_eof(reader)
    assert_refusal(refused, 431)
    assert rest == b""
    assert served.app.targets == []


# --- the handler's fate ---------------------------------------------------------------------------


async def test_a_client_that_hangs_up_cancels_its_handler(served: Served) -> None:
    async with connect(served.port) as (_, writer):
        writer.write(get("/wait"))
        await asyncio.wait_for(served.app.entered.wait(), TIMEOUT)
    await asyncio.wait_for(served.app.cancelled.wait(), TIMEOUT)


async def test_a_handler_that_raises_gets_a_500_and_the_server_goes_on(served: Served) -> None:
    async with connect(served.port) as (reader, writer):
        writer.write(get("/boom") + get("/echo?n=2"))
        failed = await read_response(reader)
        rest = await read_to_eof(reader)
    assert_refusal(failed, 500)
    assert rest == b""
    async with connect(served.port) as (reader, writer):
        writer.write(get("/echo?n=3"))
        after = await read_response(reader)
    assert (after.status, after.json()["target"]) == (200, "/echo?n=3")
    assert served.app.targets == ["/boom", "/echo?n=3"]


# --- keep-alive -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [get("/echo?n=1", version="1.0"), get("/echo?n=1", "Connection: close")],
    ids=["http-1.0", "connection-close"],
)
async def test_a_request_that_does_not_keep_alive_is_answered_then_closed(served: Served, request_bytes: bytes) -> None:
    async with connect(served.port) as (reader, writer):
        writer.write(request_bytes + get("/echo?n=2"))
        response = await read_response(reader)
        rest = await read_to_eof(reader)
    assert (response.status, response.json()["target"]) == (200, "/echo?n=1")
    assert rest == b""
    assert served.app.targets == ["/echo?n=1"]


async def test_http_1_0_with_keep_alive_stays_open(served: Served) -> None:
    async with connect(served.port) as (reader, writer):
        for n in (1, 2):
            writer.write(get(f"/echo?n={n}", "Connection: keep-alive", version="1.0"))
            response = await read_response(reader)
            assert (response.status, response.json()["target"]) == (200, f"/echo?n={n}")


async def test_an_idle_kept_alive_connection_is_closed_after_keepalive_timeout(serve: Serve) -> None:
    served = await serve(keepalive_timeout=0.3)  # the header deadline stays at its default (10 s)
    loop = asyncio.get_running_loop()
    async with connect(served.port) as (reader, writer):
        writer.write(get("/echo"))
        assert (await read_response(reader)).status == 200
        idle_since = loop.time()
        rest = await read_to_eof(reader)
        idled = loop.time() - idle_since
    assert rest == b""
    assert 0.2 <= idled <= 1.5, idled


async def test_a_connection_in_use_outlives_keepalive_timeout(serve: Serve) -> None:
    served = await serve(keepalive_timeout=0.3)
    async with connect(served.port) as (reader, writer):
        for n in range(6):  # ~0.9 s in all, never idle 0.3 s
            writer.write(get(f"/echo?n={n}"))
            assert (await read_response(reader)).status == 200
            await asyncio.sleep(0.15)
        writer.write(get("/slow?s=0.6"))  # a handler busy longer than the keep-alive timeout
        response = await read_response(reader)
    assert (response.status, response.json()["target"]) == (200, "/slow?s=0.6")
    assert len(served.app.targets) == 7


# --- the header deadline --------------------------------------------------------------------------


async def test_partial_headers_get_a_408_at_the_header_deadline(serve: Serve) -> None:
    served = await serve(header_timeout=0.4)
    async with connect(served.port) as (reader, writer):
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        refused = await read_response(reader)
        rest = await read_to_eof(reader)
    assert_refusal(refused, 408)
    assert refused.json()["error"] == "Request Timeout: the request headers did not arrive within 0.4s"
    assert rest == b""
    assert served.app.targets == []


async def test_a_silent_connection_is_closed_without_a_byte(serve: Serve) -> None:
    served = await serve(header_timeout=0.4)
    loop = asyncio.get_running_loop()
    async with connect(served.port) as (reader, _):
        opened = loop.time()
        rest = await read_to_eof(reader)
        waited = loop.time() - opened
    assert rest == b""
    assert 0.3 <= waited <= 1.5, waited


async def test_a_later_request_on_a_kept_alive_connection_has_the_header_deadline_too(serve: Serve) -> None:
    served = await serve(header_timeout=0.4, keepalive_timeout=30.0)
    loop = asyncio.get_running_loop()
    async with connect(served.port) as (reader, writer):
        writer.write(get("/echo"))
        assert (await read_response(reader)).status == 200
        await asyncio.sleep(0.6)  # idle past the first request's header deadline, well short of keep-alive's
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        started = loop.time()
        refused = await read_response(reader)
        waited = loop.time() - started
    assert_refusal(refused, 408)
    assert waited <= 1.5, waited


# --- shutdown -------------------------------------------------------------------------------------


async def test_shutdown_lets_a_request_under_way_finish_and_closes_the_idle(served: Served) -> None:
    loop = asyncio.get_running_loop()
    async with connect(served.port) as (busy_reader, busy_writer), connect(served.port) as (idle_reader, idle_writer):
        idle_writer.write(get("/echo?n=1"))
        assert (await read_response(idle_reader)).status == 200
        busy_writer.write(get("/slow?s=0.5"))
        await asyncio.wait_for(_until(lambda: "/slow?s=0.5" in served.app.targets), TIMEOUT)
        started = loop.time()
        shutdown = asyncio.create_task(served.http.shutdown(2.0))
        assert await read_to_eof(idle_reader) == b""
        assert loop.time() - started < 0.4  # closed at once, not after the busy one's response
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", served.port), TIMEOUT)
        response = await read_response(busy_reader)
        assert (response.status, response.json()["target"]) == (200, "/slow?s=0.5")
        assert await read_to_eof(busy_reader) == b""
        await asyncio.wait_for(shutdown, TIMEOUT)
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", served.port), TIMEOUT)
    assert not served.app.cancelled.is_set()


async def test_shutdown_cancels_a_handler_that_outlasts_its_timeout(served: Served) -> None:
    loop = asyncio.get_running_loop()
    async with connect(served.port) as (reader, writer):
        writer.write(get("/wait"))
        await asyncio.wait_for(served.app.entered.wait(), TIMEOUT)
        started = loop.time()
        await asyncio.wait_for(served.http.shutdown(0.3), TIMEOUT)
        took = loop.time() - started
        assert served.app.cancelled.is_set()
        assert await read_to_eof(reader) == b""
    assert 0.25 <= took <= 2.0, took


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


# --- upgrade --------------------------------------------------------------------------------------


async def test_an_upgrade_request_is_answered_as_a_plain_one_then_closed(served: Served) -> None:
    async with connect(served.port) as (reader, writer):
        writer.write(
            get("/echo?n=1", "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
            + get("/echo?n=2")
        )
        response = await read_response(reader)
        rest = await read_to_eof(reader)
    assert (response.status, response.json()["target"]) == (200, "/echo?n=1")
    assert rest == b""
    assert served.app.targets == ["/echo?n=1"]
