"""Bad input against a real gateway process, run once with each of aiohttp's HTTP parsers (the C one and,
with AIOHTTP_NO_EXTENSIONS=1, the pure-Python one): HTTP framing written at the socket level, paths that
try to leave their prefix, bodies over the limit (sized, chunked, compressed) and slow clients.

Each case gets its status in the error envelope (never a 500), the recording upstream sees nothing that
should have been stopped, and the gateway answers the next request on a new connection.

Compressed bodies: the gateway never decompresses a request body (it forwards the bytes the client
sent, Content-Encoding included), so max_body_size counts the bytes on the wire; a service that
inflates a body applies its own limit (see test_bad_input_services.py).
"""
from __future__ import annotations

import asyncio
import gzip
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from redis import Redis, RedisError

from gateway.middleware.rate_limit import SPEC_TIERS
from tests.integration.helpers import RawResponse, Received, Recorder, assert_error_envelope, parse_response
from tests.jwt_support import payload, rsa_key, sign, write_public_pem
from tests.process.helpers import GATEWAY_ENV_VARS
from tests import backends
from tests.support import GatewayProcess, service, write_registry

pytestmark = pytest.mark.slow

HEADER_TIMEOUT = 1.25
"""KADAI_HEADER_TIMEOUT of the gateways here, in seconds (between two bytes of a client sending one every 0.5 s)."""
ISSUER = "https://issuer.kadai.test"
AUDIENCE = "kadai-api"
LIMITED_TIER_LIMIT = 2
SMALL_BODY_LIMIT = 1000
JSON_TYPE = "application/json; charset=utf-8"
PARSERS = {"c-parser": {}, "python-parser": {"AIOHTTP_NO_EXTENSIONS": "1"}}


class ThreadedRecorder:
    """tests.integration's recording upstream, served from a thread of its own: it outlives the event loop
    of each test, so one upstream (and one gateway) serves a whole module."""

    def __init__(self) -> None:
        self.recorder = Recorder("service")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="recording-upstream", daemon=True)
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return self.recorder.url

    @property
    def received(self) -> list[Received]:
        return self.recorder.received

    def start(self) -> ThreadedRecorder:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the recording upstream did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self.recorder.app(), access_log=None, shutdown_timeout=0.5)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.recorder.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()


@dataclass
class BadInputGateway:
    """A gateway process over the bad-input registry, and the upstream behind every route of it."""

    process: GatewayProcess
    upstream: ThreadedRecorder
    parser: str
    tier: str
    """The limited route's own rate-limit tier (unique to this process: the Redis is shared)."""

    @property
    def port(self) -> int:
        return self.process.port


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadedRecorder]:
    recorder = ThreadedRecorder().start()
    yield recorder
    recorder.stop()


def bad_input_registry(path: Path, url: str, tier: str) -> Path:
    limited = {
        **{name: False for name in SPEC_TIERS},
        tier: {"limit": LIMITED_TIER_LIMIT, "window": "1h"},  # no refill within the test
        "timeout": "2s",
        "fail_open": False,
    }
    routes = [
        {"prefix": "/api/v1/users", "auth": False},
        {"prefix": "/api/v1/secure", "auth": True},
        {"prefix": "/api/v1/limited", "auth": False, "rate_limit": limited},
        {"prefix": "/api/v1/small", "auth": False, "max_body_size": SMALL_BODY_LIMIT},
    ]
    services = {
        "user-service": service([url], *routes),
        "order-service": service([url], {"prefix": "/api/v1/orders", "auth": False}),
    }
    return write_registry(path, services)


@pytest.fixture(scope="module", params=list(PARSERS))
def gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: ThreadedRecorder,
) -> Iterator[BadInputGateway]:
    """A real gateway with RS256 tokens (issuer and audience checked), a rate-limited route in Redis, a
    small body limit and a short header deadline; once per HTTP parser. Only the limited route needs
    Redis (its test asks for it); the gateway starts without one."""
    redis_url = backends.redis_url()
    parser: str = request.param
    directory = tmp_path_factory.mktemp(f"bad-input-{parser}")
    tier = f"badinput_{secrets.token_hex(4)}"
    env = {
        **PARSERS[parser],
        "JWT_PUBLIC_KEY_FILE": str(write_public_pem(directory / "jwt.pem", rsa_key("a"))),
        "JWT_ISSUER": ISSUER,
        "JWT_AUDIENCE": AUDIENCE,
        "REDIS_URL": redis_url,
        "KADAI_HEADER_TIMEOUT": f"{HEADER_TIMEOUT}s",
    }
    process = GatewayProcess(bad_input_registry(directory / "registry.yaml", upstream.url, tier), env=env)
    with pytest.MonkeyPatch.context() as patch:
        # The process inherits os.environ: a developer's JWT_*, KADAI_* or parser choice must not change it.
        for name in (
            *GATEWAY_ENV_VARS, "JWT_ALGORITHMS", "JWT_JWKS_URL", "JWT_LEEWAY", "JWT_CACHE_SIZE", "KADAI_DRAIN_DELAY",
            "AIOHTTP_NO_EXTENSIONS",
        ):
            patch.delenv(name, raising=False)
        process.start()
    try:
        yield BadInputGateway(process, upstream, parser, tier)
    finally:
        process.stop()
        try:
            with Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=2) as redis:
                keys = list(redis.scan_iter(match=f"kadai:ratelimit:{tier}.*"))
                if keys:
                    redis.delete(*keys)
        except RedisError:
            pass  # no Redis, no buckets to remove


# --- talking to the gateway over a socket --------------------------------------------------------------


async def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes exactly as given and read one response: its Content-Length, else up to the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            length = parse_response(head).headers.get("Content-Length")
            return head + (await reader.readexactly(int(length)) if length is not None else await reader.read())
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


def build(
    target: str, method: str = "GET", headers: Sequence[tuple[str, str]] = (), body: bytes | None = None
) -> bytes:
    """A well-formed HTTP/1.1 request with these headers, a Content-Length when a body is given, and
    Connection: close (so the exchange ends with the response)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway.test", *(f"{name}: {value}" for name, value in headers)]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


async def send(gw: BadInputGateway, data: bytes) -> tuple[RawResponse, list[Received]]:
    """One exchange, and what the upstream received during it."""
    gw.upstream.received.clear()
    response = parse_response(await exchange(gw.port, data))
    return response, list(gw.upstream.received)


def assert_refused(response: RawResponse, status: int, forwarded: list[Received]) -> dict[str, Any]:
    """The status in the envelope, from the gateway itself, and nothing forwarded."""
    assert response.status == status, response.body[:300]
    assert response.headers["Content-Type"] == JSON_TYPE
    assert response.headers["Server"] == "kadai-gateway"
    body = response.json()
    assert_error_envelope(body, status, response.headers["X-Request-ID"])
    assert forwarded == [], [seen.raw_path for seen in forwarded]
    return body  # type: ignore[no-any-return]


async def assert_serves_next(gw: BadInputGateway) -> None:
    """A plain request on a new connection is answered, and the process never logged a traceback."""
    response, forwarded = await send(gw, build("/api/v1/users/next"))
    assert response.status == 200, response.body[:300]
    assert [seen.raw_path for seen in forwarded] == ["/users/next"]
    assert gw.process.proc is not None and gw.process.proc.poll() is None
    assert "Traceback" not in gw.process.output()


def gateway_token(sub: str, **claims: Any) -> str:
    """A token the gateways here accept: RS256 with key "a", their issuer and audience."""
    return sign(payload(sub=sub, iss=ISSUER, aud=AUDIENCE, **claims), rsa_key("a"), "RS256")


# --- HTTP framing --------------------------------------------------------------------------------------

# The start of a request, before the header lines under test.
R = "POST /api/v1/users/framing HTTP/1.1\r\nHost: gateway.test\r\n"
G = "GET /api/v1/users/framing HTTP/1.1\r\nHost: gateway.test\r\n"
FRAMING: list[tuple[str, bytes, int]] = [
    ("content-length-and-chunked", f"{R}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
     400),
    ("chunked-and-content-length", f"{R}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n".encode(),
     400),
    ("duplicate-content-length", f"{R}Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde".encode(), 400),
    ("duplicate-equal-content-length", f"{R}Content-Length: 4\r\nContent-Length: 4\r\n\r\nabcd".encode(), 400),
    ("content-length-list", f"{R}Content-Length: 4, 4\r\n\r\nabcd".encode(), 400),
    ("content-length-plus-sign", f"{R}Content-Length: +4\r\n\r\nabcd".encode(), 400),
    ("transfer-encoding-not-chunked", f"{R}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n".encode(), 400),
    ("transfer-encoding-chunked-not-last", f"{R}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n".encode(), 400),
    ("chunk-size-0x", f"{R}Transfer-Encoding: chunked\r\n\r\n0x4\r\nabcd\r\n0\r\n\r\n".encode(), 400),
    ("chunked-on-http-1.0", b"POST /api/v1/users/framing HTTP/1.0\r\nHost: gateway.test\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n", 400),
    ("obs-fold", f"{G}X-Folded: a\r\n b\r\n\r\n".encode(), 400),
    ("obs-fold-transfer-encoding", f"{R}Transfer-Encoding:\r\n chunked\r\nContent-Length: 4\r\n\r\nabcd".encode(), 400),
    ("bare-lf-everywhere", b"GET /api/v1/users/framing HTTP/1.1\nHost: gateway.test\n\n", 400),
    ("bare-lf-in-headers", f"{G}X-A: b\nX-B: c\r\n\r\n".encode(), 400),
    ("cr-in-header-value", f"{G}X-A: a\rb\r\n\r\n".encode(), 400),
    ("nul-in-header-value", f"{G}X-A: a\x00b\r\n\r\n".encode(), 400),
    ("space-before-colon", f"{G}Content-Length : 0\r\n\r\n".encode(), 400),
    ("duplicate-host", b"GET /api/v1/users/framing HTTP/1.1\r\nHost: gateway.test\r\nHost: evil.example\r\n\r\n", 400),
    ("missing-host", b"GET /api/v1/users/framing HTTP/1.1\r\n\r\n", 400),
    ("nul-in-target", b"GET /api/v1/users/a\x00b HTTP/1.1\r\nHost: gateway.test\r\n\r\n", 400),
    ("authority-form", b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", 400),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: gateway.test\r\n\r\n", 400),
    ("http-2.0-request-line", b"GET /api/v1/users/framing HTTP/2.0\r\nHost: gateway.test\r\n\r\n", 505),
]


@pytest.mark.parametrize(("request_bytes", "status"), [case[1:] for case in FRAMING], ids=[c[0] for c in FRAMING])
async def test_broken_framing_is_refused_and_never_forwarded(
    gateway: BadInputGateway, request_bytes: bytes, status: int
) -> None:
    response, forwarded = await send(gateway, request_bytes)
    body = assert_refused(response, status, forwarded)
    assert "evil" not in body["error"]  # the client's bytes are not echoed
    await assert_serves_next(gateway)


async def test_a_request_line_without_a_version_is_refused(gateway: BadInputGateway) -> None:
    """llhttp reads `GET /x` as HTTP/0.9 (505 here); the Python parser refuses the line itself (400)."""
    response, forwarded = await send(gateway, b"GET /api/v1/users/framing\r\n\r\n")
    assert_refused(response, 505 if gateway.parser == "c-parser" else 400, forwarded)
    await assert_serves_next(gateway)


async def test_absolute_form_target_is_routed_on_its_path_only(gateway: BadInputGateway) -> None:
    response, forwarded = await send(gateway, build("http://evil.example/api/v1/users/x?q=1"))
    assert response.status == 200
    assert [(seen.raw_path, seen.header("Host")) for seen in forwarded] == [
        ("/users/x?q=1", gateway.upstream.url.removeprefix("http://"))
    ]
    response, forwarded = await send(gateway, build("http://evil.example/api/v1/users/../../../secret"))
    assert_refused(response, 404, forwarded)
    await assert_serves_next(gateway)


async def test_connection_cannot_strip_what_the_gateway_asserts(gateway: BadInputGateway) -> None:
    """Connection-named headers are hop-by-hop and dropped (RFC 9110, 7.6.1), but never the gateway's
    own forwarding, identity or framing headers, which it sets after that."""
    token = gateway_token("u-connection")
    headers = [
        ("Connection", "close, Authorization, X-Forwarded-For, X-User-ID, Content-Length"),
        ("Authorization", f"Bearer {token}"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-User-ID", "admin-1"),
    ]
    response, forwarded = await send(gateway, build("/api/v1/secure/x", "POST", headers, b"abcd"))
    assert response.status == 200, response.body[:300]
    (seen,) = forwarded
    assert seen.all("Authorization") == []  # named in Connection: not forwarded, though it was checked
    assert seen.all("X-User-ID") == ["u-connection"]
    assert seen.all("X-Forwarded-For") == ["127.0.0.1"]
    assert (seen.all("Content-Length"), seen.body) == (["4"], b"abcd")

    # Naming Authorization does not get a request past the token check.
    response, forwarded = await send(gateway, build("/api/v1/secure/x", headers=[("Connection", "Authorization")]))
    assert_refused(response, 401, forwarded)
    await assert_serves_next(gateway)


# --- paths that try to leave their prefix --------------------------------------------------------------

PATHS: list[tuple[str, str, int, str | None]] = [
    ("dotdot-into-sibling", "/api/v1/users/../orders/x", 200, "/orders/x"),
    ("dotdot-out-of-the-api", "/api/v1/users/../../secret", 404, None),
    ("dotdot-above-root", "/api/v1/users/../../../../etc/passwd", 400, None),
    ("encoded-dotdot", "/api/v1/users/%2e%2e/orders/x", 200, "/orders/x"),
    ("encoded-dotdot-out", "/api/v1/users/%2E%2E/%2e%2e/secret", 404, None),
    ("encoded-slash", "/api/v1/users/..%2f..%2fsecret", 400, None),
    ("encoded-slash-in-segment", "/api/v1/users/a%2Fb", 400, None),
    ("double-encoded-slash-stays-literal", "/api/v1/users/a%252fb", 200, "/users/a%252fb"),
    ("double-encoded-dotdot-stays-literal", "/api/v1/users/%252e%252e/x", 200, "/users/%252e%252e/x"),
    ("double-slashes", "//api/v1//users///x", 200, "/users/x"),
    ("dotdot-with-params", "/api/v1/users/..;/orders/x", 400, None),
    ("encoded-dotdot-with-params", "/api/v1/users/%2e%2e;x=1/orders", 400, None),
    ("params-on-a-plain-segment", "/api/v1/users/x;v=1", 200, "/users/x;v=1"),
    ("encoded-nul", "/api/v1/users/a%00b", 400, None),
    ("backslash", "/api/v1/users/..\\..\\secret", 400, None),
    ("encoded-backslash", "/api/v1/users/..%5c..%5csecret", 400, None),
]


@pytest.mark.parametrize(("target", "status", "upstream_path"), [c[1:] for c in PATHS], ids=[c[0] for c in PATHS])
async def test_paths_never_leave_their_prefix(
    gateway: BadInputGateway, target: str, status: int, upstream_path: str | None
) -> None:
    response, forwarded = await send(gateway, build(target))
    if upstream_path is None:
        assert_refused(response, status, forwarded)
    else:
        assert response.status == status, response.body[:300]
        assert [seen.raw_path for seen in forwarded] == [upstream_path]
        service = "order-service" if upstream_path.startswith("/orders") else "user-service"
        assert forwarded[0].header("X-Gateway-Service") == service
    await assert_serves_next(gateway)


# --- bodies over the limit ---------------------------------------------------------------------------


async def test_a_content_length_over_the_limit_is_413_before_the_body_is_sent(gateway: BadInputGateway) -> None:
    # Headers only: the answer must not wait for a gigabyte that never comes.
    head = b"POST /api/v1/small/x HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 1000000000\r\n\r\n"
    response, forwarded = await send(gateway, head)
    body = assert_refused(response, 413, forwarded)
    assert body["details"] == {"limit": SMALL_BODY_LIMIT, "received": 1_000_000_000}

    response, forwarded = await send(gateway, build("/api/v1/small/x", "POST", body=b"x" * (SMALL_BODY_LIMIT + 1)))
    assert_refused(response, 413, forwarded)
    response, forwarded = await send(gateway, build("/api/v1/small/x", "POST", body=b"x" * SMALL_BODY_LIMIT))
    assert response.status == 200 and [len(seen.body) for seen in forwarded] == [SMALL_BODY_LIMIT]
    await assert_serves_next(gateway)


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


async def test_a_chunked_body_whose_framing_breaks_mid_upload_is_a_400_at_once(gateway: BadInputGateway) -> None:
    """The request is already on its way upstream when a later chunk turns out malformed: the client gets a
    400 in the envelope at once (not a 500, nor a 504 once the route's total timeout has passed), the
    connection closes, and the service never gets a complete request."""
    gateway.upstream.received.clear()
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(b"POST /api/v1/users/upload HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"4\r\nabcd\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)  # dispatched: the upload to the service has begun
        writer.write(b"zz\r\nnot a chunk\r\n")
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()  # up to the gateway's close
    finally:
        writer.close()
    response = parse_response(answer)
    assert_refused(response, 400, list(gateway.upstream.received))
    assert (response.json()["error"], response.headers["Connection"]) == ("Malformed request body", "close")
    await assert_serves_next(gateway)


async def test_a_chunked_body_over_the_limit_is_413_and_never_reaches_the_service_whole(
    gateway: BadInputGateway,
) -> None:
    head = b"POST /api/v1/small/x HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    response, forwarded = await send(gateway, head + chunked(*[b"z" * 400] * 4))
    assert_refused(response, 413, forwarded)  # the upstream saw a cut upload at most, never a request

    response, forwarded = await send(gateway, head + chunked(b"a" * 400, b"b" * 400))
    assert response.status == 200
    assert [seen.body for seen in forwarded] == [b"a" * 400 + b"b" * 400]
    await assert_serves_next(gateway)


async def test_a_compressed_body_is_forwarded_as_sent_and_limited_by_its_size_on_the_wire(
    gateway: BadInputGateway,
) -> None:
    plain = b'{"padding": "' + b" " * 200_000 + b'"}'
    small = gzip.compress(plain)
    assert len(small) < SMALL_BODY_LIMIT < len(plain)
    headers = [("Content-Encoding", "gzip"), ("Content-Type", "application/json")]

    response, forwarded = await send(gateway, build("/api/v1/small/x", "POST", headers, small))
    assert response.status == 200, response.body[:300]
    (seen,) = forwarded
    # The upstream got the gzip bytes the client sent (its own server inflated them).
    assert (seen.all("Content-Encoding"), seen.all("Content-Length")) == (["gzip"], [str(len(small))])
    assert seen.body == plain

    large = gzip.compress(os.urandom(2 * SMALL_BODY_LIMIT))  # random bytes do not compress
    response, forwarded = await send(gateway, build("/api/v1/small/x", "POST", headers, large))
    body = assert_refused(response, 413, forwarded)
    assert body["details"] == {"limit": SMALL_BODY_LIMIT, "received": len(large)}
    await assert_serves_next(gateway)


# --- slow clients ----------------------------------------------------------------------------------------


@dataclass
class Slow:
    """One slow connection: the bytes it wrote before the gateway closed it, and all the gateway answered."""

    sent: int = 0
    answer: bytes = b""


async def _trickle(writer: asyncio.StreamWriter, data: bytes, interval: float, slow: Slow) -> None:
    """Write one byte every interval, counting them, until done or the gateway has closed the connection."""
    for byte in data:
        writer.write(bytes([byte]))
        await writer.drain()
        slow.sent += 1
        await asyncio.sleep(interval)


async def _headers_byte_by_byte(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, slow: Slow
) -> None:
    """Trickle the request (one byte every 0.5 s) while reading what the gateway answers, up to its close."""
    trickling = asyncio.create_task(_trickle(writer, request, 0.5, slow))
    try:
        slow.answer = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT + 10)
    finally:
        trickling.cancel()
        await asyncio.gather(trickling, return_exceptions=True)


async def _slowloris(port: int, request: bytes) -> Slow:
    slow = Slow()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _headers_byte_by_byte(reader, writer, request, slow)
    finally:
        writer.close()
    return slow


async def _silent(port: int) -> Slow:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return Slow(answer=await asyncio.wait_for(reader.read(), HEADER_TIMEOUT + 10))
    finally:
        writer.close()


async def _read_response(reader: asyncio.StreamReader) -> RawResponse:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(parse_response(head).headers["Content-Length"])
    return parse_response(head + await reader.readexactly(length))


async def _kept_alive_then_slow(port: int, request: bytes) -> tuple[list[int], Slow]:
    """Two requests with an idle pause longer than the header deadline between them, then a slow third."""
    slow = Slow()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses = []
    try:
        for pause in (0.0, HEADER_TIMEOUT * 2):
            await asyncio.sleep(pause)  # idle between requests: the keep-alive timeout's business
            writer.write(request)
            statuses.append((await asyncio.wait_for(_read_response(reader), 5)).status)
        await _headers_byte_by_byte(reader, writer, request, slow)
    finally:
        writer.close()
    return statuses, slow


async def _slow_body(port: int, body: bytes) -> tuple[RawResponse, Slow]:
    """Headers at once, then the body one byte every 0.3 s: longer than the header deadline in all."""
    slow = Slow()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"POST /api/v1/users/slow-body HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"Connection: close\r\n\r\n")
        await _trickle(writer, body, 0.3, slow)
        return parse_response(await asyncio.wait_for(reader.read(), 10)), slow
    finally:
        writer.close()


async def test_slow_request_headers_are_cut_off_at_the_deadline(gateway: BadInputGateway) -> None:
    gateway.upstream.received.clear()
    request = b"GET /api/v1/users/slowloris HTTP/1.1\r\nHost: gateway.test\r\nX-Padding: " + b"p" * 40 + b"\r\n\r\n"
    kept_request = b"GET /api/v1/users/kept HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
    body = b"0123456789"
    trickled, silent, (kept, slow), (slow_body, body_sent) = await asyncio.gather(
        _slowloris(gateway.port, request),
        _silent(gateway.port),
        _kept_alive_then_slow(gateway.port, kept_request),
        _slow_body(gateway.port, body),
    )

    # Headers byte by byte: a 408 in the envelope, and the connection closed long before they could end.
    response = parse_response(trickled.answer)
    assert response.status == 408
    assert_error_envelope(response.json(), 408, response.headers["X-Request-ID"])
    assert response.headers["Connection"] == "close"
    assert 0 < trickled.sent < len(request)
    # A connection that never sends anything is closed too, without an answer.
    assert silent.answer == b""
    # Idle time between kept-alive requests does not count; a later request's slow headers do.
    assert kept == [200, 200]
    assert parse_response(slow.answer).status == 408 and 0 < slow.sent < len(kept_request)
    # The deadline covers the headers only: a body may take longer.
    assert slow_body.status == 200 and body_sent.sent == len(body)

    seen = sorted((received.raw_path, received.body) for received in gateway.upstream.received)
    assert seen == [("/users/kept", b""), ("/users/kept", b""), ("/users/slow-body", body)]
    await assert_serves_next(gateway)
